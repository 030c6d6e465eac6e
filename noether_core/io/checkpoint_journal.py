"""The commit of checkpoint sets: a redo journal that makes several renames in ``checkpoints/`` one step.

A set's parts are first written to temporary files beside their targets (``.{name}.{pid}.{hex}.tmp``)
and synced. The commit point is the atomic rename of a small journal,
``checkpoints/.commit-{time}-{pid}.json``, that lists every rename still to do (temporary file ->
target) and every stale file of the set's tags to delete. Then the renames and deletions are done, the
directory synced and the journal removed.

A kill before the journal exists leaves the previous files as they were, plus temporary files nobody
will rename; a kill after it leaves a journal that :func:`recover` carries out (rolls forward) the next
time the directory is opened. Either way a reader that recovers first sees the old set or the new one,
never a mix. Recovery leaves alone the journals and temporary files of a process that is still running
(its pid is in their names), so opening a run that another process is writing does not break its
commit.

**Syncs.** Each part's data is synced once (``fsync`` of its temporary file). A commit of one file with
nothing to delete needs no journal: its rename is the commit point, followed by one directory sync. A
commit of several files syncs the journal's data, then the directory twice: after the journal's rename
(the commit point must be durable before any target changes) and after the renames (they must be
durable before the journal's removal can be). The directory is synced a third time, after the journal's
removal, only when the commit deleted files (replaying those deletions after a later commit could
remove that commit's files). Never a sync per part beyond its data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from noether_core.errors import CheckpointLoadError, CheckpointWriteError
from noether_core.io.atomic_files import fsync_directory

TMP_SUFFIX = ".tmp"
JOURNAL_PREFIX = ".commit-"
JOURNAL_SUFFIX = ".json"
JOURNAL_VERSION = 1
_CORE_PARTS = ("model", "optim", "trainer")


def temp_path(path: Path) -> Path:
    """A dot-name beside ``path``: the same filesystem (so ``os.replace`` is atomic), hidden from tag
    listings, and naming the writer's pid (so recovery knows whether its writer still runs)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _writer_pid(name: str) -> int | None:
    """The pid in a temporary file's or a journal's name, ``None`` when there is none."""
    if name.endswith(TMP_SUFFIX):
        fields = name[: -len(TMP_SUFFIX)].rsplit(".", 2)
        candidate = fields[1] if len(fields) == 3 else ""
    elif name.startswith(JOURNAL_PREFIX) and name.endswith(JOURNAL_SUFFIX):
        candidate = name[len(JOURNAL_PREFIX) : -len(JOURNAL_SUFFIX)].rpartition("-")[2]
    else:
        return None
    return int(candidate) if candidate.isdigit() else None


def _is_running(pid: int | None) -> bool:
    """Whether a process ``pid`` runs on this machine (this one included)."""
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def stale_files(directory: Path, tag: str, keep: Iterable[Path]) -> list[Path]:
    """The weights, optimizer and trainer files of ``tag`` in ``directory`` that are not in ``keep``
    (EMA weights are not among them: EMA entries save those on schedules of their own)."""
    kept = {path.name for path in keep}
    suffixes = tuple(f"_cp={tag}_{part}.th" for part in _CORE_PARTS)
    out = []
    for entry in directory.iterdir():
        name = entry.name
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        if suffix is None or name in kept or name.startswith("."):
            continue
        if "_ema=" in name[: -len(suffix)] or not entry.is_file():
            continue
        out.append(entry)
    return sorted(out)


def _check_plain_name(name: object, journal: Path) -> str:
    # a journal only ever names files of its own directory: never follow one elsewhere
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointLoadError(journal, f"the commit journal names {name!r}, not a file of checkpoints/")
    return name


def _read_journal(journal: Path) -> tuple[list[tuple[str, str]], list[str]]:
    try:
        document = json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointLoadError(
            journal, f"the commit journal cannot be read ({describe(error)}); delete it to go on"
        ) from error
    if (
        not isinstance(document, dict)
        or document.get("version") != JOURNAL_VERSION
        or not isinstance(document.get("renames"), list)
        or not isinstance(document.get("delete"), list)
    ):
        raise CheckpointLoadError(
            journal, f"not a version-{JOURNAL_VERSION} commit journal of noether; delete it to go on"
        )
    renames = []
    for pair in document["renames"]:
        if not isinstance(pair, list) or len(pair) != 2:
            raise CheckpointLoadError(journal, f"the commit journal has a malformed rename {pair!r}")
        renames.append((_check_plain_name(pair[0], journal), _check_plain_name(pair[1], journal)))
    return renames, [_check_plain_name(name, journal) for name in document["delete"]]


def _apply(directory: Path, renames: Sequence[tuple[str, str]], delete: Sequence[str]) -> None:
    """Carry out a journal's steps; each may have been done already (a roll-forward after a kill)."""
    for temp, target in renames:
        try:
            os.replace(directory / temp, directory / target)
        except FileNotFoundError:
            # the journal is written only once every temporary file is complete: a missing one was
            # renamed already
            continue
    for name in delete:
        (directory / name).unlink(missing_ok=True)
    fsync_directory(directory)


def commit(directory: Path, renames: Sequence[tuple[Path, Path]], delete: Sequence[Path]) -> None:
    """Rename every temporary file onto its target and delete ``delete``, all as one step: the journal's
    rename is the commit point. Raises :class:`CheckpointWriteError` when the journal cannot be written
    (nothing changed then; the caller removes its temporary files)."""
    if not renames and not delete:
        return
    if len(renames) == 1 and not delete:
        # one file and nothing to delete: its own rename is atomic, so it is the commit point and no
        # journal is needed; one directory sync makes it durable (the cost of a journal, one file sync
        # and two more directory syncs, was most of the price of a small save)
        temp, target = renames[0]
        try:
            os.replace(temp, target)
        except OSError as error:
            reason = f"the file could not be renamed ({describe(error)})"
            raise CheckpointWriteError(target, reason) from error
        fsync_directory(directory)
        return
    journal = directory / f"{JOURNAL_PREFIX}{time.time_ns():020d}-{os.getpid()}{JOURNAL_SUFFIX}"
    steps = [(temp.name, target.name) for temp, target in renames]
    doomed = [path.name for path in delete]
    document = {"version": JOURNAL_VERSION, "renames": [list(step) for step in steps], "delete": doomed}
    temp = temp_path(journal)
    try:
        with temp.open("x", encoding="utf-8") as file:
            file.write(json.dumps(document))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, journal)
        fsync_directory(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        if not journal.exists():  # else renamed and only the sync failed: the commit stands
            raise CheckpointWriteError(
                journal, f"the commit journal could not be written ({describe(error)})"
            ) from error
    # committed: from here on the set is the tag's, whatever happens to this process
    try:
        _apply(directory, steps, doomed)
    except BaseException:
        # an interrupt (a second signal) in the middle: finish the steps, they take microseconds; a
        # failure leaves the journal for the next recovery
        with contextlib.suppress(OSError):
            _apply(directory, steps, doomed)
            journal.unlink()
            fsync_directory(directory)
        raise
    journal.unlink()
    if doomed:
        # the journal's removal made durable before any later commit: replayed after that commit, its
        # deletions could remove the later commit's files. A journal without deletions is harmless to
        # replay (its temporary files are gone, so every rename is skipped), and the next commit's own
        # directory sync persists the removal anyway: one sync fewer for the common set.
        fsync_directory(directory)


def recover(directory: Path) -> list[Path]:
    """Finish the commits a killed writer left in ``directory`` (roll its journals forward, oldest first)
    and delete the temporary files of the sets it never committed. Returns the deleted temporary files.

    Journals and temporary files of processes still running are left alone. Raises
    :class:`CheckpointLoadError` for a journal that cannot be read (naming it).
    """
    if not directory.is_dir():
        return []
    entries = sorted(directory.iterdir())
    journals = [e for e in entries if e.name.startswith(JOURNAL_PREFIX) and e.name.endswith(JOURNAL_SUFFIX)]
    for journal in journals:
        if _is_running(_writer_pid(journal.name)):
            continue
        renames, delete = _read_journal(journal)
        _apply(directory, renames, delete)
        journal.unlink(missing_ok=True)
        fsync_directory(directory)
    deleted = []
    for entry in directory.iterdir():
        name = entry.name
        if not (name.startswith(".") and name.endswith(TMP_SUFFIX)) or _is_running(_writer_pid(name)):
            continue
        if entry.is_file():
            entry.unlink(missing_ok=True)
            deleted.append(entry)
    return deleted


__all__ = ["commit", "fsync_directory", "recover", "stale_files", "temp_path"]
