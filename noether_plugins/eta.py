"""``EtaCallback``: a status line with the position, the time to the next log and the time per update.

Meant for a terminal; the trainer adds it (on the log interval) only when stdout is a TTY, on rank 0.
It redraws at most a few times a second from ``after_update`` (one clock read per update otherwise)::

    E 4/10 | U 172/640 | S 11008/40960 | next log in 12 updates, 0:00:03 | 12.3 ms/update

* With a live :mod:`~noether_plugins.progress` bar on screen, the text (less the position, which the
  bar shows) goes into the bar's last column.
* Otherwise it is written to stderr, starting with ``\\r`` so that each redraw replaces the previous one.
  Before a record of the ``noether`` logger reaches the terminal the line is erased, so log lines never
  run into it; it is drawn again on the next update, and erased at the end of training.
* Where stderr is not a terminal either, it writes nothing: a log file never fills with ``\\r`` lines.

``ms/update`` is the wall time per update since training started (plugins and evaluations included).
It writes no metrics.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from noether_core import CallbackConfig, hookimpl
from noether_plugins.progress import LiveLineGuard, ProgressCallback, format_duration, format_per_update

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, IntervalScheduler, Run

#: Seconds between two redraws of the status line.
REDRAW_SECONDS = 0.2
ERASE_LINE = "\r\x1b[2K"


class EtaCallback:
    """A live status line on a terminal: position, next log, time per update."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config
        self.enabled = False
        self.stream: TextIO = sys.stderr
        self._tty = False
        self._scheduler: IntervalScheduler | None = None
        self._clock = time.perf_counter
        self._next_draw = float("inf")
        self._start_time = 0.0
        self._start_update = 0
        self._shown = False
        self._progress: list[ProgressCallback] = []
        self._guard = LiveLineGuard(self.erase)

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """It prints; it logs no metrics."""
        return []

    @hookimpl
    def before_training(self, trainer: Run, counter: Counter) -> None:
        self.enabled = trainer.is_main
        if not self.enabled:
            return
        self.stream = sys.stderr
        self._tty = _isatty(self.stream)
        self._scheduler = trainer.scheduler
        self._start_time = self._clock()
        self._start_update = counter.update
        self._next_draw = self._start_time
        # a progress bar of the same run, if any, shows the text instead of stderr (its bar is looked
        # up at each draw: it starts after this entry's before_training when listed after it)
        self._progress = [e.instance for e in trainer.entries if isinstance(e.instance, ProgressCallback)]
        self._guard.attach()

    @hookimpl
    def after_update(self, counter: Counter) -> None:
        now = self._clock()
        if now < self._next_draw:  # the common case: one clock read and one comparison
            return
        self._next_draw = now + REDRAW_SECONDS
        self.draw(counter, now)

    @hookimpl
    def at_eval(self, counter: Counter, interval: EvalInterval) -> None:
        if interval != "eval":
            self.draw(counter, self._clock())  # "next log in" starts over now

    @hookimpl
    def after_training(self) -> None:
        self.erase()
        self._guard.detach()
        self.enabled = False
        self._next_draw = float("inf")

    # ------------------------------------------------------------------------------- drawing

    def position(self, counter: Counter) -> str:
        """``E 4/10 | U 172/640 | S 11008/40960``."""
        return (
            f"E {counter.epoch}/{counter.max_epochs} | U {counter.update}/{counter.total_updates} | "
            f"S {counter.sample}/{counter.max_samples}"
        )

    def timing(self, counter: Counter, now: float) -> str:
        """``next log in 12 updates, 0:00:03 | 12.3 ms/update`` at ``now`` (a ``perf_counter`` reading)."""
        done = counter.update - self._start_update
        per_update = (now - self._start_time) / done if done > 0 else None
        parts = []
        interval = self.config.interval
        until = None
        if interval is not None and self._scheduler is not None:
            until = self._scheduler.updates_until_due(interval, counter.update)
        if until is not None:  # None: no log left before the end
            eta = format_duration(until * per_update) if per_update is not None else "-:--:--"
            parts.append(f"next log in {until} update{'s' if until != 1 else ''}, {eta}")
        parts.append(f"{format_per_update(per_update)}/update" if per_update is not None else "-/update")
        return " | ".join(parts)

    def draw(self, counter: Counter, now: float) -> None:
        if not self.enabled:
            return
        bar = next((p.bar for p in self._progress if p.bar is not None), None)
        if bar is not None:
            bar.status_provider = self.timing  # the bar asks for the text whenever it redraws
            return
        if not self._tty:
            return
        width = shutil.get_terminal_size((120, 24)).columns - 1  # a wrapped line cannot be redrawn
        self.stream.write(ERASE_LINE + f"{self.position(counter)} | {self.timing(counter, now)}"[:width])
        self.stream.flush()
        self._shown = True

    def erase(self) -> None:
        """Remove the status line from the terminal (before a log line, at the end)."""
        if self._shown:
            self._shown = False
            self.stream.write(ERASE_LINE)
            self.stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
