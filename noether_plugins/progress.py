"""``ProgressCallback``: how far the run is and when it will end.

On a terminal (stdout is a TTY, or ``bar: true``) it shows a live progress bar (``rich``) at the bottom
of the screen: percentage, epoch/update position, elapsed time and ETA. The bar is redrawn at most a
few times a second from ``after_update``, so an update costs one clock read; a line of the ``noether``
logger erases it first and scrolls up, and the bar is back at the next redraw.

Otherwise (a log file, a batch job) it prints two lines each time its interval is due::

    42.5% done. Epoch 4/10 (update 272/640, sample 17408/40960)
    estimated end 2025-11-21 13:05:12 (ETA 0:01:23), 12.3 ms per update

and, with ``heartbeat_seconds`` set, the same lines when that long passed without them (an interval of
an epoch can be hours). ``per update`` is the wall time per update since the previous lines; the ETA
uses the time per update since the first lines (so start-up cost does not distort it), or since the
start before those. With the bar, the lines go to ``log.txt`` only.

The trainer adds it on the log interval.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from noether_core import Counter, EvalInterval, Run

log = logging.getLogger("noether")
file_log = logging.getLogger("noether.file")

#: Seconds between two redraws of the bar.
REDRAW_SECONDS = 0.2


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day), whole seconds."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def format_per_update(seconds: float) -> str:
    """A per-update time with a unit that keeps three significant digits: ``85.2 µs``, ``12.3 ms``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def position_text(counter: Counter) -> str:
    """``Epoch 4/10 (update 272/640, sample 17408/40960)``."""
    return (
        f"Epoch {counter.epoch}/{counter.max_epochs} (update {counter.update}/{counter.total_updates}, "
        f"sample {counter.sample}/{counter.max_samples})"
    )


def percent_done(counter: Counter) -> float:
    total = counter.total_updates
    return 100.0 * counter.update / total if total > 0 else 100.0


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 (or unset), got {value!r}")


class LiveLineGuard(logging.Filter):
    """Keeps a live console line (the progress bar, ``EtaCallback``'s status line) out of log lines.

    While attached to the ``noether`` logger's console handlers, it calls ``erase`` before each record
    is written there, so the record starts on a clean line instead of being appended to the live one
    (which comes back at its next redraw).
    """

    def __init__(self, erase: Callable[[], None]) -> None:
        super().__init__()
        self._erase = erase
        self._handlers: list[logging.Handler] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self._erase()
        return True

    def attach(self) -> None:
        for handler in log.handlers:
            if type(handler) is logging.StreamHandler:  # the console, not log.txt
                handler.addFilter(self)
                self._handlers.append(handler)

    def detach(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers.clear()


class _Bar:
    """The live rich progress bar: one line, redrawn only when asked (no refresh thread)."""

    #: The bar on screen, if any (one per process: two would draw over each other).
    active: _Bar | None = None

    def __init__(self, stream: TextIO, counter: Counter) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        self.stream = stream
        console = Console(file=stream, force_terminal=True)

        def one_line(max_width: int | None = None) -> Column:
            return Column(no_wrap=True, overflow="ellipsis", max_width=max_width)

        self.progress: Progress = Progress(
            TextColumn("[bold]train", table_column=one_line()),
            BarColumn(bar_width=30),
            TaskProgressColumn(table_column=one_line()),
            TextColumn(
                "E{task.fields[epoch]} U{task.completed:.0f}/{task.total:.0f}", table_column=one_line()
            ),
            TimeElapsedColumn(table_column=one_line()),
            TextColumn("ETA {task.fields[eta]}", table_column=one_line()),
            # the rest of the width, cut short: the bar must stay one line for a redraw to replace it
            TextColumn("{task.fields[status]}", table_column=one_line(max(console.width - 78, 1))),
            console=console,
            auto_refresh=False,  # redrawn from the training loop: no thread competing for the GIL
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.task: TaskID = self.progress.add_task(
            "train",
            total=counter.total_updates,
            completed=counter.update,
            epoch=f"{counter.epoch}/{counter.max_epochs}",
            eta="-:--:--",
            status="",
        )
        #: Text for the bar's last column, asked for at each redraw (``EtaCallback`` sets it).
        self.status_provider: Callable[[Counter, float], str] | None = None
        self.shown = False
        self._guard = LiveLineGuard(self.erase)

    def start(self) -> None:
        _Bar.active = self
        self.progress.start()
        self._guard.attach()

    def draw(self, counter: Counter, eta: str, now: float) -> None:
        provider = self.status_provider
        self.progress.update(
            self.task,
            completed=counter.update,
            epoch=f"{counter.epoch}/{counter.max_epochs}",
            eta=eta,
            status=provider(counter, now) if provider is not None else "",
        )
        self.progress.refresh()
        self.shown = True

    def erase(self) -> None:
        if self.shown:
            self.shown = False
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def stop(self) -> None:
        self._guard.detach()
        try:
            self.progress.stop()
        finally:
            _Bar.active = None


class ProgressCallback:
    """A live progress bar on a terminal, periodic progress lines elsewhere."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        bar: bool | None = None
        """``true``: always the live bar; ``false``: always the lines; unset: the bar when stdout is a TTY."""
        heartbeat_seconds: float | None = attrs.field(default=300.0, validator=_positive_or_none)
        """Without the bar, also print the lines when this many seconds passed without them; unset: never."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bar: _Bar | None = None
        self._clock = time.perf_counter
        self._next_wakeup = float("inf")
        self._start_time = 0.0
        self._start_update = 0
        self._last_time = 0.0
        self._last_update = 0
        # the ETA's reference point: the start, then the first report (start-up cost left out)
        self._ref_time = 0.0
        self._ref_update = 0
        self._reports = 0

    # ------------------------------------------------------------------------------- hooks

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """It prints; it logs no metrics."""
        return []

    @hookimpl
    def before_training(self, trainer: Run, counter: Counter, config: Config) -> None:
        now = self._clock()
        self._start_time = self._last_time = self._ref_time = now
        self._start_update = self._last_update = self._ref_update = counter.update
        self._reports = 0
        if not trainer.is_main:
            return
        use_bar = config.bar if config.bar is not None else _isatty(sys.stdout)
        if use_bar and _Bar.active is not None:  # one bar per terminal: a second entry prints lines
            log.warning("%s: another progress bar is on the terminal; printing progress lines", config.key)
        elif use_bar:
            self.bar = _Bar(sys.stdout, counter)
            self.bar.start()
            self._next_wakeup = now
            return
        if config.heartbeat_seconds is not None:
            self._next_wakeup = now + config.heartbeat_seconds

    @hookimpl
    def after_update(self, counter: Counter) -> None:
        now = self._clock()
        if now < self._next_wakeup:  # the common case: one clock read and one comparison
            return
        if self.bar is not None:
            self.bar.draw(counter, self._eta_text(counter, now), now)
            self._next_wakeup = now + REDRAW_SECONDS
        else:
            self._report(counter, now)

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, interval: EvalInterval) -> None:
        if interval == "eval" or not trainer.is_main:
            return
        # with the bar, the lines go to log.txt; the bar itself is redrawn by after_update, on time
        self._report(counter, self._clock())

    @hookimpl
    def after_training(self, counter: Counter) -> None:
        if self.bar is not None:
            now = self._clock()
            self.bar.draw(counter, self._eta_text(counter, now), now)
            self.bar.stop()
            self.bar = None
        self._next_wakeup = float("inf")

    # ------------------------------------------------------------------------------- reporting

    def seconds_per_update(self, counter: Counter, now: float) -> float | None:
        """The ETA's time per update, ``None`` before any update of this run finished."""
        done = counter.update - self._ref_update
        if done > 0:
            return (now - self._ref_time) / done
        done = counter.update - self._start_update
        return (now - self._start_time) / done if done > 0 else None

    def _eta_text(self, counter: Counter, now: float) -> str:
        rate = self.seconds_per_update(counter, now)
        if rate is None:
            return "-:--:--"
        return format_duration(rate * (counter.total_updates - counter.update))

    def lines(self, counter: Counter, now: float) -> tuple[str, str]:
        """The two progress lines at ``now`` (a ``perf_counter`` reading)."""
        first = f"{percent_done(counter):.1f}% done. {position_text(counter)}"
        rate = self.seconds_per_update(counter, now)
        since = counter.update - self._last_update
        # a report in the same update as the previous one (heartbeat, then the interval) has no
        # updates of its own to time: it shows the ETA's rate instead of dividing by zero
        recent = (now - self._last_time) / since if since > 0 else rate
        if rate is None or recent is None:
            return first, "estimated end unknown (no update finished yet)"
        remaining = rate * (counter.total_updates - counter.update)
        end = datetime.datetime.now() + datetime.timedelta(seconds=remaining)
        second = (
            f"estimated end {end:%Y-%m-%d %H:%M:%S} (ETA {format_duration(remaining)}), "
            f"{format_per_update(recent)} per update"
        )
        return first, second

    def _report(self, counter: Counter, now: float) -> None:
        first, second = self.lines(counter, now)
        # one record for both lines: a log record costs about as much as the rest of the report
        (file_log if self.bar is not None else log).info("%s\n%s", first, second)
        if self._reports == 0 and counter.update > self._start_update:
            self._ref_time, self._ref_update = now, counter.update
        self._reports += 1
        self._last_time, self._last_update = now, counter.update
        if self.bar is None and self.config.heartbeat_seconds is not None:
            self._next_wakeup = now + self.config.heartbeat_seconds


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
