"""The interleaved runner that ``data_path.py``, ``report.py``, ``default_plugins_overhead.py`` and
``noop_plugins_overhead.py`` time their candidates with.

How it times. The candidates (a training loop each: a hand-written one, a noether Trainer, Lightning)
run in threads of one process and take turns, ``turn`` updates each, with a :class:`Baton` so only one
runs at a time; between turns a candidate waits for the baton, untimed. Every update is timed from
fetching its batch to fetching the next (for a Trainer: to the end of its tick), on two clocks: this
thread's CPU time, which does not count time spent waiting for a core on a busy machine, and wall
time. The times are added up per block of ``block`` updates. A block of one candidate is timed next to
the same block of the others, a fraction of a second apart, so a machine that slows down for a while
(the development machines are shared) slows all of them alike, and differences and ratios are taken per
block. The first ``warmup_blocks`` blocks are left out, and so is everything outside the loop (building
the run, ``before_training``, ``after_training``: after its last update the baton stays with a
candidate until it has returned). Each thread also counts its minor page faults per block
(``getrusage(RUSAGE_THREAD)``): memory the allocator gave back to the kernel and takes again shows
there, and in the CPU time.

Each thread sets one torch thread for itself: OpenMP's thread count is per thread, so a new thread
starts at one per core whatever the main thread set, and on a busy machine the tiny model's ops then
wait for a second OpenMP thread (``python -m benchmarks`` measured the pre-batched loop 2-30x slower
so).

The clock reads themselves cost: ``time.thread_time`` about 0.5 µs, ``time.perf_counter`` about
0.05 µs. The ``inner`` clock is read last at the start and first at the end, so its window holds no
read of the other; the other clock's window holds two reads of it. The default, ``wall`` inside,
puts the cheap reads into the CPU window; a script that reports one clock only puts that one inside.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from benchmarks.trainer_overhead import Timing, time_batches
from noether_core.config.loader import structure_config
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import DiskTracker
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.launch import setup_logging
from noether_core.run.plan import RunPlan
from noether_core.run.trainer import Trainer

T = TypeVar("T")
Clock = Literal["cpu", "wall"]
#: A candidate's training loop, run in its own thread.
Body = Callable[[], None]


class Baton:
    """Lets one of ``n`` threads run at a time, in turn (0, 1, ..., n-1, 0, ...); a finished thread is
    skipped."""

    def __init__(self, n: int) -> None:
        self._cond = threading.Condition()
        self._turn = 0
        self._done = [False] * n

    def wait_for(self, who: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._turn == who)

    def pass_on(self, who: int, *, finished: bool = False) -> None:
        with self._cond:
            if finished:
                self._done[who] = True
            n = len(self._done)
            for step in range(1, n + 1):
                nxt = (who + step) % n
                if not self._done[nxt]:
                    self._turn = nxt
                    break
            self._cond.notify_all()


class Blocks:
    """Times one candidate's updates, ``turn`` at a time in turns with the others, and adds them up per
    block of ``block`` updates (see the module's docstring). The candidate runs ``updates`` updates:
    ``warmup_blocks + blocks`` blocks."""

    def __init__(
        self,
        who: int,
        baton: Baton,
        *,
        block: int,
        turn: int,
        blocks: int,
        warmup_blocks: int,
        inner: Clock = "wall",
    ) -> None:
        self.who = who
        self.baton = baton
        self.size = block
        self.turn = turn
        self.warmup_blocks = warmup_blocks
        self.updates = block * (warmup_blocks + blocks)
        self.inner = inner
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.faults: list[float] = []

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, one per update, each timed until the next is asked for."""
        wall_inside = self.inner == "wall"
        cpu_clock, wall_clock = time.thread_time, time.perf_counter
        outer_clock, inner_clock = (cpu_clock, wall_clock) if wall_inside else (wall_clock, cpu_clock)
        size, turn, last = self.size, self.turn, self.updates
        it = iter(items)
        outer = inner = 0.0
        faults = _thread_faults()
        for i in range(last):
            if i % turn == 0:
                self.baton.wait_for(self.who)
            start_outer = outer_clock()
            start_inner = inner_clock()
            item = next(it, None)
            if item is None:
                return
            yield item
            inner += inner_clock() - start_inner
            outer += outer_clock() - start_outer
            if (i + 1) % size == 0:
                cpu, wall = (outer, inner) if wall_inside else (inner, outer)
                self.cpu.append(cpu / size)
                self.wall.append(wall / size)
                now = _thread_faults()
                self.faults.append((now - faults) / size)
                outer = inner = 0.0
                faults = now
            # after the last update the baton stays here until the body has returned, so no other
            # candidate runs beside its after_training
            if (i + 1) % turn == 0 and i + 1 < last:
                self.baton.pass_on(self.who)

    def timings(self) -> list[Timing]:
        """Seconds per update of each timed block (warm-up blocks left out)."""
        pairs = zip(self.wall, self.cpu, strict=True)
        return [Timing(wall, cpu) for wall, cpu in list(pairs)[self.warmup_blocks :]]

    def seconds(self, clock: Clock) -> list[float]:
        """Seconds per update of each timed block on one clock."""
        return (self.cpu if clock == "cpu" else self.wall)[self.warmup_blocks :]

    def faults_per_update(self) -> list[float]:
        """Page faults of this candidate's thread per update, for each timed block."""
        return self.faults[self.warmup_blocks :]


def _thread_faults() -> int:
    """Minor page faults of the calling thread so far (of the process where a thread's own count is not
    available)."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    faults: int = resource.getrusage(who).ru_minflt
    return faults


def run_interleaved(
    makers: Sequence[Callable[[Blocks], Body]],
    *,
    block: int,
    turn: int,
    blocks: int,
    warmup_blocks: int,
    inner: Clock = "wall",
    terminal: bool = False,
) -> list[Blocks]:
    """Build each candidate with its timer (``makers[i](timer)``) and run them all, interleaved, in
    threads of this process; the timers, in the order of ``makers``. Building and running happen inside
    :func:`console` (``terminal``): noether's logger keeps the stdout it was set up with. The first
    error of any candidate is raised once all threads have ended."""
    baton = Baton(len(makers))
    timers = [
        Blocks(i, baton, block=block, turn=turn, blocks=blocks, warmup_blocks=warmup_blocks, inner=inner)
        for i in range(len(makers))
    ]
    errors: list[BaseException] = []
    with console(terminal):
        bodies = [make(timer) for make, timer in zip(makers, timers, strict=True)]

        def run(who: int) -> None:
            torch.set_num_threads(1)  # per thread: see the module's docstring
            try:
                bodies[who]()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
            finally:
                baton.pass_on(who, finished=True)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(makers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return timers


# ------------------------------------------------------------------------------- noether candidates


def plan_of(raw: dict[str, Any]) -> RunPlan:
    """The run plan of the config ``raw``, with the plugins installed here."""
    registry = PluginRegistry.from_environment()
    return RunPlan(structure_config(raw, registry), registry)


def cli_trainer(plan: RunPlan, output_dir: Path, name: str) -> Trainer:
    """A Trainer set up as ``noether train`` sets a run up: a run directory under ``output_dir``, the
    log file, the on-disk tracker. Call it inside :func:`console`, where its ``fit`` runs too."""
    paths = RunPaths.create(output_dir, f"{name}-{time.monotonic_ns()}")
    setup_logging(paths)
    metrics = MetricProperties()
    tracker = DiskTracker(metrics)
    tracker.start(paths, {})
    return Trainer(plan, paths, trackers=[tracker], metrics=metrics)


def timed_fit(trainer: Trainer, timer: Blocks, what: str) -> Body:
    """``trainer.fit`` with its batches timed by ``timer``; an error unless the run completes."""
    time_batches(trainer, timer.wrap)

    def fit() -> None:
        status = trainer.fit()
        if status != "completed":
            raise RuntimeError(f"{what} ended {status}")

    return fit


def noether_candidate(build: Callable[[int], Trainer], what: str) -> Callable[[Blocks], Body]:
    """A maker for :func:`run_interleaved`: the Trainer ``build(updates)`` returns for the timer's
    number of updates, fitted by :func:`timed_fit`."""

    def make(timer: Blocks) -> Body:
        return timed_fit(build(timer.updates), timer, what)

    return make


class _Terminal(io.TextIOWrapper):
    """``/dev/null`` that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def console(terminal: bool) -> Iterator[None]:
    """stdout and stderr to ``/dev/null`` for the run; with ``terminal``, ones that claim to be a TTY.
    The ``noether`` loggers get their handlers back on the way out: a run set up inside points them at
    these streams, which are closed then, and a later line (``EmaCallback``'s, say) would fail."""
    loggers = [logging.getLogger(name) for name in ("noether", "noether.file")]
    handlers = [list(logger.handlers) for logger in loggers]
    with open(os.devnull, "w", encoding="utf-8") as out, open(os.devnull, "w", encoding="utf-8") as err:
        streams: tuple[Any, Any] = (out, err)
        if terminal:
            streams = (
                _Terminal(open(os.devnull, "wb"), encoding="utf-8", line_buffering=True),  # noqa: SIM115
                _Terminal(open(os.devnull, "wb"), encoding="utf-8", line_buffering=True),  # noqa: SIM115
            )
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = streams
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            for logger, kept in zip(loggers, handlers, strict=True):
                logger.handlers[:] = kept
            if terminal:
                for stream in streams:
                    stream.close()


def load_average() -> str:
    """The machine's load average, 1, 5 and 15 minutes, for the report's heading."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not on every platform
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
