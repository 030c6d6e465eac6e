"""SIGTERM and SIGINT during training.

The first signal asks for a graceful stop: the current update finishes, a resumable ``latest`` is saved,
and the run ends ``interrupted`` (exit status 130). What a later signal does depends on where the run is:

* while the run still trains, a second SIGINT stops it at once, without a checkpoint (exit status 1); a
  second SIGTERM changes nothing;
* while a checkpoint is being written (:meth:`Signals.writing`), that stop waits until the write is
  complete: a signal never leaves a checkpoint half-written;
* once the stop's checkpoint is being saved, and once the run's ending is decided (``after_training``
  runs), a signal changes nothing;
* after the run, too, when the process ends with it (:func:`keep_handling_until_exit`, the command):
  then the signals are ignored until the process exits.

The first signal also starts a watchdog: when the run has not ended ``stop_timeout`` seconds later, it
calls the ``on_timeout`` it was given (the trainer reports what is still running and ends the process).
It never fires in the middle of a checkpoint write; it waits for the write to finish. The watchdog
starts even when the main thread never returns to the interpreter to run the handler (a plugin blocked
in C code): a listener thread reads the signal's number from the wakeup fd
(:func:`signal.set_wakeup_fd`), which the C-level handler writes.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from noether_core.errors import ImmediateStop

log = logging.getLogger("noether")

_keep_until_exit = False

#: How long the end of a run waits for the signal listener thread to return (it returns as soon as the
#: pipe it reads is closed; the bound only keeps a stuck read from holding the run's end).
LISTENER_JOIN_SECONDS = 5.0


def keep_handling_until_exit() -> None:
    """Ignore SIGTERM and SIGINT when a run ends, for the rest of the process: a signal that arrives
    after the run, while the process exits, changes nothing (instead of killing it with status 143).
    For a process that ends with its run (the ``noether`` command); a program that goes on after
    :func:`noether_core.train` gets its own handlers back."""
    global _keep_until_exit
    _keep_until_exit = True


class Phase(enum.Enum):
    """Where the run is, as far as signals are concerned."""

    RUNNING = "running"  # no signal yet
    STOPPING = "stopping"  # a signal arrived: finishing the update
    SAVING = "saving"  # the stop's resumable checkpoint is being written (or is written)
    ENDING = "ending"  # the ending is decided: after_training, trackers closing
    OVER = "over"  # the run is over


class Signals:
    """Installs the handlers for the duration of a ``with`` block; ``received`` names the first signal
    (or says it arrived on another rank).

    ``stop_timeout`` (seconds, ``None`` for no limit) bounds how long the run may take to end after the
    first signal; when it is exceeded, ``on_timeout`` is called from the watchdog thread.
    """

    def __init__(
        self, stop_timeout: float | None = None, on_timeout: Callable[[float], object] | None = None
    ) -> None:
        self.received: str | None = None
        #: the first signal this process received, whatever the phase (for messages)
        self.first_signal: str | None = None
        self.stop_timeout = stop_timeout
        self.on_timeout = on_timeout
        self.phase = Phase.RUNNING
        self._previous: dict[int, Any] = {}
        self._writes = 0
        self._stop_after_write = False
        self._idle = threading.Condition()
        self._cancelled = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._watchdog_lock = threading.RLock()  # the handler may run again inside itself
        self._wakeup_write_end: int | None = None
        self._listener: threading.Thread | None = None
        self._previous_wakeup_fd = -1

    # --------------------------------------------------------------------------------- the handler

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.first_signal = self.first_signal or name
        # RUNNING also when another rank's signal was noted (``received`` is set then): this one is the
        # first here
        if self.phase is Phase.RUNNING:
            self.received = name
            self.phase = Phase.STOPPING
            log.warning(
                "received %s: finishing this update, then saving a resumable checkpoint "
                "(SIGINT again stops at once)",
                name,
            )
            self._start_watchdog()
            return
        if self.phase is Phase.STOPPING and signum == signal.SIGINT:
            if self._writes:
                # raising now would leave the checkpoint being written half done
                self._stop_after_write = True
                log.warning("received SIGINT again: stopping at once when the checkpoint write is done")
                return
            raise ImmediateStop("stopped at once by a second SIGINT; no checkpoint was saved")
        log.warning("received %s: %s", name, self._what_happens_now())
        self._start_watchdog()

    def _what_happens_now(self) -> str:
        if self.phase is Phase.STOPPING:
            return "already stopping: finishing this update, then saving a resumable checkpoint"
        if self.phase is Phase.SAVING:
            return "the resumable checkpoint is being saved; the run ends after it as interrupted"
        if self.phase is Phase.ENDING:
            return "the run is ending already; it changes nothing"
        return "the run is over; it changes nothing"

    # ---------------------------------------------------------------------------- what the run tells

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A checkpoint write: a second SIGINT inside waits for its end, and so does the watchdog."""
        with self._idle:
            self._writes += 1
        try:
            yield
        finally:
            with self._idle:
                self._writes -= 1
                self._idle.notify_all()
        if not self._writes and self._stop_after_write and self.phase is Phase.STOPPING:
            self._stop_after_write = False
            raise ImmediateStop(
                "stopped at once by a second SIGINT, after the checkpoint being written was complete"
            )

    def saving(self) -> None:
        """The stop's resumable checkpoint is being saved: from now on a signal changes nothing."""
        self.phase = Phase.SAVING

    def ending(self) -> None:
        """The run's ending is decided (``after_training`` comes): a signal changes nothing any more."""
        self._stop_after_write = False
        self.phase = Phase.ENDING

    # ---------------------------------------------------------------------------------- the watchdog

    def _start_watchdog(self) -> None:
        if self.stop_timeout is None or self.on_timeout is None or math.isinf(self.stop_timeout):
            return
        with self._watchdog_lock:
            if self._watchdog is not None:
                return
            self._watchdog = threading.Thread(
                target=self._watch,
                args=(self.stop_timeout, self.on_timeout),
                name="noether-stop-watchdog",
                daemon=True,
            )
            self._watchdog.start()

    def _listen(self, read_end: int) -> None:
        """Start the watchdog at a signal even when the main thread never gets to run the handler: a
        plugin blocked in C code (a CUDA or NCCL wait, a C extension's read) that does not return to
        the interpreter. The C-level handler writes each signal's number to the wakeup fd."""
        wanted = {int(signal.SIGTERM), int(signal.SIGINT)}
        try:
            while True:
                data = os.read(read_end, 64)
                if not data:  # the write end was closed: the block is over
                    return
                if wanted.intersection(data):
                    self._start_watchdog()
        except OSError:
            return
        finally:
            os.close(read_end)

    def _watch(self, timeout: float, on_timeout: Callable[[float], object]) -> None:
        started = time.monotonic()
        if self._cancelled.wait(min(timeout, threading.TIMEOUT_MAX)):
            return
        with self._idle:
            # never in the middle of a checkpoint write: the process ends once it is complete
            self._idle.wait_for(lambda: not self._writes or self._cancelled.is_set())
        if not self._cancelled.is_set():
            on_timeout(time.monotonic() - started)

    # ---------------------------------------------------------------------------------- installation

    def __enter__(self) -> Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        if self._previous and self.stop_timeout is not None and self.on_timeout is not None:
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            self._previous_wakeup_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self._wakeup_write_end = write_end
            self._listener = threading.Thread(
                target=self._listen, args=(read_end,), name="noether-signal-listener", daemon=True
            )
            self._listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.phase = Phase.OVER
        self._cancelled.set()
        with self._idle:
            self._idle.notify_all()
        for sig, handler in self._previous.items():
            # ignored, not handled in Python: the interpreter puts the default action (death by the
            # signal) back for Python handlers when it finalizes, but leaves an ignored signal ignored
            signal.signal(sig, signal.SIG_IGN if _keep_until_exit else handler)
        if self._wakeup_write_end is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            # the listener reads the end of the pipe, closes its end and returns; waited for, since
            # until then its frame holds this object and the trainer's timeout callback (and through
            # it the trainer, which the caller frees next)
            os.close(self._wakeup_write_end)
            self._wakeup_write_end = None
            if self._listener is not None:
                self._listener.join(LISTENER_JOIN_SECONDS)
                self._listener = None


__all__ = ["Phase", "Signals", "keep_handling_until_exit"]
