"""The trainer: the run object plugins see as ``trainer`` (typed for them as :class:`~noether_core.Run`),
and the loop that emits the events.

The loop is told once, in :mod:`noether_core.plugins.hookspecs`; the methods below are its phases in
that order: :meth:`Trainer.fit` calls ``before_training``, then :meth:`~Trainer._update` and
:meth:`~Trainer._tick` for every update, :meth:`~Trainer._final_evaluations`, and :meth:`~Trainer._finish`
with ``after_training``. Everything the trainer needs from the config was derived once, in the
:class:`~noether_core.run.plan.RunPlan` it is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from noether_core.config.durations import format_duration
from noether_core.config.schema import CallbackConfig
from noether_core.errors import EXIT_BY_STATUS
from noether_core.io.checkpoints import CheckpointWriter
from noether_core.io.log_writer import LogWriter
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import Tracker
from noether_core.plugins.dispatch import Slot
from noether_core.plugins.hookspecs import HOOK_NAMES, EvalInterval, RunStatus
from noether_core.plugins.timing import report_durations
from noether_core.run.building import build_model, build_train_step
from noether_core.run.counter import Counter, advance
from noether_core.run.data import DataContainer, TrainBatches, micro_batch_size
from noether_core.run.device import NO_CONTEXT, autocast, place_run, to_device
from noether_core.run.distributed import any_rank, any_rank_each, barrier, for_training
from noether_core.run.metric_dependencies import metric_properties
from noether_core.run.optim import apply_schedules, build_lr_scheduler, build_optimizer, optimizer_step
from noether_core.run.plan import RunPlan
from noether_core.run.protocol import Entry, Run
from noether_core.run.signals import Signals
from noether_core.run.state import RunState
from noether_core.run.teardown import Teardown
from noether_core.run.train_step import StepOutput, as_step_output

log = logging.getLogger("noether")


class Trainer:
    """One run: build it from a :class:`RunPlan` and a run directory, then call :meth:`fit` (or
    :meth:`evaluate`). With ``resume_tag``, the checkpoint of that tag in ``resume_paths`` (default:
    ``paths``) is loaded before anything else happens; with ``resume_paths`` alone, its newest
    resumable set."""

    def __init__(
        self,
        plan: RunPlan,
        paths: RunPaths,
        *,
        trackers: Sequence[Tracker] = (),
        metrics: MetricProperties | None = None,
        resume_tag: str | None = None,
        resume_paths: RunPaths | None = None,
    ) -> None:
        self.plan = plan
        self.config = config = plan.config
        tcfg = config.trainer
        self.paths = paths
        self.device, self.dist = place_run(tcfg)

        geometry = plan.geometry
        self.updates_per_epoch = geometry.updates_per_epoch
        self.accumulation_steps = tcfg.accumulation_steps
        self.micro_batch_size = micro_batch_size(tcfg.batch_size, self.dist, self.accumulation_steps)
        self.counter = Counter(
            end=geometry.end,
            updates_per_epoch=geometry.updates_per_epoch,
            effective_batch_size=geometry.effective_batch_size,
        )
        self.scheduler = plan.scheduler
        self.data = DataContainer(plan.datasets, config.datasets, self.dist, self.device)

        self.model_name = config.model.name
        self.model: nn.Module = (plan.model if plan.model is not None else build_model(config.model)).to(
            self.device
        )
        self.train_model = for_training(self.model, self.dist, self.device)
        self.optimizer = build_optimizer(self.model, self.model_name, config.optimizer)
        #: the ``torch.optim.lr_scheduler`` scheduler of ``optimizer.lr_schedule``, if it names one
        self.lr_scheduler = build_lr_scheduler(self.optimizer, config.optimizer, geometry.updates_per_epoch)
        self.train_step = build_train_step(config)
        self.precision = tcfg.precision
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=tcfg.precision == "fp16")
        self.skip_nan_loss = tcfg.skip_nan_loss

        self.metrics = metrics or metric_properties(plan)
        self.trackers: list[Tracker] = list(trackers) if self.dist.is_main else []
        self.writer = LogWriter(self.counter, self.trackers)
        self.checkpoints = CheckpointWriter(paths, paths.run_id)
        # the records up to a checkpoint reach the disk before it commits: a resume from it drops only
        # records of later updates, and a kill right after it loses none
        self.checkpoints.before_commit = self._flush_metrics
        self.plugins = plan.plugin_manager()
        self.plugins.owner_sink = self.writer
        self.state = RunState(
            model=self.model,
            model_name=self.model_name,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            grad_scaler=self.grad_scaler,
            counter=self.counter,
            plugins=self.plugins,
            geometry={
                "updates_per_epoch": self.updates_per_epoch,
                "effective_batch_size": geometry.effective_batch_size,
                "accumulation_steps": self.accumulation_steps,
                "world_size": self.dist.world_size,
            },
            dist=self.dist,
            seed=tcfg.seed,
        )
        self.resumed_from: RunPaths | None = None
        #: the tag resumed from (``resume_paths`` without ``resume_tag``: the newest resumable set)
        self.resume_tag: str | None = None
        if resume_tag is not None or resume_paths is not None:
            self.resumed_from = resume_paths or paths
            self.resume_tag = self.state.resume(self.resumed_from, resume_tag)

        self._signals = Signals(tcfg.stop_timeout, self._stop_timed_out)
        # every set, also one a plugin writes through trainer.checkpoints, holds a second SIGINT back
        self.checkpoints.guard = self._signals.writing
        # the status the trackers were closed with (what summary.yaml says), once they are
        self._closed_with: RunStatus | None = None
        self._train_seconds = 0.0
        #: ``trainer.max_time``: per process, counted from the start of :meth:`fit`
        self._max_seconds = tcfg.max_seconds
        self._deadline: float | None = None
        self._batches: TrainBatches | None = None
        # the core arguments never change during a run: the per-update events are compiled for them
        self._core: dict[str, Any] = {"trainer": self, "model": self.model, "counter": self.counter}
        self.plugins.bind(self._core)
        # work only plugins consume (loss bookkeeping, eval mode, no_grad blocks) is skipped when none
        # listens
        self._listens = {
            hook: self.plugins.has_listeners(hook) for hook in ("after_accumulation", "after_update")
        }
        self._epoch_listeners = self.plugins.has_listeners("after_epoch")
        self._epoch_needs_eval_mode = self.plugins.needs_eval_mode(self.plugins.listeners("after_epoch"))
        # the built-in schedules set the groups' values before every update (a torch scheduler steps)
        lr_schedule = config.optimizer.lr_schedule
        self._scheduled_optimizer = self.optimizer is not None and (
            (lr_schedule is not None and lr_schedule.builtin) or config.optimizer.wd_schedule is not None
        )
        self._scaling = self.grad_scaler.is_enabled()
        self._is_ddp = isinstance(self.train_model, nn.parallel.DistributedDataParallel)
        self._flag_group: Any = None
        if self.dist.is_distributed and self.device.type != "cpu":
            self._flag_group = torch.distributed.new_group(backend="gloo")
        self._cursor = self.scheduler.cursor(self.plugins.ticking(), self.counter.update)

    # ------------------------------------------------------------------------------ what plugins reach

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def tracker(self) -> Tracker | None:
        """The on-disk tracker (``metrics.jsonl``, ``summary.yaml``); ``None`` off rank 0."""
        return self.trackers[0] if self.trackers else None

    def attach_trackers(self, trackers: Sequence[Tracker]) -> None:
        """Send this run's metrics to ``trackers`` (already started) from now on (rank 0 only)."""
        if self.is_main:
            self.trackers = list(trackers)
            self.writer.sinks = list(trackers)

    @property
    def entries(self) -> Sequence[Entry]:
        return list(self.plugins.slots)

    def children(self, config: CallbackConfig) -> Sequence[Entry]:
        return self.plugins.children_of(config)

    def dispatch(self, hook: str, entries: Sequence[Entry], **arguments: Any) -> None:
        if hook not in HOOK_NAMES:
            raise ValueError(f"no event {hook!r}; the events are {', '.join(HOOK_NAMES)}")
        slots = [cast(Slot, e) for e in entries]  # the entries plugins get are this manager's slots
        if hook == "at_eval":
            self.plugins.at_eval(self._core, slots, arguments.get("interval"))
        else:
            self.plugins.call_slots(hook, slots, self._core, **arguments)

    def request_stop(self, reason: str, *, resumable: bool = False) -> None:
        state = self.state
        # a stop that ends the run outranks a pause asked for in the same step
        if state.stop_reason is None or (state.stop_resumable and not resumable):
            log.info("stop requested: %s", reason)
            state.stop_reason = reason
            state.stop_resumable = resumable

    @property
    def stop_requested(self) -> bool:
        return self.state.stop_reason is not None

    def after_this_step(self, action: Callable[[], object]) -> None:
        self.plugins.defer(action)

    def named_models(self) -> list[tuple[str, nn.Module]]:
        return self.state.named_models()

    def save_checkpoint(
        self,
        tag: str,
        *,
        weights: bool = True,
        optim: bool = True,
        trainer_state: bool = True,
        model_names: Sequence[str] | None = None,
        include_frozen: bool = True,
    ) -> list[Path]:
        # a second SIGINT waits until the set is complete, and so does the stop watchdog
        with self._signals.writing():
            return self.state.save(
                self.checkpoints,
                tag,
                is_main=self.is_main,
                weights=weights,
                optim=optim,
                trainer_state=trainer_state,
                model_names=model_names,
                include_frozen=include_frozen,
            )

    def _flush_metrics(self) -> None:
        """This step's values to the trackers, and the trackers' buffers to the disk."""
        self.writer.flush()
        for tracker in self.trackers:
            flush = getattr(tracker, "flush", None)
            if callable(flush):
                flush()

    def load_weights(self, paths: RunPaths, tag: str) -> None:
        """Load the weights of checkpoint ``tag`` of ``paths`` (``noether eval``) and take its position."""
        self.state.load_weights(paths, tag)

    # ------------------------------------------------------------------------------------ the loop

    def fit(self) -> RunStatus:
        """Train until the configured end, a stop request or a signal; always runs ``after_training``."""
        status: RunStatus = "failed"
        error: BaseException | None = None
        with self._signals:
            try:
                if self._max_seconds is not None:
                    self._deadline = time.monotonic() + self._max_seconds
                self.model.eval()
                with torch.no_grad():
                    self.plugins.before_training(self._core)
                # state a checkpoint cannot hold fails now, blamed on its entry, not at the first save
                self.state.entry_states("before_training")
                self.writer.flush()
                self.train_model.train()
                started = time.perf_counter()
                try:
                    if self.state.stop_reason is not None:  # resumed from the update where it stopped
                        log.info(
                            "the run had stopped at update %d: %s",
                            self.counter.update,
                            self.state.stop_reason,
                        )
                    else:
                        for batches in self._train_batches().updates(self.counter):
                            self._update(batches)
                            self._tick()
                            if self._leave_loop():
                                break
                    if self.state.stop_resumable and self.counter.is_finished:
                        # paused at the very end: nothing is left to resume
                        self.state.stop_reason, self.state.stop_resumable = None, False
                    if self._signals.received is None and not self.state.stop_resumable:
                        self._final_evaluations()
                finally:
                    self._train_seconds = time.perf_counter() - started
                if any_rank(self._signals.received is not None, self.dist, self.device):
                    self._signals.saving()
                    self.save_checkpoint("latest")
                    # no rank may exit before rank 0 has written it: torchrun ends the others at the
                    # first exit status that is not 0
                    barrier(self.dist)
                    status = "interrupted"
                elif self.state.stop_reason is not None:
                    if self.state.stop_resumable:
                        self.save_checkpoint("latest")
                        barrier(self.dist)  # as for a signal: rank 0 has written it before any rank exits
                        log.info(
                            "stopped at update %d (%s); a resumable checkpoint 'latest' is saved: "
                            "noether train --resume %s",
                            self.counter.update,
                            self.state.stop_reason,
                            self.paths.root,
                        )
                    status = "stopped"
                else:
                    status = "completed"
            except BaseException as exc:
                error = exc
                raise
            finally:
                # with ``error`` on its way out, no teardown error may take its place
                self._finish(status, Teardown(error))
        return status

    def _train_batches(self) -> TrainBatches:
        if self._batches is None:
            self._batches = TrainBatches(
                self.data["train"],
                micro_batch_size=self.micro_batch_size,
                accumulation_steps=self.accumulation_steps,
                updates_per_epoch=self.updates_per_epoch,
                seed=self.config.trainer.seed,
                dist_info=self.dist,
                options=self.data.options("train"),
            )
        return self._batches

    def _update(self, batches: list[tuple[Any, float]]) -> None:
        """One optimizer update over ``accumulation_steps`` micro-batches, then the ``after_update`` event."""
        clock = time.perf_counter
        steps = self.accumulation_steps
        to_accumulation = self._listens["after_accumulation"]
        to_update = self._listens["after_update"]
        times = {"data_wait": 0.0, "forward": 0.0, "backward": 0.0, "update": 0.0}
        if self._scheduled_optimizer and self.optimizer is not None:
            apply_schedules(
                self.optimizer, self.config.optimizer, self.counter.update, self.counter.total_updates
            )
        if self.lr_scheduler is not None:
            self.lr_scheduler.before_update(self.counter.update)
        loss_sums: dict[str, torch.Tensor] = {}
        skip = False
        for step, (raw, waited) in enumerate(batches):
            times["data_wait"] += waited
            batch = to_device(raw, self.device)
            start = clock()
            sync_context = (
                self.train_model.no_sync()  # type: ignore[operator]
                if self._is_ddp and step < steps - 1
                else NO_CONTEXT
            )
            with sync_context:
                with autocast(self.device, self.precision):
                    out: StepOutput = as_step_output(self.train_step(self.train_model, batch))
                forward_done = clock()
                times["forward"] += forward_done - start
                if self.skip_nan_loss and not skip and self._non_finite(out.total):
                    self.state.note_nan(self.counter.update + 1, self.config.trainer.skip_nan_loss_max_count)
                    skip = True
                if not skip and self.optimizer is not None:
                    # dividing by 1 changes no bit but adds an autograd node to forward and backward
                    loss = out.total / steps if steps > 1 else out.total
                    # a disabled scaler's scale() returns the loss itself: no call per micro-batch for it
                    (self.grad_scaler.scale(loss) if self._scaling else loss).backward()  # type: ignore[no-untyped-call]
                times["backward"] += clock() - forward_done
            if to_accumulation or to_update:
                losses = {"total": out.total.detach()}
                if out.losses:  # most train steps name no parts: no comprehension to build
                    losses.update({k: v.detach() for k, v in out.losses.items()})
                if to_update:
                    if steps == 1:
                        loss_sums = losses
                    else:
                        for key, value in losses.items():
                            loss_sums[key] = loss_sums[key] + value if key in loss_sums else value
                if to_accumulation:
                    self._without_grad(
                        self.plugins.after_accumulation, batch, losses, out.outputs, step, steps
                    )
        start = clock()
        grad_norm = None
        if self.optimizer is not None:
            tcfg = self.config.trainer
            grad_norm = optimizer_step(
                self.optimizer,
                self.grad_scaler,
                clip_grad_norm=tcfg.clip_grad_norm,
                clip_grad_value=tcfg.clip_grad_value,
                skip=skip,
            )
        times["update"] = clock() - start
        if self.skip_nan_loss and not skip:
            self.state.note_finite()
        advance(self.counter)
        if to_update:
            mean_losses = {k: v / steps for k, v in loss_sums.items()} if steps > 1 else loss_sums
            self._without_grad(self.plugins.after_update, mean_losses, times, grad_norm)

    def _non_finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is NaN or infinite on this rank or, when distributed, on any: every rank
        skips the same update (a rank skipping its backward alone would leave the others waiting in
        DistributedDataParallel's gradient reduction)."""
        found = not bool(torch.isfinite(loss).all())
        if not self.dist.is_distributed:
            return found
        return any_rank_each((found,), self.dist, self._flag_group)[0]

    @property
    def grad_scale(self) -> torch.Tensor | None:
        """See :attr:`noether_core.Run.grad_scale`."""
        return self.grad_scaler._scale if self.grad_scaler.is_enabled() else None

    def _without_grad(self, event: Callable[..., None], *args: Any) -> None:
        """Dispatch a per-update ``event`` with autograd off. The grad mode is switched directly:
        ``torch.no_grad()`` builds two context objects, 1-2 µs a use, and this runs on every update."""
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            event(self._core, *args)
        finally:
            torch._C._set_grad_enabled(grad_mode)

    def _tick(self) -> None:
        """After an update: ``after_epoch`` at an epoch's end, ``at_eval`` for the due entries, the
        deferred actions, and the flush of this step's metrics."""
        epoch_end = self._epoch_listeners and self.counter.is_epoch_end
        due = self._cursor.due(self.counter.update)
        tick = self.plugins.tick(due) if due else None
        if epoch_end or tick is not None:
            # the model goes to eval mode (and back) only if an entry called now may run it
            eval_mode = (epoch_end and self._epoch_needs_eval_mode) or (
                tick is not None and tick.needs_eval_mode
            )
            if eval_mode:
                self.model.eval()
            # autograd off as in _without_grad (torch.no_grad() costs more than the switch); the step's
            # checkpoint sets commit together, after the step's metrics reach the disk
            grad_mode = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                with self.checkpoints.deferred_commit():
                    if epoch_end:
                        self.plugins.after_epoch(self._core)
                    if tick is not None:
                        self.plugins.at_eval_tick(self._core, tick)
                    self.plugins.run_deferred()
            finally:
                torch._C._set_grad_enabled(grad_mode)
            if eval_mode:
                self.train_model.train()
        elif self.plugins.has_deferred:
            with torch.no_grad(), self.checkpoints.deferred_commit():
                self.plugins.run_deferred()
        self.writer.flush()

    def _leave_loop(self) -> bool:
        """Whether to stop after this update. Ranks agree: a signal, a stop request or the time limit
        on any rank stops every rank at the same update (else they would wait on each other's
        collectives), and the stop is a pause (resumable) only when no rank's stop ends the run."""
        state = self.state
        if self._deadline is not None and state.stop_reason is None and time.monotonic() >= self._deadline:
            self._time_is_up()
        signalled, stopping = self._signals.received is not None, state.stop_reason is not None
        if not self.dist.is_distributed:  # the common case, on every update: no collective to build
            return signalled or stopping
        pausing = stopping and state.stop_resumable
        any_signal, any_stop, any_pause = any_rank_each(
            (signalled, stopping and not pausing, pausing), self.dist, self._flag_group
        )
        if any_signal and not signalled:
            self._signals.received = "a signal on another rank"
        if any_stop and (not stopping or pausing):
            state.stop_reason, state.stop_resumable = "a stop requested on another rank", False
        elif any_pause and not stopping:
            state.stop_reason = (
                f"time limit: trainer.max_time={self.config.trainer.max_time} reached on another rank at "
                f"update {self.counter.update}"
                if self._deadline is not None
                else f"a resumable stop requested on another rank at update {self.counter.update}"
            )
            state.stop_resumable = True
        return any_signal or any_stop or any_pause

    def _time_is_up(self) -> None:
        """``trainer.max_time`` has passed: pause the run, unless its last update is done anyway."""
        if self.counter.is_finished:
            return
        max_time = self.config.trainer.max_time
        assert self._max_seconds is not None
        self.request_stop(
            f"time limit: trainer.max_time={max_time} ({format_duration(self._max_seconds)}) reached "
            f"at update {self.counter.update}",
            resumable=True,
        )

    def _final_evaluations(self) -> None:
        """``at_eval`` once more for entries with ``eval_at_end`` whose interval missed the last update."""
        update = self.counter.update
        final = [
            s
            for s in self.plugins.scheduled
            if s.config.eval_at_end
            and s.interval is not None
            and not self.scheduler.is_due(s.interval, update)
        ]
        if final:
            self.model.eval()
            with torch.no_grad(), self.checkpoints.deferred_commit():
                self.plugins.at_eval(self._core, final)
                self.plugins.run_deferred()
            self.writer.flush()

    def _finish(self, status: RunStatus, teardown: Teardown) -> None:
        """``after_training``, the last weights, the last metrics, the trackers closed: every step runs,
        and the first error is the one raised (none if the run failed already)."""
        self._signals.ending()
        self.model.eval()
        with torch.no_grad(), self.checkpoints.deferred_commit():
            failures = self.plugins.after_training(self._core, status)
        if failures and status != "failed":
            teardown.add(failures[0])
        if status == "stopped" and self.state.stop_reason is not None:
            # summary.yaml says why a run ended early: a success (early stopping) or a divergence
            self.writer.add_summary("stop_reason", self.state.stop_reason)
        # a paused run (a time limit) is not finished: its resume saves ``last``, and a ``last`` saved now
        # would stay, since the resume leaves one it finds alone
        paused = self.state.stop_resumable
        if (
            status in ("completed", "stopped")
            and self.config.trainer.save_last
            and not failures
            and not paused
        ):
            teardown.run("saving the last weights", self._save_last)
        teardown.run("flushing the last metrics", self.writer.flush)  # e.g. a metric logged twice
        teardown.run(
            "reporting plugin durations",
            report_durations,
            self.plugins,
            self._train_seconds,
            self.trackers,
            self.config.trainer.slow_plugin_share,
        )
        # summary.yaml and the exit status tell the same: an error in the run's ending fails the run
        final: RunStatus = "failed" if teardown.first is not None else status
        self._closed_with = final
        for tracker in self.trackers:
            teardown.run("closing the trackers", tracker.close, final)
        if teardown.pending is None and teardown.first is not None and status == "interrupted":
            log.info(
                "the resumable checkpoint 'latest' was saved before: noether train --resume %s",
                self.paths.root,
            )
        teardown.raise_first()

    def _stop_timed_out(self, waited: float) -> None:
        """The stop watchdog's end of a run that did not end ``trainer.stop_timeout`` seconds after a
        signal (called from its thread): say what is still running, record the ending, end the
        process. Interrupted (130) when a resumable ``latest`` is on disk, saved at this stop or before;
        else failed (1). A checkpoint write is never cut short: the watchdog waits for it."""
        timeout = self.config.trainer.stop_timeout
        frame = sys._current_frames().get(threading.main_thread().ident or -1)
        where = f" (at {frame.f_code.co_filename}:{frame.f_lineno})" if frame is not None else ""
        running = self.plugins.running(frame)
        after = f"trainer.stop_timeout={timeout:g}s after {self._signals.first_signal or 'a signal'}"
        if running is not None:
            slot, hook = running
            problem = f"plugin {slot.key!r} ({slot.kind}) did not return from {hook} within {after}{where}"
        else:
            problem = f"the run did not end within {after}{where}"
        status = self._closed_with
        if status is None:
            status = "interrupted" if self._resumable_latest() else "failed"
            self._close_trackers_bounded(status)
        if status == "interrupted":
            outcome = f"the resumable checkpoint 'latest' stays: noether train --resume {self.paths.root}"
        elif status == "failed":
            outcome = "no resumable checkpoint was saved"
        else:
            outcome = f"the run had {status}"
        message = f"{problem}; ending the process without waiting for it ({outcome})"
        logging.getLogger("noether.file").error("%s", message)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(Exception):
            rank = f"rank {self.rank}: " if self.dist.is_distributed else ""
            print(f"noether: error: {rank}{message}", file=sys.stderr, flush=True)
        os._exit(EXIT_BY_STATUS[status])

    def _resumable_latest(self) -> bool:
        """Whether this run's directory holds a complete ``latest`` to resume from (weights of every
        part, optimizer, trainer state)."""
        files = [self.paths.checkpoint_file(name, "latest", "model") for name, _ in self.named_models()]
        files.append(self.paths.checkpoint_file(self.model_name, "latest", "trainer"))
        if self.optimizer is not None:
            files.append(self.paths.checkpoint_file(self.model_name, "latest", "optim"))
        return all(file.exists() for file in files)

    def _close_trackers_bounded(self, status: RunStatus) -> None:
        """Close the trackers with ``status`` from the watchdog, waiting a few seconds at most (one of
        them may be what hangs)."""

        def close() -> None:
            for tracker in self.trackers:
                try:
                    tracker.close(status)
                except Exception:
                    logging.getLogger("noether.file").exception("closing a tracker failed")

        closing = threading.Thread(target=close, name="noether-close-trackers", daemon=True)
        closing.start()
        closing.join(timeout=10.0)

    def _save_last(self) -> None:
        """A finished run always leaves its weights as ``last`` (``trainer.save_last``), unless an entry
        (CheckpointCallback) saved ``last`` already, maybe of chosen parts only, so ``noether eval RUN_DIR``
        works on every run."""
        if not self.is_main:
            return
        names = [name for name, _ in self.named_models()]
        if not any(self.paths.checkpoint_file(name, "last", "model").exists() for name in names):
            self.save_checkpoint("last", optim=False, trainer_state=False)

    # ------------------------------------------------------------------------------------ eval mode

    def evaluate(self, *, status: str = "completed") -> None:
        """Evaluation-only run (``noether eval``): ``at_eval(interval="eval")`` on every scheduled entry.

        ``status`` is what the trackers record as the run's status (an evaluation does not change how
        the training ended)."""
        interval: EvalInterval = "eval"
        self.model.eval()
        with torch.no_grad():
            self.plugins.at_eval(self._core, self.plugins.scheduled, interval)
        teardown = Teardown()
        teardown.run("flushing the metrics", self.writer.flush)
        for tracker in self.trackers:
            teardown.run("closing the trackers", tracker.close, status)
        teardown.raise_first()


def _a_trainer_is_a_run(trainer: Trainer) -> Run:
    """Never called: ``mypy --strict`` checks here that the trainer keeps every promise of :class:`Run`."""
    return trainer


__all__ = ["Trainer"]
