"""Two entries that would log the same metric key in one step, refused before the run starts.

A key is logged once per step: the second entry to log it raises
:class:`~noether_core.errors.DuplicateMetricError` when the step comes, maybe hours into a run.
``noether config validate`` and ``noether train`` refuse instead, up front, what the entries'
declarations (their plugins' ``produces``, see :mod:`noether_core.run.metric_dependencies`) make
certain:

* two entries declare the same **exact** key (no ``*``, ``?`` or ``[``), e.g. ``accuracy/val``; or
* two entries **of one kind** declare the same **pattern**, e.g. two ``OfflineLossCallback`` entries on
  ``dataset_key: val`` (both ``loss/val/*``) or two ``LrCallback`` entries (both ``optim/lr/*``): the
  same plugin fills the pattern in from the same run (its losses, its parameter groups);

and the two log at a common step: one of them logs at every update (no interval), both have the
same interval, their intervals meet at some update of the run, or both take part in the final
evaluation (``eval_at_end``). Keys of child entries (EmaCallback's ``eval_callbacks``) count with
their owner's prefixes (``ema=0.999/``). Patterns of different kinds that merely overlap may log
different keys (``grad_norm/*`` of two plugins) and are left to the run. Only the config's entries are
compared: a default entry of a kind the config lists is replaced by it (see
:mod:`noether_core.run.plan`), and the defaults' keys carry their own interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import attrs

from noether_core.config.schema import RunConfig
from noether_core.errors import ConfigError, ConfigIssue
from noether_core.plugins.scheduling import Interval, IntervalScheduler
from noether_core.run.metric_dependencies import DeclarationError, child_prefixes, period, produced_patterns
from noether_core.run.plan import PlannedEntry, RunPlan

_WILDCARDS = frozenset("*?[")
#: At most this many of an entry's due updates are looked at for a common one with another entry.
_TICK_BUDGET = 100_000


@attrs.frozen
class _Producer:
    path: str
    name: str
    kind: str
    patterns: tuple[str, ...]
    interval: Interval | None  # None: it logs in after_update, at every update
    eval_at_end: bool

    def shared(self, other: _Producer) -> str | None:
        """A key or pattern both log for certain (see the module documentation), else ``None``."""
        for pattern in self.patterns:
            if pattern not in other.patterns:
                continue
            if not _WILDCARDS.intersection(pattern) or self.kind == other.kind:
                return pattern
        return None


def _producers(
    entries: Sequence[PlannedEntry], prefixes: Sequence[str], run_config: RunConfig
) -> Iterator[_Producer]:
    for planned in entries:
        config = planned.config
        try:
            patterns = produced_patterns(planned.plugin, config, run_config)
            own = child_prefixes(planned.plugin, config) if planned.children else [""]
        except DeclarationError:  # check_metric_dependencies names it
            continue
        if patterns:
            yield _Producer(
                planned.path,
                config.key,
                planned.plugin.kind,
                tuple(pre + p for pre in prefixes for p in patterns),
                planned.interval,
                config.eval_at_end,
            )
        yield from _producers(planned.children, [pre + p for pre in prefixes for p in own], run_config)


def _common_update(scheduler: IntervalScheduler, a: Interval, b: Interval) -> int | None:
    """The first update at which both ``a`` and ``b`` are due, ``None`` when none of the run is."""
    horizon = min(math.lcm(period(scheduler, a), period(scheduler, b)), scheduler.total_updates)
    ticks = itertools.islice(
        itertools.takewhile(lambda u: u <= horizon, scheduler.due_updates(a)), _TICK_BUDGET
    )
    return next((u for u in ticks if scheduler.is_due(b, u)), None)


def _when(plan: RunPlan, a: _Producer, b: _Producer) -> str | None:
    """When ``a`` and ``b`` both log (for a message), ``None`` when they never do at one step."""
    if a.interval is None or b.interval is None:
        scheduled = a.interval or b.interval
        return "at every update" if scheduled is None else f"at the same updates ({scheduled.verbose})"
    if a.interval == b.interval:
        return f"at the same updates ({a.interval.verbose})"
    scheduler = plan.scheduler  # intervals that differ: only the run's geometry tells whether they meet
    update = _common_update(scheduler, a.interval, b.interval)
    if update is not None:
        return f"at update {update} ({a.interval.verbose} and {b.interval.verbose})"
    total = scheduler.total_updates
    if (
        a.eval_at_end
        and b.eval_at_end
        and not (scheduler.is_due(a.interval, total) or scheduler.is_due(b.interval, total))
    ):
        return "in the final evaluation (eval_at_end)"
    return None


def collision_issues(plan: RunPlan) -> list[ConfigIssue]:
    """The collisions among ``plan``'s config entries, one issue each, on the later entry's path."""
    issues: list[ConfigIssue] = []
    producers = list(_producers(plan.entries, [""], plan.config))
    reported: set[str] = set()
    for i, later in enumerate(producers):
        for earlier in producers[:i]:
            key = later.shared(earlier)
            if key is None or later.path in reported:
                continue
            when = _when(plan, earlier, later)
            if when is None:
                continue
            what = f"keys matching {key!r}" if _WILDCARDS.intersection(key) else f"{key!r}"
            issues.append(
                ConfigIssue(
                    later.path,
                    f"{later.name!r} ({later.kind}) and {earlier.name!r} ({earlier.path}) would both log "
                    f"{what} {when}; a metric is logged once per step (DuplicateMetricError): remove "
                    "one, or set them apart (another dataset or option, or intervals that never meet)",
                )
            )
            reported.add(later.path)
    return issues


def check_metric_collisions(plan: RunPlan) -> None:
    """Raise :class:`ConfigError` (exit status 2) naming every pair of ``plan``'s entries that would log
    one metric key in the same step."""
    issues = collision_issues(plan)
    if issues:
        raise ConfigError(issues, plan.source)


__all__ = ["check_metric_collisions", "collision_issues"]
