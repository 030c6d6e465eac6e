"""The end of a run, step by step, each step guarded so that the first error is the one reported.

A run that fails on a full disk fails again as it tears down: the last metrics cannot be flushed, the
summary cannot be written. Were those later errors raised, the first one (the checkpoint that could not
be written, which says what happened) would be lost. :class:`Teardown` runs every step, keeps the first
error and logs the later ones in one line each.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("noether")


def describe(error: BaseException) -> str:
    """``TypeName: first line of the message``, for one-line reports."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class Teardown:
    """Clean-up steps that never hide the error that ended the run.

    ``pending`` is the error already on its way out (the run failed), if any: then no step's error is
    raised at all. Otherwise :meth:`raise_first` raises the first error a step raised (after every step
    ran). Errors after the first are logged as warnings, one line each. Only ``Exception`` is caught: an
    interrupt (a second Ctrl-C) still stops the teardown.
    """

    def __init__(self, pending: BaseException | None = None) -> None:
        self.pending = pending
        self.first: BaseException | None = pending

    def add(self, error: BaseException, what: str = "") -> None:
        """Record ``error`` (what a step raised, or a failure found otherwise) as described above."""
        if self.first is None:
            self.first = error
            return
        if error is self.first:
            return
        doing = f" while {what}" if what else ""
        with contextlib.suppress(Exception):  # the console may be gone too; the first error matters
            log.warning("also failed%s: %s", doing, describe(error))

    def run(self, what: str, step: Callable[..., object], *args: Any) -> bool:
        """Call ``step(*args)``; ``what`` names it in the report of a later error (``"closing the
        trackers"``). Returns whether it succeeded."""
        try:
            step(*args)
        except Exception as error:
            self.add(error, what)
            return False
        return True

    def raise_first(self) -> None:
        """Raise the first error a step raised, unless the run's own error is already on its way."""
        if self.pending is None and self.first is not None:
            raise self.first


__all__ = ["Teardown", "describe"]
