"""The run planned once: what a validated config means for a run, derived in one place.

:class:`RunPlan` turns a :class:`~noether_core.config.RunConfig` into the things every command needs:

* the **datasets**, each built at most once (and only when something asks for it);
* the **geometry**: updates per epoch, effective batch size, the run's end in updates;
* the **entries**: the trainer's default entries (for this run's length) and the config's, each with its
  loaded plugin and its child entries (EmaCallback's ``eval_callbacks``), kinds loaded once;
* the **scheduler** that says which entry is due when.

``noether train`` and ``noether eval`` hand the plan to the :class:`~noether_core.run.trainer.Trainer`;
``noether config validate``, ``noether schedule`` and the metric-dependency check read the same plan, so
nothing is derived twice. The plan is lazy: ``config validate`` on a config without consumers of
metrics builds no dataset at all, and asking for the geometry builds the ``train`` dataset alone.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Mapping
from typing import Any

import attrs
from torch import nn
from torch.utils.data import Dataset

from noether_core.config.loader import make_converter
from noether_core.config.schema import CallbackConfig, RunConfig, child_entries
from noether_core.errors import ConfigError, ConfigIssue, PluginLoadError
from noether_core.plugins.dispatch import Slot
from noether_core.plugins.manager import PluginManager
from noether_core.plugins.registry import Plugin, PluginRegistry
from noether_core.plugins.scheduling import Interval, IntervalScheduler
from noether_core.run.building import build_dataset, check_buildable, updates_per_epoch
from noether_core.run.counter import RunEnd
from noether_core.run.display_names import display_names

log = logging.getLogger("noether")

#: The longest run, in samples: positions are stored as 64-bit ints.
MAX_RUN_SAMPLES = 2**63 - 1

#: Kinds the trainer adds, in this order, when ``trainer.add_default_callbacks`` is true (or lists them).
#: Named, never imported: a kind that is not installed is left out. Producers of metrics come first, so
#: consumers in the user's list see this step's values. A top-level ``callbacks`` entry of one of these
#: kinds replaces every default entry of its kind (both ``OnlineLossCallback`` entries included).
ALWAYS_DEFAULTS = ("DatasetStatsCallback", "ParamCountCallback")
TRACK_DEFAULTS = ("OnlineLossCallback", "LrCallback")
LOG_DEFAULTS = (
    "OnlineLossCallback",
    "TrainTimeCallback",
    "PeakMemoryCallback",
    "ProgressCallback",
    "EtaCallback",
)


@attrs.frozen
class Geometry:
    """How the run's updates are laid out: updates per epoch, samples per update (over all ranks and
    micro-batches) and the run's end, in its own unit and in updates."""

    updates_per_epoch: int
    effective_batch_size: int
    end: RunEnd
    total_updates: int


@attrs.frozen(eq=False)
class PlannedEntry:
    """One entry of the run, resolved: its validated config, its loaded plugin, its children.

    ``path`` says where it comes from: ``callbacks[2]``, ``callbacks[2].eval_callbacks[0]``, or
    ``default <name>`` for the trainer's own.
    """

    path: str
    config: CallbackConfig
    plugin: Plugin
    is_default: bool = False
    children: tuple[PlannedEntry, ...] = ()

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def interval(self) -> Interval | None:
        """The entry's interval; ``None`` for entries whose plugin has no ``at_eval``."""
        return self.config.interval if self.plugin.scheduled else None


def default_intervals(config: RunConfig, total_updates: int) -> tuple[Interval, Interval]:
    """(log, track) intervals: the configured ones, else about 100 logs and 500 tracks per run."""
    log_interval = config.trainer.log_interval or Interval("update", max(total_updates // 100, 1))
    track_interval = config.trainer.track_interval or Interval("update", max(total_updates // 500, 1))
    return log_interval, track_interval


class RunPlan:
    """A validated config, planned for a run. See the module documentation.

    Building one checks what can be checked without building anything (model, dataset and train-step
    kinds and their arguments, :func:`~noether_core.run.building.check_buildable`) and loads the plugin
    of every entry; it raises :class:`~noether_core.errors.ConfigError` or
    :class:`~noether_core.errors.PluginLoadError`. ``defaults=False`` leaves the trainer's default
    entries out (an evaluation runs the config's own entries only). ``datasets`` are datasets already
    built, used instead of building those names from the config (their kind is ``object``), and
    ``model`` a model to train instead of building the config's.
    """

    def __init__(
        self,
        config: RunConfig,
        registry: PluginRegistry,
        *,
        source: str | None = None,
        defaults: bool = True,
        datasets: Mapping[str, Dataset[Any]] | None = None,
        model: nn.Module | None = None,
    ) -> None:
        check_buildable(
            config, source, given_model=model is not None, given_datasets=list(datasets or ()), model=model
        )
        self.config = config
        self.model = model
        self.registry = registry
        self.source = source
        self._with_defaults = defaults and config.trainer.add_default_callbacks is not False
        self._datasets: dict[str, Dataset[Any]] = dict(datasets or {})
        # unnamed entries of one kind are told apart (``OfflineLossCallback[val]``) wherever entries
        # are named: timings, the schedule, messages, saved state
        self._names = display_names(config.entries())
        self.entries: tuple[PlannedEntry, ...] = tuple(
            self._plan(f"callbacks[{i}]", entry, is_default=False) for i, entry in enumerate(config.callbacks)
        )

    def _plan(self, path: str, entry: CallbackConfig, *, is_default: bool) -> PlannedEntry:
        children = tuple(
            self._plan(f"{path}.{sub}", child, is_default=is_default) for sub, child in child_entries(entry)
        )
        name = self._names.get(path) if not is_default else None
        config = attrs.evolve(entry, name=name) if name is not None else entry
        return PlannedEntry(path, config, self.registry.load(entry.kind), is_default, children)

    # ------------------------------------------------------------------------------------ data

    def dataset(self, name: str) -> Dataset[Any]:
        """The dataset ``name`` of the config, built on first use and kept."""
        dataset = self._datasets.get(name)
        if dataset is None:
            dataset = self._datasets[name] = build_dataset(name, self.config.datasets[name])
        return dataset

    @functools.cached_property
    def datasets(self) -> Mapping[str, Dataset[Any]]:
        """Every dataset of the config, in config order (built now where not built yet)."""
        return {name: self.dataset(name) for name in self.config.datasets}

    # ------------------------------------------------------------------------------------ geometry

    @functools.cached_property
    def geometry(self) -> Geometry:
        """The run's layout in updates; builds the ``train`` dataset (its length sets an epoch)."""
        train = self.dataset("train")
        upe = updates_per_epoch(len(train), self.config)  # type: ignore[arg-type]
        ebs = self.config.trainer.batch_size
        end = self.config.trainer.end
        total = end.total_updates(upe, ebs)
        if total * ebs > MAX_RUN_SAMPLES:
            # counters reach torch and the checkpoints as 64-bit ints
            raise ConfigError(
                [
                    ConfigIssue(
                        f"trainer.max_{end.unit}s",
                        f"the run would be {total} updates of {ebs} samples, more than 2**63-1 samples",
                    )
                ],
                self.source,
            )
        return Geometry(upe, ebs, end, total)

    @functools.cached_property
    def scheduler(self) -> IntervalScheduler:
        """The run's one :class:`IntervalScheduler`."""
        g = self.geometry
        return IntervalScheduler(g.updates_per_epoch, g.effective_batch_size, g.total_updates)

    # ------------------------------------------------------------------------------------ entries

    @functools.cached_property
    def default_entries(self) -> tuple[PlannedEntry, ...]:
        """The trainer's default entries for this run's length, producers first; kinds that are not
        installed, or fail to load, are left out (with a warning for the latter)."""
        if not self._with_defaults:
            return ()
        log_interval, track_interval = default_intervals(self.config, self.geometry.total_updates)
        # a config entry of a default's plugin, whichever spelling its kind uses, replaces that default
        replacing = {id(planned.plugin.target): planned.path for planned in reversed(self.entries)}
        wanted: list[tuple[str, Interval | None, dict[str, Any]]] = [(k, None, {}) for k in ALWAYS_DEFAULTS]
        if log_interval != track_interval:
            wanted.append(("OnlineLossCallback", track_interval, {"verbose": False}))
            wanted.append(("OnlineLossCallback", log_interval, {"verbose": True}))
        else:
            # two online-loss entries on one interval would log the same keys twice (the reference's B5)
            wanted.append(("OnlineLossCallback", log_interval, {"verbose": True}))
        wanted.append(("LrCallback", track_interval, {}))
        for kind in LOG_DEFAULTS[1:]:
            if kind == "EtaCallback" and not sys.stdout.isatty():
                continue
            wanted.append((kind, log_interval, {}))
        converter = make_converter(self.registry)
        planned: list[PlannedEntry] = []
        for kind, interval, fields in wanted:
            if not self.config.trainer.keeps_default(kind):
                continue
            if not self.registry.sources(kind):
                continue
            try:
                plugin = self.registry.load(kind)
            except PluginLoadError as exc:
                log.warning("default plugin %s is not usable and is left out: %s", kind, exc)
                continue
            if id(plugin.target) in replacing:
                log.debug("%s replaces the default %s", replacing[id(plugin.target)], kind)
                continue
            raw: dict[str, Any] = {"kind": kind, **fields}
            if plugin.scheduled and interval is not None:
                raw[f"every_n_{interval.unit}s"] = interval.every
                if kind == "OnlineLossCallback":
                    raw["name"] = f"{kind}/{interval.short}"
            # a default's options (e.g. verbose) apply only where its Config has them
            names = {a.name for a in attrs.fields(plugin.config_class)}
            entry = converter.structure({k: v for k, v in raw.items() if k in names}, CallbackConfig)
            planned.append(self._plan(f"default {entry.key}", entry, is_default=True))
        return tuple(planned)

    @property
    def all_entries(self) -> tuple[PlannedEntry, ...]:
        """The top-level entries in dispatch order: the defaults, then the config's ``callbacks``."""
        return self.default_entries + self.entries

    def plugin_manager(self, *, defaults: bool = True) -> PluginManager:
        """A plugin manager with one new plugin object per entry (children under their owner), frozen
        for dispatch. Making the objects runs their constructors and pluggy's checks, so a plugin
        that cannot be made fails here (``noether config validate`` calls it with ``defaults=False``,
        which needs no dataset)."""
        manager = PluginManager()

        def register(planned: PlannedEntry, parent: Slot | None) -> None:
            slot = manager.register(
                planned.plugin, planned.config, is_default=planned.is_default, parent=parent
            )
            for child in planned.children:
                register(child, slot)

        for planned in self.all_entries if defaults else self.entries:
            register(planned, None)
        manager.freeze()
        return manager


__all__ = [
    "ALWAYS_DEFAULTS",
    "LOG_DEFAULTS",
    "TRACK_DEFAULTS",
    "Geometry",
    "PlannedEntry",
    "RunPlan",
    "default_intervals",
]
