"""The events a noether run emits, as pluggy hook specifications.

A plugin implements any of these by name, marked with :data:`noether_core.hookimpl`, and takes any
subset of the arguments by name. This is where each event fires; the trainer's code follows it line
by line (``noether_core/run/trainer.py``), and the documentation shows this very text::

    setup: plan the run (datasets, geometry, entries, scheduler); build the model, the optimizer and
           one plugin object per entry; resume if asked (weights, optimizer, counter, entry states)
    before_training()                                     # once, in eval mode
    flush
    while update < total_updates:
        set this update's learning rate and weight decay from the schedules
        for accumulation_step in range(accumulation_steps):
            batch = next(train_loader)
            losses, outputs = train_step(model, batch)    # forward under autocast; backward
            after_accumulation(batch, losses, outputs,
                               accumulation_step, accumulation_steps)
        optimizer step: unscale, clip, step (skipped for a non-finite loss with skip_nan_loss)
        counter advances to update + 1
        after_update(losses, times, grad_norm)            # every update, never gated
        if this update ended an epoch:
            after_epoch()                                 # every epoch, never gated
        for each entry whose interval is due at this update, in list order:
            at_eval(interval="epoch" | "update" | "sample")
        run the actions entries deferred with trainer.after_this_step(...)
        flush this step's metrics to the trackers        # one record
        if a stop was requested, trainer.max_time passed, or SIGTERM/SIGINT arrived, on any rank:
            leave the loop
    if no signal arrived and the stop is no pause (trainer.max_time, request_stop(resumable=True)):
        at_eval() once more for entries with eval_at_end whose interval missed the last update; flush
    if a signal arrived, or the stop is a pause: save a resumable checkpoint ("latest")
    after_training(status)                                # always, last; every entry, even if some fail
    flush; report the plugins' time; close the trackers

    noether eval RUN_DIR: load the checkpoint's weights; at_eval(interval="eval") on every entry of
                          the run's callbacks that implements it; flush; close the trackers

Rules that hold for every event:

* Every event passes the **core arguments** (:data:`CORE_ARGUMENTS`) ``trainer``, ``model``,
  ``counter``, ``config`` and ``state``, plus its own. ``trainer`` is the run, typed for plugins as
  :class:`~noether_core.Run`. ``config`` is the validated config of the entry being called (an instance
  of its plugin's ``Config``, a class's or a module's, else :class:`~noether_core.CallbackConfig`), and
  ``state`` its own checkpointed ``dict``: this is how one module of ``@hookimpl`` functions serves two
  entries with different settings, and keeps what it counts across a resume.
* A plugin may also wrap an event: ``@hookimpl(wrapper=True)`` on a generator that yields once runs
  around the whole dispatch of that event at that step (``result = yield`` raises what an entry
  raised). Wrappers run in list order, the first outermost; they are how a tracing or profiling
  plugin is written. ``tryfirst``/``trylast`` are refused (the order is the list's), and so is the
  old-style ``hookwrapper``; ``specname`` names the event an implementation of another name serves.
* Entries are called one at a time, in the order of the config's ``callbacks`` list, with the trainer's
  default producers of metrics (online loss, LR) before them. Return values are ignored.
* Everything except the training forward/backward runs under :func:`torch.no_grad`. Values that need a
  device-to-host sync (``.item()``) should be accumulated on the device and synced when logged.
* Metrics go through ``trainer.writer.add_scalar(key, value)``; ``trainer.writer`` also holds the
  values logged earlier in the same step, which is how consumers (best checkpoint, early stopping) read
  producers.
* A plugin asks the run to stop with ``trainer.request_stop(reason)``; the run ends after this step with
  ``status="stopped"`` and exit status 0 (``resumable=True``: a pause, with a resumable ``latest``).
* Hook names are checked when a plugin is registered: a misspelled ``@hookimpl`` or an unknown argument
  name is an error naming the plugin, not silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from noether_core.plugins.markers import hookspec

if TYPE_CHECKING:
    import torch

    from noether_core.config.schema import CallbackConfig
    from noether_core.run.counter import Counter
    from noether_core.run.protocol import Run

EvalInterval = Literal["epoch", "update", "sample", "eval"]
RunStatus = Literal["completed", "stopped", "interrupted", "failed"]

#: The arguments every event passes, the only place they are named: the run, the unwrapped model, the
#: read-only position, and the called entry's own config and state.
CORE_ARGUMENTS = ("trainer", "model", "counter", "config", "state")
#: The core arguments that are each entry's own (the others are the same for every entry of a run).
ENTRY_ARGUMENTS = ("config", "state")


@hookspec
def before_training(
    trainer: Run, model: torch.nn.Module, counter: Counter, config: CallbackConfig, state: dict[str, Any]
) -> None:
    """Called once, after setup and resume, before the first batch is read.

    ``counter`` is at update 0 for a fresh run and at the resumed position otherwise, so a plugin can tell
    the two apart with ``counter.update > 0``. Use it for one-off work that needs the built model and
    data: counting parameters, writing summaries, estimating sizes, allocating buffers. A plugin that
    keeps files of its own reads them back here (``trainer.resumed_from`` is the resumed run's paths, or
    ``None``).

    Not called by ``noether eval``.

    :param trainer: the run (:class:`~noether_core.Run`); services hang off it (``writer``,
        ``checkpoints``, ``trackers``, ``paths``, ``data``, ``metrics``, ``scheduler``, ``entries``).
    :param model: the unwrapped model (never the DDP or compiled wrapper).
    :param counter: read-only position of the run.
    :param config: this entry's validated config.
    :param state: this entry's own ``dict``, the same object at every event of the run: what a plugin
        keeps in it is saved in the trainer checkpoint under the entry's name and is back on resume
        (before this event). How a module of functions keeps state (``state["n"] = state.get("n", 0) +
        1``). Values must be checkpointable (tensors, numbers, strings, ``None`` and lists, tuples and
        dicts of them): anything else is refused, naming the entry and the key, right after
        ``before_training``.
    """


@hookspec
def after_accumulation(
    trainer: Run,
    model: torch.nn.Module,
    counter: Counter,
    config: CallbackConfig,
    state: dict[str, Any],
    batch: Any,
    losses: Mapping[str, torch.Tensor],
    outputs: Mapping[str, Any] | None,
    accumulation_step: int,
    accumulation_steps: int,
) -> None:
    """Called after every micro-batch's backward pass, before the optimizer step of its update.

    Fires ``accumulation_steps`` times per update, with the model in train mode. ``counter`` has not
    advanced yet: during the first update of a run it reads update 0.

    :param batch: the micro-batch as the model saw it (on the device).
    :param losses: detached losses of this micro-batch: ``"total"`` plus every named loss the train step
        returned. Tensors on the device; do not call ``.item()`` here on a hot path.
    :param outputs: extra outputs the train step returned, or ``None``.
    :param accumulation_step: index of this micro-batch within the update, ``0 .. accumulation_steps-1``.
    :param accumulation_steps: micro-batches per update.
    """


@hookspec
def after_update(
    trainer: Run,
    model: torch.nn.Module,
    counter: Counter,
    config: CallbackConfig,
    state: dict[str, Any],
    losses: Mapping[str, torch.Tensor],
    times: Mapping[str, float],
    grad_norm: torch.Tensor | None,
) -> None:
    """Called after every optimizer update, with ``counter`` already advanced. Never gated by an interval.

    Fires also for updates whose optimizer step was skipped because of a NaN loss (see
    ``trainer.skip_nan_loss``). Keep it cheap: it runs on every update.

    :param losses: detached losses of the update, averaged over its micro-batches (device tensors).
    :param times: seconds spent in this update, by phase: ``data_wait``, ``forward``, ``backward``,
        ``update`` (optimizer step).
    :param grad_norm: total gradient norm before clipping (device tensor) when ``trainer.clip_grad_norm``
        is set; ``None`` without it (clipping by value alone computes no norm) and for a skipped update.
    """


@hookspec
def after_epoch(
    trainer: Run, model: torch.nn.Module, counter: Counter, config: CallbackConfig, state: dict[str, Any]
) -> None:
    """Called after the last update of every epoch, after ``after_update``. Never gated.

    ``counter.epoch`` already counts the finished epoch. A run whose end falls part-way through an epoch
    does not call it for that last partial epoch.
    """


@hookspec
def at_eval(
    trainer: Run,
    model: torch.nn.Module,
    counter: Counter,
    config: CallbackConfig,
    state: dict[str, Any],
    interval: EvalInterval,
) -> None:
    """The scheduled event: called when this entry's interval is due, and in evaluation-only runs.

    The trainer's :class:`~noether_core.IntervalScheduler` decides; a plugin never re-checks "is it my
    turn". Due entries are called after ``after_update`` (and ``after_epoch``) of the same update, in list
    order, so producers listed earlier have logged their values for this step already. The model is in
    eval mode; it goes back to train mode afterwards. A plugin that never runs the model may say so
    with ``needs_eval_mode = False`` on its class or module: when only such entries are due (and for
    ``after_epoch``, only such entries listen), the model stays in train mode and the switch is saved.

    :param interval: which trigger fired: ``"epoch"``, ``"update"`` or ``"sample"`` (the unit of this
        entry's interval) during training, ``"eval"`` under ``noether eval``. Plugins that only make sense
        during training (checkpointing, early stopping) return at once for ``"eval"``.
    """


@hookspec
def after_training(
    trainer: Run,
    model: torch.nn.Module,
    counter: Counter,
    config: CallbackConfig,
    state: dict[str, Any],
    status: RunStatus,
) -> None:
    """Called once, last, whatever the ending. Values logged here are flushed before the run closes.

    :param status: ``"completed"`` (the configured end was reached), ``"stopped"`` (a plugin requested a
        stop, e.g. early stopping, or ``trainer.max_time`` passed), ``"interrupted"`` (SIGTERM/SIGINT; a
        resumable checkpoint was saved before this call) or ``"failed"`` (an exception is about to be
        re-raised; save nothing you would trust).

    An exception raised here fails the run (``summary.yaml`` and the exit status say ``failed``), but
    every other entry's ``after_training`` still runs. Signals that arrive now change nothing; after
    one, ``trainer.stop_timeout`` bounds how long this may take.
    """


HOOK_NAMES = (
    "before_training",
    "after_accumulation",
    "after_update",
    "after_epoch",
    "at_eval",
    "after_training",
)

__all__ = [
    "CORE_ARGUMENTS",
    "HOOK_NAMES",
    "EvalInterval",
    "RunStatus",
    "after_accumulation",
    "after_epoch",
    "after_training",
    "after_update",
    "at_eval",
    "before_training",
]
