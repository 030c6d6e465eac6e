"""Trackers: where flushed metric records go.

The on-disk :class:`DiskTracker` always runs; more come from the ``tracker`` section of a config, each
entry naming a ``kind`` from the ``noether.trackers`` entry-point group (or an import path
``pkg.module:Name``) and ``kwargs`` for its constructor. A tracker package registers itself with::

    [project.entry-points."noether.trackers"]
    mytracker = "my_package.tracking:MyTracker"

A tracker is any object with the four methods of :class:`Tracker`; it needs no base class. Trackers run
on rank 0 only and receive each record once, with rank 0's values (plugins that want a mean over ranks,
like the online loss, reduce before they log). The run wraps each configured tracker in a
:class:`NamedTracker`, so that an exception it raises names it.

Files the disk tracker writes (see :mod:`noether_core.io.paths`):

* ``metrics.jsonl``: one JSON object per flush, ``{"epoch", "update", "sample", <metric>: value...}``.
  Non-finite values are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` so every line
  is strict JSON; ``float()`` parses them back, and :func:`read_metrics` does so for you.
* ``summary.yaml``: ``status``, then ``metrics: {key: {min, max, last, best}}`` and ``summary:`` (what
  was given to ``set_summary``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
import yaml

from noether_core.errors import (
    ConfigError,
    ConfigIssue,
    ImportPathError,
    NoetherError,
    PluginLoadError,
    TrainingError,
    UsageError,
)
from noether_core.io.atomic_files import atomic_write_bytes, atomic_write_text
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.metrics_file import (
    POSITION_KEYS,
    encode_value,
    iter_metrics,
    parse_record,
    read_metrics,
)
from noether_core.io.paths import RunPaths
from noether_core.lookup import (
    claims_by_kind,
    did_you_mean,
    entry_point_sources,
    import_object,
    kwargs_problem,
)

if TYPE_CHECKING:
    from noether_core.config.schema import TrackerConfig

ENTRY_POINT_GROUP = "noether.trackers"
_log = logging.getLogger("noether")


@runtime_checkable
class Tracker(Protocol):
    """What the run calls on a tracker, in this order: ``start`` once, ``log`` per flush and
    ``set_summary`` any number of times, ``close`` once (also after a failed run).

    Two more methods are optional, and called only where a tracker has them:

    * ``flush()``: the trainer calls it before a checkpoint commits, so a tracker that buffers does not
      lose with the process what was logged up to then (a resume from that checkpoint keeps it).
    * ``resume(update: int)``: called before ``start`` when the run resumes from a checkpoint taken at
      ``update`` (``noether train --resume``). The records of the updates after it come again, with the
      same values; a tracker whose backend already holds them (an earlier process logged them before it
      stopped) drops or replaces them, so that no step appears twice, and continues the backend's run
      instead of starting a new one.

    The constructor gets the ``kwargs`` of the config entry and must have no side effects (``noether
    config validate`` calls it too): files, connections and backend runs belong in ``start``. A
    constructor may raise :class:`~noether_core.errors.ConfigError` for arguments it cannot use (or a
    library that is missing); the paths of its issues are relative to the entry (``kwargs.mode``).
    """

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        """The run begins. ``config`` is the resolved run config as plain data (for hyperparameters)."""

    def log(self, record: Mapping[str, float | int]) -> None:
        """One flushed record: ``epoch``, ``update``, ``sample`` and this step's metric values.
        ``update`` is the step to plot against; a record may repeat the previous record's update."""

    def set_summary(self, key: str, value: Any) -> None:
        """A single value describing the run (``param_count/model``); a later call replaces it."""

    def close(self, status: str) -> None:
        """The run ended with ``status``: ``completed``, ``stopped``, ``interrupted`` or ``failed``."""


def truncate_metrics(path: Path | str, after_update: int) -> int:
    """Drop the records of ``metrics.jsonl`` logged after ``after_update`` (a resume from an earlier
    checkpoint would log those updates again). Atomic; returns how many records were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept: list[str] = []
    dropped = 0
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as file:
        for line in file:
            if not line.endswith("\n"):
                break  # a fragment of a crash mid-write
            try:
                update = parse_record(line[:-1]).get("update", 0) if line.strip() else 0
            except ValueError:
                update = 0  # a damaged line is kept as it is (read_metrics with bad_lines names it)
            if isinstance(update, int | float) and update > after_update:
                dropped += 1
            else:
                kept.append(line)
    if dropped:
        atomic_write_bytes(path, "".join(kept).encode("utf-8", errors="surrogateescape"))
    return dropped


def _plain(value: Any, where: str) -> Any:
    """``value`` as YAML-safe plain data, tensors and NumPy scalars turned into Python numbers."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"summary {where!r} must be a single number, got a tensor of shape {value.shape}")
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"summary {where!r} must be a number, string, list or mapping; got {type(value).__name__}"
    )


#: One encoder for every record (``json.dumps`` with options builds a new one per call).
_STRICT_JSON = json.JSONEncoder(allow_nan=False)
#: Seconds :class:`DiskTracker` may hold written records before it hands them to the operating system.
FLUSH_SECONDS = 1.0


class _Stats:
    __slots__ = ("last", "max", "min")

    def __init__(self) -> None:
        self.min: float | None = None
        self.max: float | None = None
        self.last: float | None = None

    def add(self, value: float) -> None:
        self.last = value
        if math.isnan(value):
            return
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value


class DiskTracker:
    """The tracker that always runs: ``metrics.jsonl`` and ``summary.yaml`` in the run directory.

    Each record is appended to ``metrics.jsonl``; the file reaches the operating system at least every
    :data:`FLUSH_SECONDS`, whenever the trainer saves a checkpoint (:meth:`flush`), and at ``close``.
    So a process killed outright (``SIGKILL``, out of memory) loses at most the last second of records,
    and never one from before its last checkpoint, which is where a resume starts; a run that ends any
    other way (also by an exception or a signal the trainer handles) loses none. Flushing every record
    would cost a system call each, which a run that tracks every few updates feels.

    For every metric (not ``epoch``/``update``/``sample``) it keeps ``min``, ``max`` and ``last``, only
    ``last`` for neutral ones (per ``metric_properties``); ``close`` writes them to ``summary.yaml``
    atomically, adding ``best`` (the ``max`` or the ``min``) where the direction is known. ``min``/``max``
    ignore NaN; ``last`` is the last value as logged.

    A run directory that already has a ``metrics.jsonl`` (an evaluation of a finished run, a restart) is
    appended to: its records count towards the summary, and the earlier ``summary:`` entries are kept.
    """

    def __init__(self, metric_properties: MetricProperties | None = None) -> None:
        self.metric_properties = MetricProperties() if metric_properties is None else metric_properties
        self._paths: RunPaths | None = None
        self._file: IO[str] | None = None
        self._stats: dict[str, _Stats] = {}
        self._summary: dict[str, Any] = {}
        self._closed = False
        self._flush_at = 0.0
        # each key's ``"key": `` as the JSON encoder writes it (escaped, ASCII only)
        self._json_keys: dict[str, str] = {}

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        """Open ``metrics.jsonl`` for appending; ``config`` is not used (the trainer writes
        ``config.yaml``)."""
        if self._paths is not None:
            raise RuntimeError("DiskTracker.start was called twice")
        self._paths = paths
        self._resume_from_disk(paths)
        self._file = paths.metrics_jsonl.open("a", encoding="utf-8")
        self._flush_at = time.monotonic() + FLUSH_SECONDS

    def _resume_from_disk(self, paths: RunPaths) -> None:
        if paths.metrics_jsonl.exists():
            for record in read_metrics(paths.metrics_jsonl, bad_lines=[]):  # check_run_files named them
                self._update_stats(record)
            _drop_unterminated_tail(paths.metrics_jsonl)
        previous = read_summary(paths)
        if isinstance(previous, dict) and isinstance(previous.get("summary"), dict):
            self._summary.update(previous["summary"])
            # how the earlier part ended (a time limit's pause) is not how this one ends
            self._summary.pop("stop_reason", None)

    def _update_stats(self, record: Mapping[str, Any]) -> None:
        stats = self._stats
        for key, value in record.items():
            if key in POSITION_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            entry = stats.get(key)
            if entry is None:  # not setdefault: that would build a _Stats per value, every record
                entry = stats[key] = _Stats()
            entry.add(float(value))

    def log(self, record: Mapping[str, float | int]) -> None:
        """Append ``record`` as one line of ``metrics.jsonl`` and update the running statistics."""
        if self._file is None:
            raise RuntimeError("DiskTracker.log called before start or after close")
        line = self._plain_line(record)
        if line is None:
            try:
                line = _STRICT_JSON.encode(record)
            except ValueError:  # NaN or an infinity: strict JSON has no such numbers, they become strings
                line = _STRICT_JSON.encode({key: encode_value(value) for key, value in record.items()})
            self._update_stats(record)
        self._file.write(line + "\n")
        now = time.monotonic()
        if now >= self._flush_at:
            self._file.flush()
            self._flush_at = now + FLUSH_SECONDS

    def _plain_line(self, record: Mapping[str, float | int]) -> str | None:
        """``record`` as the line :data:`_STRICT_JSON` writes when every value is a finite ``float``
        or an ``int`` (what :class:`LogWriter` sends), else ``None``; the statistics of the values read
        are updated on the way (where it returns ``None``, :meth:`_update_stats` adds them again, which
        changes nothing: ``min``, ``max`` and ``last`` of a value added twice are those of it once).

        The encoder's own path builds a new C encoder per record, and the statistics would take a
        second pass over the values; a record comes every few updates."""
        keys = self._json_keys
        stats = self._stats
        parts = []
        for key, value in record.items():
            prefix = keys.get(key)
            if prefix is None:
                if type(key) is not str:
                    return None
                prefix = keys[key] = _STRICT_JSON.encode(key) + ": "
            kind = type(value)
            if kind is float:
                if not -math.inf < value < math.inf:  # an infinity, or NaN (no comparison holds)
                    return None
                parts.append(prefix + float.__repr__(value))
            elif kind is int:
                parts.append(prefix + int.__repr__(value))
                value = float(value)
            else:
                return None
            if key in POSITION_KEYS:
                continue
            entry = stats.get(key)
            if entry is None:
                entry = stats[key] = _Stats()
            entry.add(value)
        return "{" + ", ".join(parts) + "}"

    def flush(self) -> None:
        """Write every record logged so far to the disk (the trainer calls it before a checkpoint
        commits: the records a resume from it keeps are never lost with the process or the machine)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._flush_at = time.monotonic() + FLUSH_SECONDS

    def set_summary(self, key: str, value: Any) -> None:
        """Record ``key: value`` under ``summary:`` in ``summary.yaml``; tensors and NumPy scalars become
        numbers. Raises ``TypeError`` for values YAML cannot hold."""
        self._summary[key] = _plain(value, key)

    def metric_summary(self) -> dict[str, dict[str, float | None]]:
        """The per-metric statistics as written to ``summary.yaml`` (sorted by key)."""
        out: dict[str, dict[str, float | None]] = {}
        for key in sorted(self._stats):
            stats = self._stats[key]
            ordinality = self.metric_properties.ordinality(key)
            if ordinality == "neutral":
                out[key] = {"last": stats.last}
                continue
            entry: dict[str, float | None] = {"min": stats.min, "max": stats.max, "last": stats.last}
            if ordinality == "higher":
                entry["best"] = stats.max
            elif ordinality == "lower":
                entry["best"] = stats.min
            out[key] = entry
        return out

    def close(self, status: str) -> None:
        """Close ``metrics.jsonl`` and write ``summary.yaml`` atomically. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._paths is None:
            return
        document = {"status": status, "metrics": self.metric_summary(), "summary": dict(self._summary)}
        atomic_write_text(self._paths.summary_yaml, yaml.safe_dump(document, sort_keys=False))


def read_summary(paths: RunPaths) -> Any:
    """The run's ``summary.yaml`` (``None`` when there is none), or :class:`UsageError` when it is not
    the plain YAML noether writes (a ``!!python`` tag, a syntax error, invalid UTF-8)."""
    from noether_core.config.bounded_yaml import read_config_file

    if not paths.summary_yaml.exists():
        return None
    try:
        return read_config_file(paths.summary_yaml)
    except ConfigError as exc:
        problems = "; ".join(map(str, exc.issues))
        raise UsageError(
            f"{str(paths.summary_yaml)!r} is not the plain YAML noether writes ({problems}); the run "
            "directory is damaged: fix or remove summary.yaml (it is rewritten at the end of the run)"
        ) from None


def damaged_record_warnings(paths: RunPaths) -> list[str]:
    """Before a resume writes anything: ``summary.yaml`` must be readable (:func:`read_summary`). Returns
    warnings naming the lines of ``metrics.jsonl`` that are not records (``FILE:LINE: why``): they do
    not block the resume; they are kept as they are and skipped by every reader, the good records
    around them stay."""
    read_summary(paths)
    bad_lines: list[str] = []
    if paths.metrics_jsonl.exists():
        for _ in iter_metrics(paths.metrics_jsonl, bad_lines):
            pass
    warnings = [f"{line}; the line is kept as it is and skipped" for line in bad_lines[:10]]
    if len(bad_lines) > 10:
        warnings.append(f"... and {len(bad_lines) - 10} more damaged lines in {paths.metrics_jsonl}")
    return warnings


def _drop_unterminated_tail(path: Path) -> None:
    # A crash mid-line leaves a fragment; cut it off so the next record starts a line of its own and the
    # file stays valid JSON Lines.
    with path.open("rb+") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return
        file.seek(-1, os.SEEK_END)
        if file.read(1) == b"\n":
            return
        file.seek(0)
        keep = file.read().rfind(b"\n") + 1
        file.truncate(keep)


def available_tracker_kinds() -> list[str]:
    """The names registered in the ``noether.trackers`` entry-point group, sorted."""
    return sorted(claims_by_kind(entry_point_sources(ENTRY_POINT_GROUP)))


def _unknown_kind_issue(index: int, kind: str, available: Sequence[str]) -> ConfigIssue:
    if available:
        hint = did_you_mean(kind, available)
        listing = f"available: {', '.join(available)}{'; ' + hint if hint else ''}"
    else:
        listing = f"no trackers are installed (entry-point group {ENTRY_POINT_GROUP!r})"
    return ConfigIssue(
        f"tracker[{index}].kind",
        f"unknown tracker {kind!r}; {listing} (an import path 'pkg.module:Name' also works)",
    )


def load_trackers(configs: Sequence[TrackerConfig]) -> list[Tracker]:
    """Build the extra trackers a config names, in order.

    Each ``kind`` is an entry-point name of the ``noether.trackers`` group or an import path
    ``pkg.module:Name``; the object found is called with ``**kwargs``. Raises
    :class:`~noether_core.errors.ConfigError` (every problem, each with its ``tracker[i]`` path) for unknown
    kinds, arguments the constructor does not take and the issues of a ``ConfigError`` a constructor
    raises (a missing library: their paths get the entry's ``tracker[i].`` in front); another
    :class:`~noether_core.errors.NoetherError` a constructor raises as it is; and
    :class:`~noether_core.errors.PluginLoadError` for a tracker whose import or constructor fails
    otherwise, a name two distributions both claim, or an object that is not a :class:`Tracker`.
    """
    registered = claims_by_kind(entry_point_sources(ENTRY_POINT_GROUP))
    issues: list[ConfigIssue] = []
    factories: list[tuple[int, TrackerConfig, object, str | None, str | None]] = []
    for index, config in enumerate(configs):
        kind = config.kind
        name: str | None = None
        version: str | None = None
        if ":" in kind:
            try:
                factory = import_object(kind)
            except ImportPathError as error:
                issues.append(ConfigIssue(f"tracker[{index}].kind", f"cannot import {kind!r}: {error}"))
                continue
            except Exception as error:
                raise PluginLoadError(
                    kind, f"importing it failed: {type(error).__name__}: {error}"
                ) from error
        elif kind in registered:
            claims = registered[kind]
            if len(claims) > 1:
                owners = " and ".join(sorted(c.describe() for c in claims))
                raise PluginLoadError(kind, f"the tracker name is claimed by {owners}; uninstall one")
            name, version = claims[0].distribution, claims[0].version
            try:
                factory = claims[0].load()
            except Exception as error:
                raise PluginLoadError(
                    kind,
                    f"importing {claims[0].value!r} failed: {type(error).__name__}: {error}",
                    name,
                    version,
                ) from error
        else:
            issues.append(_unknown_kind_issue(index, kind, sorted(registered)))
            continue
        if not callable(factory):
            issues.append(ConfigIssue(f"tracker[{index}].kind", f"{kind!r} is not a class or factory"))
            continue
        problem = kwargs_problem(factory, config.kwargs)
        if problem is not None:
            issues.append(ConfigIssue(f"tracker[{index}].kwargs", problem))
            continue
        factories.append((index, config, factory, name, version))
    if issues:
        raise ConfigError(issues)

    trackers: list[Tracker] = []
    for index, config, factory, name, version in factories:
        assert callable(factory)
        try:
            tracker = factory(**config.kwargs)
        except ConfigError as error:
            # collected: every entry's problem (each missing library) is reported at once
            where = f"tracker[{index}]"
            issues += [ConfigIssue(f"{where}.{i.path}" if i.path else where, i.message) for i in error.issues]
            continue
        except NoetherError:
            raise  # the tracker's own words (and exit status)
        except Exception as error:
            raise PluginLoadError(
                config.kind, f"creating the tracker failed: {type(error).__name__}: {error}", name, version
            ) from error
        missing = [
            m for m in ("start", "log", "set_summary", "close") if not callable(getattr(tracker, m, None))
        ]
        if missing:
            raise PluginLoadError(
                config.kind,
                f"{type(tracker).__name__} is not a tracker; it lacks {', '.join(missing)}",
                name,
                version,
            )
        trackers.append(cast(Tracker, tracker))
    if issues:
        raise ConfigError(issues)
    return trackers


class NamedTracker:
    """A configured tracker under its name (the config's ``kind``), as the run holds it: an exception
    the tracker raises becomes a :class:`~noether_core.errors.TrainingError` that names it and the call,
    ``tracker 'mlflow' failed in log: ...`` (a :class:`~noether_core.errors.NoetherError` is its own
    words and passes unchanged).

    After a failure the tracker gets no more calls but ``close``, whose own failure is only logged: the
    first error is the one the run reports. The wrapped tracker is :attr:`tracker` (a plugin reaching for
    a backend's object, e.g. the TensorBoard tracker's ``writer``, finds it there).
    """

    __slots__ = ("_failed", "name", "tracker")

    def __init__(self, name: str, tracker: Tracker) -> None:
        self.name = name
        self.tracker = tracker
        self._failed = False

    def _call(self, method: str, *args: Any) -> None:
        """``method`` of the tracker, unless it failed before or lacks that (optional) method."""
        function = getattr(self.tracker, method, None)
        if self._failed or not callable(function):
            return
        try:
            function(*args)
        except Exception as error:
            self._failed = True
            raise self._failure(method, error) from error

    def _failure(self, method: str, error: Exception) -> Exception:
        if isinstance(error, NoetherError):  # the tracker's own words (and exit status)
            return error
        return TrainingError(f"tracker {self.name!r} failed in {method}: {type(error).__name__}: {error}")

    def resume(self, update: int) -> None:
        self._call("resume", update)

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        self._call("start", paths, config)

    def log(self, record: Mapping[str, float | int]) -> None:
        self._call("log", record)

    def set_summary(self, key: str, value: Any) -> None:
        self._call("set_summary", key, value)

    def flush(self) -> None:
        self._call("flush")

    def close(self, status: str) -> None:
        try:
            self.tracker.close(status)
        except Exception as error:
            if self._failed:  # closing what already broke: the first failure is the one to report
                _log.warning(
                    "tracker %r also failed in close: %s", self.name, f"{type(error).__name__}: {error}"
                )
                return
            self._failed = True
            raise self._failure("close", error) from error


def name_trackers(trackers: Sequence[Tracker], kinds: Sequence[str]) -> list[Tracker]:
    """``trackers`` (built from a config's ``tracker`` entries) as :class:`NamedTracker` objects named
    by ``kinds``, the entries' kinds in the same order; a kind repeated gets its entry's position
    (``mlflow[1]``). Without a kind for each, a tracker is named by its class."""
    names = [str(kind) for kind in kinds] if len(kinds) == len(trackers) else []
    if not names:
        names = [type(tracker).__name__ for tracker in trackers]
    repeated = {name for name in names if names.count(name) > 1}
    return [
        NamedTracker(f"{name}[{index}]" if name in repeated else name, tracker)
        for index, (name, tracker) in enumerate(zip(names, trackers, strict=True))
    ]


__all__ = [
    "ENTRY_POINT_GROUP",
    "DiskTracker",
    "NamedTracker",
    "Tracker",
    "available_tracker_kinds",
    "load_trackers",
    "name_trackers",
    "read_metrics",
]
