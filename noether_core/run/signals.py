"""SIGTERM and SIGINT during training: the first asks for a graceful stop after the current update (a
resumable ``latest`` is saved, exit status 130); a second SIGINT stops at once (exit status 1)."""

from __future__ import annotations

import contextlib
import logging
import signal
from types import FrameType
from typing import Any

from noether_core.errors import ImmediateStop

log = logging.getLogger("noether")


class Signals:
    """Installs the handlers for the duration of a ``with`` block; ``received`` names the first signal
    (or says it arrived on another rank)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise ImmediateStop("stopped at once by a second SIGINT; no checkpoint was saved")
        self.received = name
        log.warning(
            "received %s: finishing this update, then saving a resumable checkpoint "
            "(SIGINT again stops at once)",
            name,
        )

    def __enter__(self) -> Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


__all__ = ["Signals"]
