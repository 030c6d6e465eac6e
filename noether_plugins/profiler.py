"""``ProfilerCallback``: ``torch.profiler`` over a window of updates, written to the run directory.

A window is ``wait`` updates not profiled, ``warmup`` updates profiled and thrown away (the profiler's
own start-up cost lands there), then ``active`` updates recorded: ``torch.profiler.schedule(wait,
warmup, active, repeat=1)``, stepped once per update in ``after_update``. A window starts

* after each update at which the entry's interval is due (its ``at_eval``, so the run's shared
  scheduler decides), and
* with ``start_update``, also after that update (``0``: at the start of training),

while no window is running and an update follows, at most ``windows`` times in a run (counted across a
resume). A window that
starts at update ``U`` records updates ``U + wait + warmup + 1`` to ``U + wait + warmup + active``, each
one whole step: its data wait, forward, backward, optimizer step and the events and ticks that follow it.
When the window ends, it writes, in ``RUN_DIR/profiler/``,

* ``trace_U{n}.json``: the Chrome trace (``chrome://tracing``, Perfetto), and
* ``key_averages_U{n}.txt``: the key-averages table, sorted by ``sort_by``,

where ``n`` is the window's last update. Only rank 0 profiles unless ``all_ranks`` is set; then every rank
does, and in a run of several processes the names end in ``_rank{r}``. A window cut short by the end of
training is written at its last update; one that is running when a checkpoint is written is not part of
the checkpoint (a resumed run counts the windows written, and starts the next one at the next due point).
It logs no metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from attrs import validators as v

from noether_core import CallbackConfig, atomic_write_text, hookimpl

if TYPE_CHECKING:
    from torch.profiler import profile

    from noether_core import Counter, EvalInterval, Run, RunConfig

log = logging.getLogger("noether")

# typed loosely: attrs infers the field type from a non-None default (int), not from the annotation
_optional_positive: Any = v.optional(v.ge(1))

#: The columns the key-averages table can be sorted by.
SORT_KEYS = (
    "cpu_time_total",
    "self_cpu_time_total",
    "device_time_total",
    "self_device_time_total",
    "cpu_memory_usage",
    "self_cpu_memory_usage",
    "device_memory_usage",
    "self_device_memory_usage",
    "count",
)


class ProfilerCallback:
    """Runs ``torch.profiler`` over ``wait`` + ``warmup`` + ``active`` updates after each due point of its
    interval (at most ``windows`` times) and writes a Chrome trace and a key-averages table to
    ``RUN_DIR/profiler/``."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        wait: int = attrs.field(default=0, validator=v.ge(0))
        """Updates after the window's start that are not profiled."""
        warmup: int = attrs.field(default=1, validator=v.ge(0))
        """Updates profiled and then discarded, after ``wait``."""
        active: int = attrs.field(default=3, validator=v.ge(1))
        """Updates recorded, after ``warmup``."""
        windows: int | None = attrs.field(default=1, validator=_optional_positive)
        """How many windows a run profiles at most; unset (``null``): one at every due point."""
        start_update: int | None = attrs.field(default=None, validator=v.optional(v.ge(0)))
        """Also start a window after this update (``0``: at the start of training), besides the interval's
        due points."""
        all_ranks: bool = False
        """Profile every rank (files named ``..._rank{r}``), not only rank 0."""
        record_shapes: bool = False
        """Record the input shapes of the ops (``torch.profiler.profile(record_shapes=...)``)."""
        profile_memory: bool = False
        """Record tensor memory allocation and release."""
        with_stack: bool = False
        """Record the Python stack of the ops (large traces)."""
        sort_by: str | None = attrs.field(default=None, validator=v.optional(v.in_(SORT_KEYS)))
        """The key-averages table's sort column; unset: ``self_device_time_total`` on a CUDA device,
        ``self_cpu_time_total`` otherwise."""
        row_limit: int = attrs.field(default=50, validator=v.ge(1))
        """Rows of the key-averages table."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._windows_done = 0
        self._profiler: profile | None = None
        # where the finished window's files go, and the update the running step belongs to
        self._dir: Path | None = None
        self._suffix = ""
        self._sort_by = "self_cpu_time_total"
        self._update = 0

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        """Files only (``RUN_DIR/profiler/``), no metrics."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """How many windows were written, so a resumed run does not profile more than ``windows``."""
        return {"windows_done": self._windows_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._windows_done = int(state["windows_done"])

    @hookimpl
    def before_training(self, trainer: Run, counter: Counter, config: Config) -> None:
        dist = trainer.dist
        if not (dist.is_main or config.all_ranks):
            return
        self._dir = trainer.paths.root / "profiler"
        self._suffix = f"_rank{dist.rank}" if config.all_ranks and dist.is_distributed else ""
        on_cuda = trainer.device.type == "cuda"
        self._sort_by = config.sort_by or ("self_device_time_total" if on_cuda else "self_cpu_time_total")
        if config.start_update == counter.update:
            self._start(trainer, counter)

    @hookimpl
    def after_update(self, trainer: Run, counter: Counter, config: Config) -> None:
        profiler = self._profiler
        if profiler is not None:
            self._update = counter.update
            profiler.step()  # writes the files when this step ends the window
            if self._profiler is None:  # the window ended
                profiler.stop()
        elif config.start_update is not None and config.start_update == counter.update:
            self._start(trainer, counter)

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, interval: EvalInterval) -> None:
        # no update follows the last one: a window starting there would record nothing
        if interval != "eval" and self._profiler is None and counter.update < counter.total_updates:
            self._start(trainer, counter)

    @hookimpl
    def after_training(self, counter: Counter) -> None:
        profiler = self._profiler
        if profiler is not None:  # cut short: what the window recorded is written now
            self._update = counter.update
            profiler.stop()
            self._profiler = None

    def _start(self, trainer: Run, counter: Counter) -> None:
        config = self.config
        if self._dir is None or (config.windows is not None and self._windows_done >= config.windows):
            return
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._profiler = profile(
            activities=activities,
            schedule=schedule(wait=config.wait, warmup=config.warmup, active=config.active, repeat=1),
            on_trace_ready=self._write,
            record_shapes=config.record_shapes,
            profile_memory=config.profile_memory,
            with_stack=config.with_stack,
        )
        self._update = counter.update
        self._profiler.start()

    def _write(self, profiler: profile) -> None:
        self._profiler = None
        self._windows_done += 1
        directory = self._dir
        assert directory is not None
        directory.mkdir(parents=True, exist_ok=True)
        name = f"U{self._update}{self._suffix}"
        trace = directory / f"trace_{name}.json"
        partial = trace.with_name(f".{trace.name}.partial")
        profiler.export_chrome_trace(str(partial))
        os.replace(partial, trace)
        table = profiler.key_averages().table(sort_by=self._sort_by, row_limit=self.config.row_limit)
        atomic_write_text(directory / f"key_averages_{name}.txt", table + "\n")
        log.info("profiler: wrote %s and %s", trace, trace.with_name(f"key_averages_{name}.txt"))
