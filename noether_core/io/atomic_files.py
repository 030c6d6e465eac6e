"""Small files replaced whole: a reader, or the next process after a kill, sees the old text or the new
one, never a mix or a file cut short.

Every small file of a run (``config.yaml``, ``summary.yaml``, the trackers' own files such as
``mlflow.json``, ``wandb.json`` and ``metrics.csv`` when it is rewritten) goes through
:func:`atomic_write_text`. Checkpoints have their own writer (:func:`~noether_core.atomic_torch_save`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

#: How the temporary files end (a file named ``.{name}.{pid}.{token}.tmp`` beside its target).
TMP_SUFFIX = ".tmp"


def temporary_sibling(path: Path) -> Path:
    """A fresh name beside ``path`` for writing its next version: in the same directory (so the rename
    onto ``path`` is atomic), hidden (a leading dot) and unique to this process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def fsync_directory(directory: Path | str) -> None:
    """Make the entries of ``directory`` (a rename into it) durable; a no-op on Windows, where a
    directory cannot be opened for syncing and renames are durable already."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str, *, encoding: str = "utf-8") -> None:
    """Replace the file at ``path`` with ``text`` encoded with ``encoding``, atomically: see
    :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace the file at ``path`` with ``data``, atomically.

    The data goes to a temporary file beside ``path`` (created exclusively, never through a name someone
    else made), which is flushed, fsynced and renamed onto ``path``; the directory is fsynced after the
    rename. The text is written as given: no newline translation. A process killed at any moment, a
    full disk or a file size limit leaves the previous file at ``path`` (or none) exactly as it was,
    and the temporary file is removed on any failure.

    Raises the ``OSError`` of the failing step (``ENOSPC``, ``EFBIG``, ``EACCES``...) unchanged, so a
    caller can say which file it was writing; ``KeyboardInterrupt`` cleans up the same way.
    """
    target = Path(path)
    tmp = temporary_sibling(target)
    try:
        # 0o666: the umask decides, as for any file the run writes (tempfile.mkstemp would give 0o600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


__all__ = ["TMP_SUFFIX", "atomic_write_bytes", "atomic_write_text", "fsync_directory", "temporary_sibling"]
