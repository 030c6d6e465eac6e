"""What a plugin may reach on the ``trainer`` hook argument: the :class:`Run` protocol.

Every event passes the run as ``trainer``. Its type, for a plugin author, is :class:`Run`: the services,
facts and controls listed here are the contract; anything else the object has is the trainer's own
business and may change without notice. ``mypy`` holds a plugin annotated with ``Run`` to it::

    from noether_core import Run, hookimpl

    @hookimpl
    def at_eval(trainer: Run, counter) -> None:
        trainer.writer.add_scalar("my/metric", 1.0)

:class:`Entry` is how a plugin sees an entry of the run: its own children (EmaCallback's
``eval_callbacks``), or the other entries (to find a progress bar to draw into).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from noether_core.config.schema import CallbackConfig, RunConfig
from noether_core.io.checkpoints import CheckpointWriter
from noether_core.io.log_writer import LogWriter
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import Tracker
from noether_core.plugins.scheduling import Interval, IntervalScheduler
from noether_core.run.data import DataContainer
from noether_core.run.distributed import DistInfo
from noether_core.run.train_step import TrainStep


@runtime_checkable
class Entry(Protocol):
    """One entry of a run's ``callbacks`` (or a default the trainer added), as a plugin sees it."""

    @property
    def key(self) -> str:
        """Its name: state, logs and timings go under it (``name``, else ``id``, else ``kind``; unnamed
        entries of one kind get names that tell them apart, ``OfflineLossCallback[val]``)."""

    @property
    def kind(self) -> str:
        """The kind of its plugin."""

    @property
    def config(self) -> CallbackConfig:
        """Its validated config (its plugin's ``Config``)."""

    @property
    def interval(self) -> Interval | None:
        """When its ``at_eval`` is due; ``None`` for an entry without ``at_eval``."""

    @property
    def hooks(self) -> tuple[str, ...]:
        """The events its plugin implements."""

    @property
    def is_default(self) -> bool:
        """Whether the trainer added it (``trainer.add_default_callbacks``)."""

    @property
    def instance(self) -> object:
        """Its plugin object (an instance of a class plugin, a holder of a module's functions)."""


@runtime_checkable
class Run(Protocol):
    """The run, as every event hands it to a plugin (the ``trainer`` argument). See the module docs."""

    # ------------------------------------------------------------------------ what is being trained

    @property
    def config(self) -> RunConfig:
        """The run's validated config."""

    @property
    def model(self) -> nn.Module:
        """The unwrapped model (never the DDP wrapper); also the ``model`` hook argument."""

    @property
    def model_name(self) -> str:
        """The model's name in checkpoint files (``model.name`` of the config)."""

    def named_models(self) -> list[tuple[str, nn.Module]]:
        """The model's parts that get checkpoint files of their own, with their names: the model itself,
        or each part of a composite (``classifier.encoder``)."""

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer; ``None`` when everything is frozen. Its parameter groups carry a ``name``: one
        group per trainable part (named after it), one per ``optimizer.param_groups`` entry
        (``{model}/{name}``) and the ``{group}/no_decay`` companions of ``no_weight_decay_on``."""

    @property
    def train_step(self) -> TrainStep:
        """The train step, ``step(model, batch) -> StepOutput | Tensor`` (evaluators reuse it)."""

    @property
    def device(self) -> torch.device:
        """Where the model computes on this rank."""

    @property
    def micro_batch_size(self) -> int:
        """Samples per forward pass on one rank: ``batch_size / (world_size * accumulation_steps)``."""

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per update."""

    @property
    def skip_nan_loss(self) -> bool:
        """Whether updates with a non-finite loss are skipped instead of failing the run."""

    @property
    def grad_scale(self) -> torch.Tensor | None:
        """The factor the gradients carry between backward and the optimizer step (fp16 loss scaling),
        a device tensor updated in place by each step (clone it to keep it); ``None`` without loss
        scaling. Divide a norm read in ``after_accumulation`` by it to get the true one."""

    # ------------------------------------------------------------------------ services

    @property
    def writer(self) -> LogWriter:
        """This step's metrics: ``add_scalar(key, value)``, and what earlier entries logged (``get``)."""

    @property
    def checkpoints(self) -> CheckpointWriter:
        """The run's ``checkpoints/``, written as sets that become visible as a whole
        (``with trainer.checkpoints.checkpoint_set(tag) as parts: ...``; rank 0 only)."""

    @property
    def metrics(self) -> MetricProperties:
        """Which way is better for each metric key."""

    @property
    def data(self) -> DataContainer:
        """The run's datasets by name, and evaluation loaders over them."""

    @property
    def scheduler(self) -> IntervalScheduler:
        """The run's one scheduler: when an interval is due."""

    @property
    def trackers(self) -> Sequence[Tracker]:
        """Where flushed records go (rank 0; empty elsewhere)."""

    @property
    def tracker(self) -> Tracker | None:
        """The on-disk tracker (``metrics.jsonl``, ``summary.yaml``); ``None`` off rank 0."""

    @property
    def paths(self) -> RunPaths:
        """The run directory and the names of its files."""

    @property
    def resumed_from(self) -> RunPaths | None:
        """The run this one resumed (its checkpoints were loaded), ``None`` for a fresh run."""

    # ------------------------------------------------------------------------ processes

    @property
    def dist(self) -> DistInfo:
        """Rank, world size and local rank (for :func:`~noether_core.mean_over_ranks`)."""

    @property
    def rank(self) -> int:
        """This process's rank, 0 without torchrun."""

    @property
    def world_size(self) -> int:
        """Processes in the run, 1 without torchrun."""

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files."""

    # ------------------------------------------------------------------------ entries

    @property
    def entries(self) -> Sequence[Entry]:
        """Every entry of the run, in dispatch order (children after their owner)."""

    def children(self, config: CallbackConfig) -> Sequence[Entry]:
        """The child entries of the entry whose config is ``config`` (the ``config`` hook argument):
        entries nested in its config, which the trainer schedules but never calls; their owner does,
        with :meth:`dispatch`."""

    def dispatch(self, hook: str, entries: Sequence[Entry], **arguments: Any) -> None:
        """Call event ``hook`` on those of ``entries`` (children of the caller) that implement it, in
        order, timed and blamed like the trainer's own dispatch. ``arguments`` are the event's own
        (``losses``, ``status``...); the core ones are added. For ``at_eval`` without ``interval``,
        each entry gets the unit of its own interval."""

    # ------------------------------------------------------------------------ control

    def request_stop(self, reason: str, *, resumable: bool = False) -> None:
        """End the run after this step with status ``stopped`` (exit status 0); ``reason`` goes to
        ``summary.yaml`` as ``stop_reason``.

        By default the run is over (early stopping): a checkpoint taken from now on remembers the stop, so
        a resume from it ends at once. With ``resumable`` it is paused, not over (a time limit): the
        trainer saves a resumable ``latest`` and skips the final evaluations (``eval_at_end``), and
        ``noether train --resume`` goes on training. A stop that is not resumable, asked for in the same
        step, wins. Every rank stops at the same update."""

    @property
    def stop_requested(self) -> bool:
        """Whether some entry asked for a stop in this run."""

    def after_this_step(self, action: Callable[[], object]) -> None:
        """Run ``action`` once every entry has had this update's events, before the step's metrics are
        flushed: a checkpoint taken there holds every entry's state after this update. Asked in
        ``before_training``, it runs after the first update's events (what it logs is in that
        update's record)."""

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
        """Write checkpoint ``tag`` (weights, optimizer, trainer state) atomically; every rank calls it,
        rank 0 writes. ``model_names`` restricts the parts whose weights are written; frozen parts are
        skipped unless ``include_frozen``. Returns the files written."""


__all__ = ["Entry", "Run"]
