"""Declared metric dependencies, checked before a run starts.

Some entries read metrics that other entries log in the same step (best metric, early stopping, best
checkpoint read ``trainer.writer.get(key)``). That only works when a producer runs at every tick of the
consumer, before it. Instead of failing hours into a run, ``noether config validate`` and ``noether
train`` check it up front (:func:`check_metric_dependencies`) and report each missing key with the
consumer's path and the producers the run has.

A plugin takes part by defining any of these, as static or class methods of a class plugin (or
functions of a module plugin); all are optional:

``consumes(config) -> list[str]``
    The exact metric keys the entry reads at each of its ``at_eval`` ticks.
``produces(config, run_config) -> list[str] | None``
    ``fnmatch`` patterns (``*`` also matches ``/``) of the keys the entry logs at its ``at_eval`` ticks,
    e.g. ``["loss/val/*"]`` when the loss names are only known at run time; for an entry without an
    interval, the keys it logs in ``after_update`` (so at every update). ``None``, like not defining it,
    means "not declared": a consumer listed after an undeclared entry gets a warning instead of an error
    for a key nobody declares, since that entry might log it.
``child_prefixes(config) -> list[str]``
    For entries that own child entries (``eval_callbacks``): the prefixes their children's keys get
    (EmaCallback: ``ema=0.999/``). Children read what their earlier siblings log, under the same prefix.
``metric_directions(config) -> dict[str, str]``
    Which way is better for the metrics the entry logs: ``{pattern: "higher" | "lower" | "neutral"}``
    (``fnmatch`` patterns of keys), so consumers that compare values (best checkpoint, early stopping,
    the summary's ``best``) know them. The config's own ``metrics`` section comes first, then these,
    then the built-in patterns (:func:`metric_properties`).

Rules checked, for a consumer ``C`` and each key it consumes: some producer logs the key in the same
step at every update where ``C`` is due, and it is listed before ``C`` (the trainer's default entries come
first; entries without an interval log in ``after_update``, before every ``at_eval``). With
``eval_at_end``, ``C``'s final evaluation runs after the last regular step was flushed, so a producer
must take part in it too: ``eval_at_end`` with the same interval.

Entries with a ``dataset_key`` must name a dataset of the config.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from noether_core.config.schema import CallbackConfig, RunConfig
from noether_core.errors import ConfigError, ConfigIssue
from noether_core.io.metric_properties import MetricProperties, Ordinality
from noether_core.lookup import did_you_mean
from noether_core.plugins.registry import Plugin
from noether_core.plugins.scheduling import Interval, IntervalScheduler
from noether_core.run.plan import PlannedEntry, RunPlan

log = logging.getLogger("noether")


class DeclarationError(Exception):
    """A plugin's metric declaration (``consumes``, ``produces``...) raised or returned nonsense."""


def _declared(plugin: Plugin, name: str) -> Callable[..., Any] | None:
    function = getattr(plugin.target, name, None)
    return function if callable(function) else None


def _call(plugin: Plugin, name: str, function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as exc:
        raise DeclarationError(f"{plugin.kind}.{name}() failed: {type(exc).__name__}: {exc}") from exc


def _strings(plugin: Plugin, name: str, value: Any) -> list[str]:
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple))
        or not all(isinstance(s, str) for s in value)
    ):
        raise DeclarationError(f"{plugin.kind}.{name}() must return a list of strings, got {value!r}")
    return list(value)


def consumed_keys(plugin: Plugin, entry: CallbackConfig) -> list[str]:
    """The metric keys ``entry`` reads in the same step (its plugin's ``consumes``), ``[]`` if none."""
    function = _declared(plugin, "consumes")
    return (
        [] if function is None else _strings(plugin, "consumes", _call(plugin, "consumes", function, entry))
    )


def produced_patterns(plugin: Plugin, entry: CallbackConfig, run_config: RunConfig) -> list[str] | None:
    """Patterns of the keys ``entry`` logs at its ticks (its plugin's ``produces``); ``None``: undeclared."""
    function = _declared(plugin, "produces")
    if function is None:
        return None
    value = _call(plugin, "produces", function, entry, run_config)
    return None if value is None else _strings(plugin, "produces", value)


def declared_directions(plugin: Plugin, entry: CallbackConfig) -> dict[str, Ordinality]:
    """The metric directions ``entry`` declares (its plugin's ``metric_directions``), ``{}`` if none."""
    function = _declared(plugin, "metric_directions")
    if function is None:
        return {}
    value = _call(plugin, "metric_directions", function, entry)
    allowed = ("higher", "lower", "neutral")
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and v in allowed for k, v in value.items()
    ):
        raise DeclarationError(
            f"{plugin.kind}.metric_directions() must return a mapping of metric patterns to "
            f"{', '.join(map(repr, allowed))}, got {value!r}"
        )
    return dict(value)


def _every_entry(entries: Sequence[PlannedEntry]) -> Iterator[PlannedEntry]:
    for planned in entries:
        yield planned
        yield from _every_entry(planned.children)


def metric_properties(plan: RunPlan) -> MetricProperties:
    """The run's metric directions: the config's ``metrics`` section first, then what its entries
    declare (defaults, then the config's, children after their owner), then the built-in patterns."""
    patterns: list[tuple[str, Ordinality]] = list(plan.config.metrics.items())
    for planned in _every_entry(plan.all_entries):
        try:
            patterns += declared_directions(planned.plugin, planned.config).items()
        except DeclarationError as exc:  # reported with its path by check_metric_dependencies
            raise ConfigError([ConfigIssue(planned.path, str(exc))], plan.source) from None
    return MetricProperties(patterns)


def child_prefixes(plugin: Plugin, entry: CallbackConfig) -> list[str]:
    """The prefixes ``entry``'s children's keys get (its plugin's ``child_prefixes``), ``[""]`` if none."""
    function = _declared(plugin, "child_prefixes")
    if function is None:
        return [""]
    return _strings(plugin, "child_prefixes", _call(plugin, "child_prefixes", function, entry))


@attrs.frozen
class _Production:
    owner: str
    patterns: tuple[str, ...]
    interval: Interval | None  # None: logged in after_update, at every update
    eval_at_end: bool

    def matches(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.patterns)

    def describe(self) -> str:
        when = self.interval.verbose if self.interval is not None else "every update"
        return f"{self.owner} ({when}): {', '.join(self.patterns) or 'nothing'}"


@attrs.define
class _Node:
    path: str
    entry: CallbackConfig
    plugin: Plugin
    consumes: list[str]
    productions: list[_Production]
    declared: bool
    children: list[_Node]

    @property
    def label(self) -> str:
        return f"{self.path} {self.entry.kind}" if not self.path.startswith("default") else self.path


def _node(planned: PlannedEntry, run_config: RunConfig, issues: list[ConfigIssue]) -> _Node:
    plugin, entry, path = planned.plugin, planned.config, planned.path
    try:
        consumes = consumed_keys(plugin, entry)
        patterns = produced_patterns(plugin, entry, run_config)
        prefixes = child_prefixes(plugin, entry) if planned.children else [""]
        declared_directions(plugin, entry)
    except DeclarationError as exc:
        issues.append(ConfigIssue(path, str(exc)))
        consumes, patterns, prefixes = [], None, [""]
    node = _Node(path, entry, plugin, consumes, [], patterns is not None, [])
    if patterns is not None:
        node.productions.append(_Production(node.label, tuple(patterns), planned.interval, entry.eval_at_end))
    for child in planned.children:
        child_node = _node(child, run_config, issues)
        node.children.append(child_node)
        node.declared = node.declared and child_node.declared
        for production in child_node.productions:
            node.productions.append(
                attrs.evolve(
                    production, patterns=tuple(pre + p for pre in prefixes for p in production.patterns)
                )
            )
    return node


#: At most this many of a consumer's due updates are looked at one by one (see :func:`_missed`).
_TICK_BUDGET = 100_000


def period(scheduler: IntervalScheduler, iv: Interval) -> int:
    """Updates after which ``iv``'s due pattern repeats (``is_due(iv, u) == is_due(iv, u + period)``)."""
    if iv.unit == "update":
        return iv.every
    if iv.unit == "epoch":
        return iv.every * scheduler.updates_per_epoch
    return iv.every // math.gcd(iv.every, scheduler.effective_batch_size)


def _missed(
    scheduler: IntervalScheduler, consumer: Interval, producers: Sequence[Interval]
) -> tuple[int, int]:
    """``(n, first)``: how many of ``consumer``'s due updates none of ``producers`` is due at, and the
    first of them (0 when none). The patterns repeat every ``lcm`` of their periods, so one period is
    looked at (at most :data:`_TICK_BUDGET` ticks of it) and the rest counted, never the whole run."""
    total = scheduler.total_updates
    horizon = min(math.lcm(*(period(scheduler, iv) for iv in (consumer, *producers))), total)
    ticks = list(
        itertools.islice(
            itertools.takewhile(lambda u: u <= horizon, scheduler.due_updates(consumer)), _TICK_BUDGET
        )
    )
    missed = [u for u in ticks if not any(scheduler.is_due(iv, u) for iv in producers)]
    if not missed:
        return 0, 0
    if len(ticks) == _TICK_BUDGET:  # a period too long to look at whole: what was seen, a lower bound
        return len(missed), missed[0]
    full, rest = divmod(total, horizon)
    return full * len(missed) + sum(1 for u in missed if u <= rest), missed[0]


def _covers(scheduler: IntervalScheduler, consumer: Interval, producer: Interval) -> bool:
    """Whether ``producer`` is due at every update ``consumer`` is."""
    pc, pp = period(scheduler, consumer), period(scheduler, producer)
    if consumer.unit != "sample" and producer.unit != "sample":
        return pc % pp == 0
    return _missed(scheduler, consumer, [producer])[0] == 0


def _problem(
    consumer: _Node, key: str, candidates: Sequence[_Production], scheduler: IntervalScheduler
) -> str | None:
    """Why ``candidates`` (producers of ``key`` before ``consumer``) do not serve it, or ``None``."""
    interval = consumer.entry.interval
    assert interval is not None
    where = f"{consumer.entry.kind} ({interval.verbose}) reads {key!r} in the same step"
    if not candidates:
        return f"{where}, but no entry listed before it logs it"
    intervals = [c.interval for c in candidates]
    if None not in intervals and not any(
        _covers(scheduler, interval, iv) for iv in intervals if iv is not None
    ):
        missed, first = _missed(scheduler, interval, [iv for iv in intervals if iv is not None])
        if missed:
            producers = "; ".join(c.describe() for c in candidates)
            return (
                f"{where}, but its producers are not due at {missed} of its "
                f"{scheduler.count_due(interval)} evaluations (first at update {first}): {producers}. "
                "Give them the same interval"
            )
    if consumer.entry.eval_at_end and not any(c.eval_at_end and c.interval == interval for c in candidates):
        return (
            f"{where}, also in its final evaluation (eval_at_end), which runs after the last step was "
            f"flushed; set eval_at_end: true and {interval.verbose} on its producer"
        )
    return None


def _hint(key: str, run_config: RunConfig, interval: Interval) -> str:
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] == "loss" and parts[1] in run_config.datasets:
        when = interval.verbose.replace("=", ": ")
        return f" (to log it, list {{kind: OfflineLossCallback, dataset_key: {parts[1]}, {when}}} before it)"
    return ""


def _check_level(
    nodes: Sequence[_Node],
    scheduler: IntervalScheduler,
    run_config: RunConfig,
    issues: list[ConfigIssue],
    warnings: list[str],
) -> None:
    """Check the consumers among ``nodes`` (siblings in dispatch order) against their siblings."""
    every_update = [p for n in nodes for p in n.productions if p.interval is None]
    undeclared_every_update = [n for n in nodes if not n.declared and not n.plugin.scheduled]
    for index, consumer in enumerate(nodes):
        if consumer.children:
            _check_level(consumer.children, scheduler, run_config, issues, warnings)
        if not consumer.consumes or consumer.entry.interval is None or not consumer.plugin.scheduled:
            continue
        before = [p for n in nodes[:index] for p in n.productions if p.interval is not None] + every_update
        after = [p for n in nodes[index + 1 :] for p in n.productions if p.interval is not None]
        undeclared = [n for n in nodes[:index] if not n.declared] + undeclared_every_update
        for key in consumer.consumes:
            candidates = [p for p in before if p.matches(key)]
            problem = _problem(consumer, key, candidates, scheduler)
            if problem is None:
                continue
            later = [p.owner for p in after if p.matches(key)]
            if later:
                problem += (
                    f"; {', '.join(later)} logs it but is listed after it: move it before {consumer.path}"
                )
            elif not candidates:
                # nobody logs it at all: show what the run does log, and how to log this one
                producers = "; ".join(p.describe() for p in before + after if p.patterns) or "none"
                problem += (
                    f"{_hint(key, run_config, consumer.entry.interval)}. Metrics the run logs: {producers}"
                )
            if undeclared:
                names = ", ".join(n.label for n in undeclared)
                warnings.append(f"{consumer.path}: {problem}; unless {names} (declaring no metrics) logs it")
                continue
            issues.append(ConfigIssue(consumer.path, problem))


def _consumers(node: _Node) -> bool:
    return bool(node.consumes) or any(_consumers(child) for child in node.children)


def _check_dataset_keys(config: RunConfig, issues: list[ConfigIssue]) -> None:
    for path, entry in config.entries():
        key = getattr(entry, "dataset_key", None)
        if isinstance(key, str) and key not in config.datasets:
            close = did_you_mean(key, config.datasets)
            hint = f"{close} " if close else ""
            have = ", ".join(config.datasets) or "none"
            issues.append(
                ConfigIssue(f"{path}.dataset_key", f"no dataset {key!r}; {hint}the config has {have}")
            )


def check_metric_dependencies(plan: RunPlan) -> list[str]:
    """Raise :class:`ConfigError` (exit status 2) for every consumed metric no entry of ``plan`` logs in
    time, and every ``dataset_key`` that names no dataset; return (and log) the warnings for keys that
    only undeclared entries might log."""
    config = plan.config
    issues: list[ConfigIssue] = []
    _check_dataset_keys(config, issues)
    nodes = [_node(planned, config, issues) for planned in plan.entries]
    warnings: list[str] = []
    if any(_consumers(n) for n in nodes):
        # the run's length (and the default entries' intervals) need the train dataset: only built
        # when there is something to check
        nodes = [_node(planned, config, issues) for planned in plan.default_entries] + nodes
        _check_level(nodes, plan.scheduler, config, issues, warnings)
    if issues:
        raise ConfigError(issues, plan.source)
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


__all__ = [
    "DeclarationError",
    "check_metric_dependencies",
    "child_prefixes",
    "consumed_keys",
    "declared_directions",
    "metric_properties",
    "period",
    "produced_patterns",
]
