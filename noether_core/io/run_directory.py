"""Owning a run directory: one process at a time trains, resumes or evaluates a run.

* :class:`RunLock` is an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock``, held by ``noether train``
  (also with ``--resume``) and ``noether eval`` for their whole life (rank 0 alone under ``torchrun``).
  The file records the owner's pid, host and command, which a second process names in its
  :class:`~noether_core.errors.RunDirectoryBusyError`. The kernel drops the lock when its owner exits
  in any way, ``SIGKILL`` included, so a dead owner never blocks the next process; the file itself is
  removed when the lock is released, and one left by a killed owner is simply locked again.
* :func:`create_run_directory` makes a new run's directory atomically and already locked: it is built
  under a hidden temporary name with its lock held, then renamed into place. Of two processes creating
  the same run id, exactly one succeeds; the other sees the first one's lock and names its pid.
* :func:`restart_run_directory` (``noether train --run-id ID --restart``) clears the files of a run
  that has no checkpoint, so it can start over under its id; it refuses, naming them, if any
  checkpoint exists.
* :func:`check_run_files` refuses a run directory whose files are not files (a ``log.txt`` that is a
  directory) before anything in it is changed.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; a run directory is not locked there
    fcntl = None  # type: ignore[assignment]

from noether_core.errors import RunDirectoryBusyError, UsageError
from noether_core.io.paths import RunPaths, generate_run_id
from noether_core.io.paths import _check_name as check_name

#: The lock file's name in a run directory.
LOCK_FILE = ".lock"
#: How long a process that found a run directory locked waits for the owner's record to be readable
#: (the owner writes it right after taking the lock).
_HOLDER_WAIT_SECONDS = 1.0
#: How many fresh run ids are tried when a generated one is taken already.
_GENERATED_ID_ATTEMPTS = 5

#: Locks this process holds, by file descriptor: a forked child closes its copies (see _close_in_child).
_HELD: dict[int, RunLock] = {}


def _close_in_child() -> None:
    # A forked child (a DataLoader worker) shares the lock's open file description; were it to keep its
    # copy, the lock would outlive a parent killed with SIGKILL for as long as the child lives.
    for fd, lock in list(_HELD.items()):
        with contextlib.suppress(OSError):
            os.close(fd)
        lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _strerror(error: OSError) -> str:
    return error.strerror or str(error)


def _command_line() -> str:
    """This process's command, for the lock's record: ``noether train cfg.yaml --run-id a``."""
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` (or the process ends).

    Use :meth:`acquire`, as a context manager or with an explicit :meth:`release`::

        with RunLock.acquire(run_dir):
            ...  # this process alone trains, resumes or evaluates the run

    The lock is advisory: it keeps out other noether processes, not other programs.
    """

    def __init__(self, directory: Path, fd: int | None) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        """The lock file, ``RUN_DIR/.lock``."""
        return self.directory / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def acquire(cls, directory: Path | str) -> RunLock:
        """Lock ``directory`` (which must exist) for this process, without waiting.

        Raises :class:`~noether_core.errors.RunDirectoryBusyError` (naming the owner's pid) when another
        process holds it, and :class:`~noether_core.errors.UsageError` when the lock file cannot be
        created (a read-only directory). Where ``fcntl`` is missing (Windows) nothing is locked.
        """
        directory = Path(directory)
        if fcntl is None:
            return cls(directory, None)
        path = directory / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as error:
                raise UsageError(
                    f"cannot lock run directory {str(directory)!r}: {_strerror(error)} (noether writes "
                    f"{LOCK_FILE} into a run's directory to train, resume or evaluate it)"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise UsageError(
                        f"cannot lock run directory {str(directory)!r}: {_strerror(error)}"
                    ) from None
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirectoryBusyError(
                    directory, holder.get("pid"), holder.get("host"), holder.get("command")
                ) from None
            # The previous owner removes the file as it releases: if that happened between our open and
            # our flock, we locked a file nobody else will ever look at. Lock the one at the path instead.
            if _same_file(fd, path):
                break
            os.close(fd)
        lock = cls(directory, fd)
        _HELD[fd] = lock
        lock._record_owner()
        return lock

    def _record_owner(self) -> None:
        assert self._fd is not None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command_line(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        data = (json.dumps(record) + "\n").encode("utf-8")
        # the lock holds without the record too; a second process then says "another process"
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def moved(self, directory: Path) -> None:
        """The locked directory was renamed to ``directory`` (the lock goes with it)."""
        self.directory = directory

    def release(self) -> None:
        """Remove the lock file and release the lock; a second call does nothing. Never raises: a
        failure here must not hide how the run ended (the kernel releases the lock at exit anyway)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(fd, None)
        # unlinked while still locked: a process that opened the file meanwhile sees it is gone (above)
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.directory)!r}, held={self.held})"


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _read_holder(fd: int) -> dict[str, Any]:
    """The owner's record in the lock file open at ``fd``: ``pid``, ``host``, ``command`` (``{}`` if it
    stays unreadable, e.g. an owner that has just taken the lock and not yet written it)."""
    deadline = time.monotonic() + _HOLDER_WAIT_SECONDS
    while True:
        try:
            record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("pid"), int):
            host, command = record.get("host"), record.get("command")
            return {
                "pid": record["pid"],
                "host": host if isinstance(host, str) else None,
                "command": command if isinstance(command, str) else None,
            }
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.02)


def _refuse_existing(root: Path) -> None:
    """Raise the error for a run directory that exists: busy (naming the owner) or simply taken."""
    if root.is_dir():
        try:
            RunLock.acquire(root).release()
        except RunDirectoryBusyError:
            raise  # a process owns it: name that process
        except UsageError:
            pass  # cannot even be locked (not ours to write): it exists, which is all there is to say
        raise UsageError(
            f"{str(root)!r} already holds a run; continue it with --resume {root}, start it over under "
            "the same id with --restart (only while it has no checkpoint), or choose another --run-id"
        )
    raise UsageError(f"{str(root)!r} exists and is not a directory; choose another --run-id")


def _make_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(
            f"--output-dir {str(output_dir)!r} is not a directory (a file of that name, or in its path, "
            "is in the way)"
        ) from None
    except OSError as error:
        raise UsageError(f"cannot create --output-dir {str(output_dir)!r}: {_strerror(error)}") from None


def create_run_directory(output_dir: Path | str, run_id: str | None = None) -> tuple[RunPaths, RunLock]:
    """Create ``output_dir/run_id`` for a new run and lock it, as one atomic step.

    The directory is made under a hidden temporary name, locked, and renamed into place; the rename
    fails if ``run_id`` exists already (unless it is an empty directory, which it replaces). Without
    ``run_id`` a fresh one is generated (and another tried should it be taken). Nothing is left behind
    when it fails.

    Raises :class:`~noether_core.errors.RunDirectoryBusyError` when another process owns a run of that
    id (it may have been created a moment ago by a process started at the same time), and
    :class:`~noether_core.errors.UsageError` when it exists, or ``output_dir`` is not a directory or
    cannot be written.
    """
    output = Path(output_dir)
    _make_output_dir(output)
    attempts = _GENERATED_ID_ATTEMPTS if run_id is None else 1
    for attempt in range(attempts):
        name = generate_run_id() if run_id is None else _check_run_id(run_id)
        root = output / name
        tmp = output / f".noether-new-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
        except OSError as error:
            raise UsageError(
                f"cannot create the directory of run {name!r} in {str(output)!r}: {_strerror(error)}"
            ) from None
        lock: RunLock | None = None
        try:
            lock = RunLock.acquire(tmp)
            os.rename(tmp, root)
        except BaseException as error:
            if lock is not None:
                lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(error, OSError):
                raise
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                if run_id is None and attempt + 1 < attempts:
                    continue
                _refuse_existing(root)
            raise UsageError(f"cannot create run directory {str(root)!r}: {_strerror(error)}") from None
        lock.moved(root)
        return RunPaths(root, name), lock
    raise AssertionError("unreachable: the last attempt returns or raises")


def _check_run_id(run_id: str) -> str:
    try:
        return check_name("run id", run_id)
    except ValueError as error:
        raise UsageError(f"--run-id: {error}") from None


def checkpoint_entries(root: Path) -> list[str]:
    """The names in ``root/checkpoints/`` that are checkpoints, sorted: everything but the hidden
    leftovers of writes that never completed."""
    directory = root / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(entry.name for entry in directory.iterdir() if not entry.name.startswith("."))


def restart_run_directory(output_dir: Path | str, run_id: str) -> tuple[RunPaths, RunLock, list[str]]:
    """Start the run ``output_dir/run_id`` over (``noether train --run-id ID --restart``): lock its
    directory and remove every file in it, so that it begins again at update 0. Returns its paths, the
    lock and the names removed. A run directory that does not exist is created as for a new run.

    Refuses (:class:`~noether_core.errors.UsageError`, nothing removed) when the run has any checkpoint,
    naming them: a checkpoint is never deleted on the way. Raises
    :class:`~noether_core.errors.RunDirectoryBusyError` while another process owns the run.
    """
    _check_run_id(run_id)
    output = Path(output_dir)
    root = output / run_id
    if not os.path.lexists(root):
        paths, lock = create_run_directory(output, run_id)
        return paths, lock, []
    if not root.is_dir():
        raise UsageError(f"--restart: {str(root)!r} exists and is not a directory; choose another --run-id")
    lock = RunLock.acquire(root)
    try:
        found = checkpoint_entries(root)
        if found:
            shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
            raise UsageError(
                f"--restart refused: run {str(root)!r} has checkpoints ({shown}), which a restart would "
                f"delete. Continue the run with --resume {root} instead (--checkpoint TAG picks another "
                "than latest), or remove its checkpoints/ yourself if you mean to start it over."
            )
        removed = []
        for entry in sorted(root.iterdir()):
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    except OSError as error:
        lock.release()
        raise UsageError(f"--restart: cannot clear {str(root)!r}: {_strerror(error)}") from None
    except BaseException:
        lock.release()
        raise
    return RunPaths(root, run_id), lock, removed


def check_run_files(paths: RunPaths) -> None:
    """Refuse a run directory whose ``config.yaml``, ``metrics.jsonl``, ``summary.yaml`` or ``log.txt``
    exists but is not a file (a directory of that name), before anything is written: a
    :class:`~noether_core.errors.UsageError` naming it."""
    for path in (paths.config_yaml, paths.metrics_jsonl, paths.summary_yaml, paths.log_txt):
        if os.path.lexists(path) and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise UsageError(
                f"{str(path)!r} is {kind}; noether keeps the run's {path.name} there. Move it away, "
                "then try again."
            )


__all__ = [
    "LOCK_FILE",
    "RunLock",
    "check_run_files",
    "checkpoint_entries",
    "create_run_directory",
    "restart_run_directory",
]
