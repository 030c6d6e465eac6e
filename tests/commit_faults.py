"""A plugin that kills its own process inside a checkpoint commit, for tests of checkpoint sets (put
``tests/`` on ``PYTHONPATH`` and use kind ``commit_faults:KillInCommit``).

It wraps the step of :mod:`noether_core.io.checkpoint_journal` that carries out a committed journal: in
the ``commit``-th commit that renames more than ``after_renames`` files, it does the first
``after_renames`` renames and then sends itself SIGKILL. The journal is on disk, the tag's files are half
from the new set and half from the old one: the state a kill between two renames leaves.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path

import attrs

from noether_core import CallbackConfig, hookimpl


class KillInCommit:
    """SIGKILL between the renames of the ``commit``-th multi-file commit (0: never)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        commit: int = 1
        after_renames: int = 1

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def before_training(self) -> None:
        from noether_core.io import checkpoint_journal

        original = checkpoint_journal._apply
        config = self.config
        seen = 0

        def apply(directory: Path, renames: Sequence[tuple[str, str]], delete: Sequence[str]) -> None:
            nonlocal seen
            if len(renames) > config.after_renames:
                seen += 1
                if seen == config.commit:
                    for temp, target in renames[: config.after_renames]:
                        os.replace(directory / temp, directory / target)
                    os.kill(os.getpid(), signal.SIGKILL)
            original(directory, renames, delete)

        checkpoint_journal._apply = apply  # type: ignore[assignment]
