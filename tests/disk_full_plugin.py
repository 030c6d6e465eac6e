"""A disk that fills up during a run, for the tests of what a run reports when it cannot write
(``disk_full_plugin:DiskFull``, with ``tests/`` on ``PYTHONPATH``). Meant for a ``noether train``
subprocess: the audit hook it installs stays for the life of the process.

From update ``at_update`` on, the run directory behaves as on a full filesystem:

* every file opened for writing under it fails with ``ENOSPC`` (a ``sys.addaudithook`` hook on the
  ``open`` event, which ``open`` and ``os.open`` raise before they touch the disk): checkpoints,
  ``summary.yaml`` and every other file written whole;
* the run's ``log.txt``, open already, has its file descriptor pointed at ``/dev/full``, where the
  kernel fails every write with ``ENOSPC``.

``metrics.jsonl``, also open already, keeps its descriptor (a full disk may still have room in a block
already allocated), so the first failure is the checkpoint's.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Any

import attrs

from noether_core import CallbackConfig, hookimpl

_FULL: list[str] = []
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _refuse_writes(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _FULL:
        return
    path, mode, flags = args
    if path is None or isinstance(path, int):
        return
    writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITING)
    if writing and os.path.abspath(os.fsdecode(path)).startswith(_FULL[0] + os.sep):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(path))


sys.addaudithook(_refuse_writes)


class DiskFull:
    """Fills the run directory's disk at update ``at_update``."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        every_n_updates: int | None = 1
        at_update: int = 3

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, trainer: Any, counter: Any) -> None:
        if counter.update != self.config.at_update or _FULL:
            return
        root = os.path.abspath(trainer.paths.root)
        full = os.open("/dev/full", os.O_WRONLY)
        for handler in logging.getLogger("noether").handlers:
            stream = getattr(handler, "stream", None)
            if getattr(handler, "baseFilename", None) == os.path.join(root, "log.txt") and stream:
                os.dup2(full, stream.fileno())
        os.close(full)
        _FULL.append(root)
