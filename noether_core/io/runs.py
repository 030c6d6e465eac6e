"""What run directories hold, read back for people: ``noether runs list`` and ``noether plot``.

A directory is a run when it has a ``config.yaml`` (the trainer writes it before anything else). From
the files :mod:`noether_core.io.paths` names, a run's

* **status** is the ``status`` of its ``summary.yaml``, or ``running`` when there is no summary yet or
  ``metrics.jsonl`` was written after it (a resumed run keeps the summary of its previous attempt until
  it ends). A process killed outright never writes its summary, so it stays ``running`` too;
* **position** is the ``epoch``, ``update`` and ``sample`` of the last record of ``metrics.jsonl``;
* **last values** are, per metric, the value of the last record that has it (metrics are logged at
  different intervals, so the last record seldom has them all).

Nothing here imports torch: listing and plotting runs starts at once, also on a machine without it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import attrs

from noether_core.config.bounded_yaml import read_config_file
from noether_core.errors import EXIT_OK, ConfigError, UsageError
from noether_core.io.metrics_file import POSITION_KEYS, iter_metrics

#: What ``noether runs list`` and ``noether plot`` show without ``--keys``.
DEFAULT_PATTERNS = ("loss/*",)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def match_keys(keys: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The ``keys`` matching any of the ``fnmatch`` ``patterns`` (case-sensitive on every platform),
    sorted."""
    return sorted(k for k in set(keys) if any(fnmatch.fnmatchcase(k, p) for p in patterns))


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory: it holds a ``config.yaml``."""
    return (path / "config.yaml").is_file()


@attrs.frozen
class RunInfo:
    """One run as ``noether runs list`` shows it."""

    path: Path
    run_id: str
    #: ``completed``, ``stopped``, ``interrupted``, ``failed`` (from ``summary.yaml``) or ``running``
    status: str
    #: the last record's position; ``None`` before the first record
    epoch: int | None
    update: int | None
    sample: int | None
    #: every metric's last value
    last: dict[str, float]

    def values(self, patterns: Sequence[str]) -> dict[str, float]:
        """The last values of the metrics matching ``patterns``, sorted by key."""
        return {key: self.last[key] for key in match_keys(self.last, patterns)}


def _metrics_file(run_dir: Path) -> Path:
    return run_dir / "metrics.jsonl"


def _status(run_dir: Path) -> str:
    summary_path = run_dir / "summary.yaml"
    metrics_path = _metrics_file(run_dir)
    try:
        summary_time = summary_path.stat().st_mtime_ns
    except FileNotFoundError:
        return "running"
    if metrics_path.exists() and metrics_path.stat().st_mtime_ns > summary_time:
        return "running"
    try:
        summary = read_config_file(summary_path)
    except (UsageError, ConfigError):  # unreadable or not the plain YAML noether writes
        return "unknown"
    status = summary.get("status") if isinstance(summary, dict) else None
    return str(status) if status else "unknown"


def existing_run(run_dir: Path | str) -> Path:
    """``run_dir``, checked to be a run directory; a :class:`~noether_core.errors.UsageError` says what
    it is instead."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"run directory {str(path)!r} does not exist or is not a directory")
    if not is_run(path):
        raise UsageError(f"{str(path)!r} is not a noether run directory (it has no config.yaml)")
    return path


def _records(run_dir: Path) -> Iterator[dict[str, Any]]:
    metrics_path = _metrics_file(run_dir)
    if not metrics_path.exists():  # a run that has not flushed its first record yet
        return
    bad_lines: list[str] = []
    yield from iter_metrics(metrics_path, bad_lines)
    for line in bad_lines:  # a damaged line does not hide the others, nor the other runs
        print(f"noether: warning: {line}; skipped", file=sys.stderr)


def read_run(run_dir: Path | str) -> RunInfo:
    """Status, position and last values of the run in ``run_dir``."""
    path = existing_run(run_dir)
    last: dict[str, float] = {}
    position: dict[str, Any] = {}
    for record in _records(path):
        for key, value in record.items():
            if key in POSITION_KEYS:
                position[key] = value
            elif _is_number(value):
                last[key] = float(value)
    return RunInfo(
        path=path,
        run_id=path.resolve().name,
        status=_status(path),
        epoch=position.get("epoch"),
        update=position.get("update"),
        sample=position.get("sample"),
        last=last,
    )


def find_runs(directory: Path | str) -> list[Path]:
    """The runs in ``directory`` (its sub-directories that are runs, or ``directory`` itself when it is
    one), by modification time, oldest first, so the newest ends up next to the prompt; ties by name."""
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"directory {str(root)!r} does not exist or is not a directory")
    if is_run(root):
        return [root]
    runs = [child for child in root.iterdir() if child.is_dir() and is_run(child)]
    return sorted(runs, key=lambda p: (p.stat().st_mtime_ns, p.name))


@attrs.frozen
class Series:
    """One metric of one run: its values against the update counter, in the order they were logged."""

    updates: list[int]
    values: list[float]


def read_series(run_dir: Path | str, patterns: Sequence[str]) -> tuple[dict[str, Series], set[str]]:
    """The series of every metric of the run in ``run_dir`` that matches ``patterns``, and the keys of
    all its metrics (to say what there is when nothing matches)."""
    path = existing_run(run_dir)
    series: dict[str, Series] = {}
    matches: dict[str, bool] = {}  # every key seen, fnmatched once rather than once per record
    for record in _records(path):
        update = record.get("update")
        for key, value in record.items():
            if key in POSITION_KEYS or not _is_number(value):
                continue
            if key not in matches:
                matches[key] = bool(match_keys([key], patterns))
            if matches[key] and _is_number(update):
                found = series.setdefault(key, Series([], []))
                found.updates.append(int(update))
                found.values.append(float(value))
    return series, set(matches)


# -------------------------------------------------------------------------------- noether runs list


def _plain_number(value: float) -> float | str:
    # strict JSON has no NaN or infinities; spelled as metrics.jsonl spells them
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _cell(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def runs_list_command(directory: Path, patterns: Sequence[str] | None, *, as_json: bool) -> int:
    """``noether runs list``: a table of the runs in ``directory`` with the last values of the metrics
    matching ``patterns`` (default :data:`DEFAULT_PATTERNS`)."""
    patterns = list(patterns or DEFAULT_PATTERNS)
    runs = [read_run(path) for path in find_runs(directory)]
    if as_json:
        rows = [
            {
                "run_id": run.run_id,
                "path": str(run.path),
                "status": run.status,
                "epoch": run.epoch,
                "update": run.update,
                "sample": run.sample,
                "metrics": {key: _plain_number(v) for key, v in run.values(patterns).items()},
            }
            for run in runs
        ]
        print(json.dumps(rows, indent=2, allow_nan=False))
        return EXIT_OK
    if not runs:
        print(f"no runs in {directory} (a run is a directory with a config.yaml)")
        return EXIT_OK
    keys = match_keys((key for run in runs for key in run.last), patterns)
    header = ["run", "status", "epoch", "update", "sample", *keys]
    table = [header] + [
        [
            run.run_id,
            run.status,
            *(_cell(v) for v in (run.epoch, run.update, run.sample)),
            *(_cell(run.last.get(key)) for key in keys),
        ]
        for run in runs
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        # names to the left, numbers to the right, so that digits line up
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    return EXIT_OK


__all__ = [
    "DEFAULT_PATTERNS",
    "POSITION_KEYS",
    "RunInfo",
    "Series",
    "existing_run",
    "find_runs",
    "is_run",
    "iter_metrics",
    "match_keys",
    "read_run",
    "read_series",
    "runs_list_command",
]
