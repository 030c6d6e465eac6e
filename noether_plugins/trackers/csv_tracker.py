"""The ``csv`` tracker: every flushed record as one row of a CSV file beside ``metrics.jsonl``."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from noether_core import ConfigError, ConfigIssue, RunPaths, atomic_write_text
from noether_plugins.trackers._support import POSITION_KEYS, check_type

#: Seconds rows may wait in the file's buffer, as for ``metrics.jsonl``.
FLUSH_SECONDS = 1.0


class CsvTracker:
    """Writes ``RUN_DIR/metrics.csv`` (``file_name``): one row per flushed record, columns ``epoch``,
    ``update``, ``sample`` and then the metric keys in the order they first appear; a record without a
    value for a column leaves its cell empty. NaN and infinities are written as ``nan``, ``inf`` and
    ``-inf``, which spreadsheets and ``pandas.read_csv`` read back as floats.

    With ``keys``, only those metrics are columns (in that order), and a record with none of them adds
    no row. Without, a key first seen mid-run adds a column: the file is rewritten once with the wider
    header, so it always has a single header naming every column.

    Rows reach the file at least once a second, before every checkpoint and at the end. A run directory
    that has the file already (a resume, ``noether eval``) is appended to; a resume from the checkpoint
    at update ``U`` first removes the rows of updates after ``U``, which come again.
    """

    def __init__(self, keys: Sequence[str] | None = None, file_name: str = "metrics.csv") -> None:
        if keys is not None:
            check_type(keys, (list, tuple), "keys", "a list of metric keys")
            for key in keys:
                check_type(key, str, "keys", "a list of metric keys (strings)")
        check_type(file_name, str, "file_name", "a file name")
        if not file_name or Path(file_name).is_absolute() or ".." in Path(file_name).parts:
            raise ConfigError([ConfigIssue("kwargs.file_name", f"must be a file name, got {file_name!r}")])
        self.keys = None if keys is None else list(dict.fromkeys(keys))
        self.file_name = file_name
        self._path: Path | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._columns: list[str] = []
        self._known: set[str] = set()
        self._resume_update: int | None = None
        self._flush_at = 0.0

    @property
    def path(self) -> Path | None:
        """The CSV file, once started."""
        return self._path

    def resume(self, update: int) -> None:
        """The run resumes from the checkpoint at ``update``: the rows after it are removed at ``start``."""
        self._resume_update = update

    def start(self, paths: RunPaths, config: Mapping[str, Any]) -> None:
        """Open the file (creating it, or appending to the one a previous process wrote)."""
        self._path = path = paths.root / self.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        header, rows = _read(path)
        wanted = list(POSITION_KEYS) if self.keys is None else [*POSITION_KEYS, *self.keys]
        columns = header + [c for c in wanted if c not in header]
        if self._resume_update is not None:
            after = str(self._resume_update)
            rows = [row for row in rows if not _later(row.get("update", ""), after)]
        if columns != header or self._resume_update is not None or not path.exists():
            _rewrite(path, columns, rows)
        self._columns = columns
        self._known = set(columns)
        self._open()

    def _open(self) -> None:
        assert self._path is not None
        self._file = self._path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(
            self._file, self._columns, restval="", extrasaction="ignore", lineterminator="\n"
        )
        self._flush_at = time.monotonic() + FLUSH_SECONDS

    def log(self, record: Mapping[str, float | int]) -> None:
        """Append ``record`` as a row (widening the header first if it brings a new key)."""
        if self._file is None:
            raise RuntimeError("CsvTracker.log called before start or after close")
        if self.keys is not None:
            if not any(key in record for key in self.keys):
                return
        elif not self._known.issuperset(record):
            self._widen([key for key in record if key not in self._known])
        self._writer.writerow(record)
        now = time.monotonic()
        if now >= self._flush_at:
            self._file.flush()
            self._flush_at = now + FLUSH_SECONDS

    def _widen(self, new: list[str]) -> None:
        assert self._file is not None
        assert self._path is not None
        self._file.close()
        header, rows = _read(self._path)
        self._columns = header + [key for key in self._columns + new if key not in header]
        self._known = set(self._columns)
        _rewrite(self._path, self._columns, rows)
        self._open()

    def flush(self) -> None:
        """Hand the rows written so far to the operating system (before a checkpoint)."""
        if self._file is not None:
            self._file.flush()
            self._flush_at = time.monotonic() + FLUSH_SECONDS

    def set_summary(self, key: str, value: Any) -> None:
        """Summaries have no row; ``summary.yaml`` holds them."""

    def close(self, status: str) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _later(update: str, after: str) -> bool:
    try:
        return int(update) > int(after)
    except ValueError:
        return False


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of ``path`` (none when it does not exist); a last line that a crash cut
    short is left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _rewrite(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
    """``rows`` under the header ``columns``, replacing ``path`` atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, list(columns), restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
