"""The trainer: the run object plugins see as ``trainer``, and the loop that emits the events.

The loop reads like the lifecycle in :mod:`noether_core.plugins.hookspecs`::

    fit():  before_training -> [ _update() -> _tick() ]* -> after_training

Services plugins use hang off the trainer: ``writer`` (metrics of this step), ``checkpoints``
(atomic checkpoint files), ``trackers``, ``metrics`` (higher/lower is better), ``paths`` (run
directory), ``data`` (datasets and evaluation loaders), ``scheduler`` (who is due when).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from noether_core.config.schema import CallbackConfig, RunConfig, child_entries
from noether_core.errors import CheckpointLoadError, ConfigError, ConfigIssue, TrainingError
from noether_core.io.checkpoints import CheckpointWriter, load_checkpoint
from noether_core.io.log_writer import LogWriter
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import Tracker
from noether_core.plugins.hookspecs import EvalInterval, RunStatus
from noether_core.plugins.manager import HOOKS, PluginFailure, PluginManager, Slot
from noether_core.plugins.registry import Plugin, PluginRegistry
from noether_core.plugins.scheduling import IntervalScheduler
from noether_core.run.building import build_dataset, build_model, build_train_step, updates_per_epoch
from noether_core.run.counter import Counter
from noether_core.run.distributed import DistInfo, any_rank, barrier, init_from_env
from noether_core.run.models import named_models
from noether_core.run.optim import apply_schedules, build_optimizer
from noether_core.run.sampling import EpochSampler
from noether_core.run.train_step import StepOutput, TrainStep, as_step_output

log = logging.getLogger("noether")

TRAINER_STATE_VERSION = 1


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite."""


class DataContainer:
    """The run's named datasets, and evaluation loaders that live as long as the run.

    An evaluation loader is built once per (dataset, batch size) and reused, so worker processes start
    once, and it never shares an iterator with training.
    """

    def __init__(self, datasets: Mapping[str, Dataset[Any]], config: RunConfig, dist_info: DistInfo) -> None:
        self.datasets = dict(datasets)
        self._config = config
        self._dist = dist_info
        self._loaders: dict[tuple[str, int], DataLoader[Any]] = {}

    def __getitem__(self, name: str) -> Dataset[Any]:
        try:
            return self.datasets[name]
        except KeyError:
            raise KeyError(f"no dataset {name!r}; the config has {', '.join(self.datasets)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.datasets

    def lengths(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self.datasets.items()}  # type: ignore[arg-type]

    def eval_loader(self, name: str, batch_size: int) -> DataLoader[Any]:
        """A sequential loader over ``name`` (this rank's share when distributed), kept for reuse."""
        key = (name, batch_size)
        loader = self._loaders.get(key)
        if loader is None:
            workers = self._config.datasets[name].num_workers
            loader = self._loaders[key] = sequential_loader(self[name], batch_size, workers, self._dist)
        return loader


def sequential_loader(
    dataset: Dataset[Any], batch_size: int, workers: int, dist_info: DistInfo
) -> DataLoader[Any]:
    """A loader over ``dataset`` in order; when distributed, this rank's share (the sampler pads the tail
    so every rank has as many samples; gathers drop the padding)."""
    sampler: Any = None
    if dist_info.is_distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=False
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def _capture_rng() -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": list(internal), "gauss": gauss}


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _owner(slot: Slot) -> Slot:
    """The top-level entry a (possibly nested) entry belongs to."""
    while slot.parent is not None:
        slot = slot.parent
    return slot


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([ConfigIssue("trainer.device", f"{name!r} requested but CUDA is not available")])
    return device


class ImmediateStop(KeyboardInterrupt):
    """A second SIGINT: the run stops where it is, without a checkpoint (exit status 1). A
    ``KeyboardInterrupt`` so that nothing on the way (a plugin's ``except Exception``) swallows it."""


class _Signals:
    """SIGTERM/SIGINT: the first asks for a graceful stop after the current update, a second SIGINT
    stops at once (:class:`ImmediateStop`)."""

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

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One training run. Build it with a validated config, the loaded plugin entries and a run directory,
    then call :meth:`fit`."""

    def __init__(
        self,
        config: RunConfig,
        entries: Sequence[tuple[Plugin, CallbackConfig, bool]],
        paths: RunPaths,
        *,
        trackers: Sequence[Tracker] = (),
        metrics: MetricProperties | None = None,
        resume_tag: str | None = None,
        resume_paths: RunPaths | None = None,
        plugin_registry: PluginRegistry | None = None,
    ) -> None:
        self.config = config
        self.paths = paths
        tcfg = config.trainer
        self.device = pick_device(tcfg.device)
        self.dist = init_from_env(self.device.type)
        if self.device.type == "cuda" and self.dist.is_distributed:
            # one GPU per process: torchrun's LOCAL_RANK picks it
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        seed_everything(tcfg.seed + self.dist.rank)
        if tcfg.num_threads is not None:
            torch.set_num_threads(tcfg.num_threads)
        if tcfg.deterministic and self.device.type == "cuda":
            # CPU kernels are deterministic already; on CUDA some need opting in (and cuBLAS a workspace)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

        # data and geometry
        datasets = {name: build_dataset(name, ds) for name, ds in config.datasets.items()}
        if "train" not in datasets:
            raise ConfigError([ConfigIssue("datasets", "a 'train' dataset is required")])
        self.data = DataContainer(datasets, config, self.dist)
        train_len = len(datasets["train"])  # type: ignore[arg-type]
        self.updates_per_epoch = updates_per_epoch(train_len, config)
        self.accumulation_steps = tcfg.accumulation_steps
        per_update = tcfg.batch_size
        if per_update % (self.dist.world_size * self.accumulation_steps):
            raise ConfigError(
                [
                    ConfigIssue(
                        "trainer.batch_size",
                        f"{per_update} is not divisible by world size {self.dist.world_size} x "
                        f"accumulation_steps {self.accumulation_steps}",
                    )
                ]
            )
        self.micro_batch_size = per_update // (self.dist.world_size * self.accumulation_steps)
        self.counter = Counter(
            end=tcfg.end, updates_per_epoch=self.updates_per_epoch, effective_batch_size=per_update
        )
        self.scheduler = IntervalScheduler(self.updates_per_epoch, per_update, self.counter.total_updates)

        # model, optimizer, precision
        self.model_name = config.model.name
        self.model: nn.Module = build_model(config.model).to(self.device)
        self.train_model: nn.Module = self.model
        if self.dist.is_distributed and any(p.requires_grad for p in self.model.parameters()):
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.model, self.model_name, config.optimizer)
        self.train_step: TrainStep = build_train_step(config)
        self.precision = tcfg.precision
        self._autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tcfg.precision]
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=tcfg.precision == "fp16")
        self.skip_nan_loss = tcfg.skip_nan_loss

        # services
        self.metrics = metrics or MetricProperties()
        self.trackers = list(trackers) if self.dist.is_main else []
        self.writer = LogWriter(self.counter, self.trackers)
        self.checkpoints = CheckpointWriter(paths, paths.run_id)
        self.plugins = PluginManager()
        registry = plugin_registry or PluginRegistry.from_environment()

        def register(plugin: Plugin, entry: CallbackConfig, is_default: bool, parent: Slot | None) -> None:
            slot = self.plugins.register(plugin, entry, is_default=is_default, parent=parent)
            for child in child_entries(entry):
                register(registry.load(child.kind), child, is_default, slot)

        for plugin, entry, is_default in entries:
            register(plugin, entry, is_default, None)
        self.plugins.freeze()
        self.plugins.owner_sink = self.writer
        self.resumed_from: RunPaths | None = None

        self._stop_reason: str | None = None
        self._step_end: list[tuple[str, Callable[[], object]]] = []
        self._signals = _Signals()
        self._nan_streak = 0
        self._core: dict[str, Any] = {"trainer": self, "model": self.model, "counter": self.counter}
        self.plugins.bind(self._core)
        self._train_seconds = 0.0
        self._loader: DataLoader[Any] | None = None
        self._sampler: EpochSampler | None = None
        self._loader_gen = torch.Generator()
        self._device_is_cpu = self.device.type == "cpu"
        self._listens = {
            hook: self.plugins.has_listeners(hook) for hook in ("after_accumulation", "after_update")
        }
        self._epoch_listeners = self.plugins.has_listeners("after_epoch")
        self._has_children = any(s.parent is not None for s in self.plugins.slots)
        self._epoch_needs_eval_mode = any(
            s.plugin.needs_eval_mode
            for s in self.plugins.slots
            if s.parent is None and "after_epoch" in s.plugin.hooks
        )
        self._scheduled_optimizer = self.optimizer is not None and (
            config.optimizer.lr_schedule is not None or config.optimizer.wd_schedule is not None
        )
        self._is_ddp = isinstance(self.train_model, nn.parallel.DistributedDataParallel)
        self._flag_group: Any = None
        if self.dist.is_distributed and self.device.type != "cpu":
            self._flag_group = torch.distributed.new_group(backend="gloo")

        if resume_tag is not None:
            self._resume(resume_paths or paths, resume_tag)
        # an owner of child entries (EmaCallback's eval_callbacks) is called when it or one of its
        # children is due: children keep their own intervals, and the owner dispatches them
        scheduled = {s.index for s in self.plugins.scheduled}
        ticking = [s for s in self.plugins.slots if s.interval is not None and _owner(s).index in scheduled]
        self._cursor = self.scheduler.cursor(ticking, self.counter.update)

    # ------------------------------------------------------------------------------------ services

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def hook_arguments(self) -> dict[str, Any]:
        """The core hook arguments (``trainer``, ``model``, ``counter``): what an owner passes to
        ``trainer.plugins.call_slots`` when it runs its child entries."""
        return dict(self._core)

    @property
    def tracker(self) -> Tracker | None:
        """The on-disk tracker (``metrics.jsonl``, ``summary.yaml``); ``None`` off rank 0."""
        return self.trackers[0] if self.trackers else None

    def attach_trackers(self, trackers: Sequence[Tracker]) -> None:
        """Send this run's metrics to ``trackers`` (already started) from now on (rank 0 only)."""
        if self.is_main:
            self.trackers = list(trackers)
            self.writer.sinks = list(trackers)

    def request_stop(self, reason: str) -> None:
        """Ask the run to stop after this step (early stopping). The run ends with status ``stopped``."""
        if self._stop_reason is None:
            log.info("stop requested: %s", reason)
            self._stop_reason = reason

    def after_this_step(self, action: Callable[[], object]) -> None:
        """Run ``action`` once every entry has run its events of this update (``after_update``,
        ``after_epoch``, ``at_eval``), before the step's metrics are flushed.

        How a checkpoint taken at an update holds the state every entry has after that update, whatever
        the entries' order (CheckpointCallback saves this way). Call it from those events only; the time
        ``action`` takes, and a failure, count as the calling entry's ``at_eval``.
        """
        self._step_end.append((self.writer.owner, action))

    def _end_step(self) -> None:
        if not self._step_end:
            return
        actions, self._step_end = self._step_end, []
        slots = {s.key: s for s in reversed(self.plugins.slots)}
        at_eval = HOOKS.index("at_eval")
        for owner, action in actions:
            slot = slots.get(owner)
            start = time.perf_counter()
            try:
                with self.writer.owned_by(owner, default=slot is not None and slot.is_default):
                    action()
            except Exception as exc:
                if slot is None:
                    raise
                raise PluginFailure(slot, "at_eval", exc) from exc
            finally:
                if slot is not None:
                    slot.seconds[at_eval] += time.perf_counter() - start

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    def named_models(self) -> list[tuple[str, nn.Module]]:
        """Leaf models with their checkpoint names (``classifier.encoder``)."""
        return list(named_models(self.model, self.model_name))

    def trainer_state(self) -> dict[str, Any]:
        """Everything besides weights and optimizer that an exact resume needs."""
        return {
            "version": TRAINER_STATE_VERSION,
            "counter": {"update": self.counter.update},
            "geometry": {
                "updates_per_epoch": self.updates_per_epoch,
                "effective_batch_size": self.counter.effective_batch_size,
                "accumulation_steps": self.accumulation_steps,
                "world_size": self.dist.world_size,
            },
            "data": {
                "epoch": self.counter.epoch,
                "samples_consumed_in_epoch": self.counter.update_in_epoch * self.counter.effective_batch_size,
            },
            "lr_schedule": {"update": self.counter.update},
            "grad_scaler": self.grad_scaler.state_dict(),
            "rng": _capture_rng(),
            "nan_streak": self._nan_streak,
            "plugins": {slot.key: slot.obj.state_dict() for slot in self.plugins.stateful()},  # type: ignore[attr-defined]
        }

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
        """Write ``{model}_cp={tag}_{model|optim|trainer}.th`` atomically (rank 0 only); returns the files.

        ``model_names`` restricts which parts' weights are written (``None``: all); frozen parts are
        skipped unless ``include_frozen``.
        """
        state = self.trainer_state() if trainer_state else None  # every rank: collectives may be needed
        if not self.is_main:
            return []
        # the records logged so far reach the disk before the checkpoint a resume would start from
        for tracker in self.trackers:
            flush = getattr(tracker, "flush", None)
            if callable(flush):
                flush()
        position = {"epoch": self.counter.epoch, "update": self.counter.update, "sample": self.counter.sample}
        written: list[Path] = []
        if weights:
            for name, part in self.named_models():
                if (
                    model_names is not None
                    and name not in model_names
                    and name.split(".")[-1] not in model_names
                ):
                    continue
                if not include_frozen and not any(p.requires_grad for p in part.parameters()):
                    continue
                written.append(self.checkpoints.save_model(name, tag, part.state_dict(), position=position))
        if optim and self.optimizer is not None:
            written.append(
                self.checkpoints.save_optim(
                    self.model_name, tag, self.optimizer.state_dict(), position=position
                )
            )
        if state is not None:
            written.append(self.checkpoints.save_trainer(self.model_name, tag, state, position=position))
        return written

    # -------------------------------------------------------------------------------------- resume

    def load_weights(self, paths: RunPaths, tag: str) -> None:
        """Load every part's weights of checkpoint ``tag`` from ``paths`` (and take its position)."""
        position: dict[str, int] | None = None
        for name, part in self.named_models():
            file = paths.checkpoint_file(name, tag, "model")
            if not file.exists():
                tags = paths.checkpoint_tags(name)
                raise CheckpointLoadError(
                    file, f"no weights of {name!r} for tag {tag!r}; tags present: {', '.join(tags) or 'none'}"
                )
            payload = load_checkpoint(file)
            try:
                part.load_state_dict(payload["state_dict"])
            except (KeyError, RuntimeError) as exc:
                raise CheckpointLoadError(file, f"the weights do not fit model part {name!r}: {exc}") from exc
            position = payload.get("training_iteration", position)
        if position is not None and "update" in position:
            self.counter.seek(min(int(position["update"]), self.counter.total_updates))

    def _resume(self, paths: RunPaths, tag: str) -> None:
        update: int | None = None

        def load(path: Path) -> dict[str, Any]:
            if not path.exists():
                raise CheckpointLoadError(path, f"checkpoint {tag!r} is incomplete: this file is missing")
            payload = load_checkpoint(path)
            # model, optim and trainer files are written one after another; a kill between two of them
            # leaves parts of different updates, which must not be mixed
            saved_at = payload.get("training_iteration", {}).get("update")
            if update is not None and saved_at is not None and saved_at != update:
                raise CheckpointLoadError(
                    path,
                    f"this part of checkpoint {tag!r} is from update {saved_at}, the trainer state from "
                    f"update {update} (a save was interrupted); resume from another tag",
                )
            return payload

        trainer_file = paths.checkpoint_file(self.model_name, tag, "trainer")
        if not trainer_file.exists():
            tags = paths.checkpoint_tags(self.model_name)
            raise CheckpointLoadError(
                trainer_file,
                f"run {str(paths.root)!r} has no checkpoint {tag!r} with trainer state; "
                f"tags present: {', '.join(tags) or 'none'}",
            )
        state = load(trainer_file)
        update = int(state["counter"]["update"])
        geometry = state.get("geometry", {})
        mine = self.trainer_state()["geometry"]
        changed = {k: (v, mine[k]) for k, v in geometry.items() if mine.get(k) != v}
        if changed:
            detail = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ConfigError(
                [ConfigIssue("trainer", f"resuming needs the run's batch geometry unchanged ({detail})")]
            )
        for name, part in self.named_models():
            part.load_state_dict(load(paths.checkpoint_file(name, tag, "model"))["state_dict"])
        if self.optimizer is not None:
            optim = load(paths.checkpoint_file(self.model_name, tag, "optim"))
            self.optimizer.load_state_dict(optim["state_dict"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        if update > self.counter.total_updates:
            raise ConfigError(
                [
                    ConfigIssue(
                        "trainer",
                        f"checkpoint {tag!r} is at update {update}, past this run's end "
                        f"({self.counter.total_updates} updates, {self.counter.end}); "
                        "raise the end to continue",
                    )
                ]
            )
        self.counter.seek(update)
        self._nan_streak = int(state.get("nan_streak", 0))
        saved = dict(state.get("plugins", {}))
        for slot in self.plugins.stateful():
            if slot.key in saved:
                slot.obj.load_state_dict(saved.pop(slot.key))  # type: ignore[attr-defined]
            else:
                log.warning(
                    "resume: plugin %r has state but the checkpoint holds none for it; it starts fresh",
                    slot.key,
                )
        for key in saved:
            log.warning(
                "resume: the checkpoint holds state of plugin %r, which this run does not have; ignored", key
            )
        _restore_rng(state["rng"])
        self.resumed_from = paths
        log.info("resumed from %s (tag %s) at %s", paths.root, tag, self.counter.tag)

    # ------------------------------------------------------------------------------------ the loop

    def fit(self) -> RunStatus:
        """Train until the configured end, a stop request or a signal; always runs ``after_training``."""
        status: RunStatus = "failed"
        with self._signals:
            try:
                self.model.eval()
                with torch.no_grad():
                    self.plugins.before_training(self._core)
                self.writer.flush()
                self.train_model.train()
                started = time.perf_counter()
                try:
                    for batches in self._updates():
                        self._update(batches)
                        self._tick()
                        if self._leave_loop():
                            break
                    if self._signals.received is None:
                        self._final_evaluations()
                finally:
                    self._train_seconds = time.perf_counter() - started
                if any_rank(self._signals.received is not None, self.dist, self.device):
                    self.save_checkpoint("latest")
                    # no rank may exit before rank 0 has written it: torchrun ends the others at the
                    # first exit status that is not 0
                    barrier(self.dist)
                    status = "interrupted"
                elif self._stop_reason is not None:
                    status = "stopped"
                else:
                    status = "completed"
            finally:
                self._finish(status)
        return status

    def _leave_loop(self) -> bool:
        """Whether to stop after this update. Ranks agree: a signal or a stop request on any rank stops
        every rank at the same update (else they would wait on each other's collectives)."""
        signalled = self._signals.received is not None
        stopping = self._stop_reason is not None
        if not self.dist.is_distributed:
            return signalled or stopping
        # on the CPU (gloo), so agreeing costs no GPU sync even when training runs on NCCL
        flags = torch.tensor([int(signalled), int(stopping)], dtype=torch.int32)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self._flag_group)
        any_signal, any_stop = (bool(f) for f in flags.tolist())
        if any_signal and not signalled:
            self._signals.received = "a signal on another rank"
        if any_stop and not stopping:
            self._stop_reason = "a stop requested on another rank"
        return any_signal or any_stop

    def _finish(self, status: RunStatus) -> None:
        self.model.eval()
        with torch.no_grad():
            failures = self.plugins.after_training(self._core, status)
        try:
            self.writer.flush()
        finally:
            self._report_durations()
            for tracker in self.trackers:
                tracker.close(status)
        if failures and status != "failed":
            raise failures[0]

    def _epoch_loader(self, epoch: int, skip_micro_batches: int) -> Iterator[Any]:
        if self._loader is None:
            train = self.data["train"]
            samples_per_rank = self.updates_per_epoch * self.accumulation_steps * self.micro_batch_size
            self._sampler = EpochSampler(
                len(train),  # type: ignore[arg-type]
                samples_per_rank=samples_per_rank,
                seed=self.config.trainer.seed,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            workers = self.config.datasets["train"].num_workers
            self._loader = DataLoader(
                train,
                batch_size=self.micro_batch_size,
                sampler=self._sampler,
                drop_last=True,
                num_workers=workers,
                generator=self._loader_gen,
                pin_memory=self.device.type == "cuda",
            )
        assert self._sampler is not None
        self._sampler.set_epoch(epoch, skip=skip_micro_batches * self.micro_batch_size)
        # workers draw their seeds from this generator, not the global RNG, so resuming mid-epoch
        # leaves the global RNG stream exactly where an uninterrupted run has it
        self._loader_gen.manual_seed(self.config.trainer.seed * 7919 + epoch)
        return iter(self._loader)

    def _updates(self) -> Iterator[list[tuple[Any, float]]]:
        """The micro-batches of each remaining update, with the time spent waiting for each."""
        steps = self.accumulation_steps
        clock = time.perf_counter
        while not self.counter.is_finished:
            epoch = self.counter.epoch
            it = self._epoch_loader(epoch, self.counter.update_in_epoch * steps)
            while self.counter.epoch == epoch and not self.counter.is_finished:
                batches = []
                for _ in range(steps):
                    start = clock()
                    batch = next(it)
                    batches.append((batch, clock() - start))
                yield batches

    def _to_device(self, batch: Any) -> Any:
        """``batch`` with its tensors on the training device (tuples, lists, namedtuples, mappings)."""
        if isinstance(batch, torch.Tensor):
            # a no-op .to() still costs a dispatch: skip it on the hot path when nothing moves
            if self._device_is_cpu and batch.is_cpu:
                return batch
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            moved = [self._to_device(v) for v in batch]
            if type(batch) in (list, tuple):
                return moved if type(batch) is list else tuple(moved)
            if hasattr(batch, "_fields"):  # a namedtuple takes its fields positionally
                return type(batch)(*moved)
            return type(batch)(moved)
        if isinstance(batch, Mapping):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def _update(self, batches: list[tuple[Any, float]]) -> None:
        """One optimizer update over ``accumulation_steps`` micro-batches, then the ``after_update`` event."""
        clock = time.perf_counter
        steps = self.accumulation_steps
        # work only plugins consume (loss bookkeeping, no_grad blocks) is skipped when none listens
        to_accumulation = self._listens["after_accumulation"]
        to_update = self._listens["after_update"]
        times = {"data_wait": 0.0, "forward": 0.0, "backward": 0.0, "update": 0.0}
        if self._scheduled_optimizer and self.optimizer is not None:
            apply_schedules(
                self.optimizer, self.config.optimizer, self.counter.update, self.counter.total_updates
            )
        loss_sums: dict[str, torch.Tensor] = {}
        skip = False
        for step, (raw, waited) in enumerate(batches):
            times["data_wait"] += waited
            batch = self._to_device(raw)
            start = clock()
            sync_context = (
                self.train_model.no_sync()  # type: ignore[operator]
                if self._is_ddp and step < steps - 1
                else contextlib.nullcontext()
            )
            with sync_context:
                with self._autocast():
                    out: StepOutput = as_step_output(self.train_step(self.train_model, batch))
                forward_done = clock()
                times["forward"] += forward_done - start
                if self.skip_nan_loss and not skip and not bool(torch.isfinite(out.total).all()):
                    skip = self._register_nan()
                if not skip and self.optimizer is not None:
                    # dividing by 1 changes no bit but adds an autograd node to forward and backward
                    loss = out.total / steps if steps > 1 else out.total
                    self.grad_scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                times["backward"] += clock() - forward_done
            if to_accumulation or to_update:
                losses = {"total": out.total.detach(), **{k: v.detach() for k, v in out.losses.items()}}
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
        grad_norm = self._optimizer_step(skip)
        times["update"] = clock() - start
        if not skip and self.skip_nan_loss and self._nan_streak:
            log.info("loss is finite again after %d skipped update(s)", self._nan_streak)
            self._nan_streak = 0
        self.counter.advance()
        if to_update:
            mean_losses = {k: v / steps for k, v in loss_sums.items()} if steps > 1 else loss_sums
            self._without_grad(self.plugins.after_update, mean_losses, times, grad_norm)

    def _without_grad(self, event: Callable[..., None], *args: Any) -> None:
        """Dispatch a per-update ``event`` with autograd off. The grad mode is switched directly:
        ``torch.no_grad()`` builds two context objects, 1-2 µs a use, and this runs on every update."""
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            event(self._core, *args)
        finally:
            torch._C._set_grad_enabled(grad_mode)

    def _register_nan(self) -> bool:
        self._nan_streak += 1
        limit = self.config.trainer.skip_nan_loss_max_count
        log.warning(
            "non-finite loss at update %d: skipping it (%d in a row)",
            self.counter.update + 1,
            self._nan_streak,
        )
        if self._nan_streak > limit:
            raise NonFiniteLossError(
                f"the loss was NaN or infinite in {self._nan_streak} updates in a row "
                f"(trainer.skip_nan_loss_max_count is {limit})"
            )
        return True

    def _optimizer_step(self, skip: bool) -> torch.Tensor | None:
        optimizer = self.optimizer
        if optimizer is None:
            return None
        grad_norm: torch.Tensor | None = None
        if not skip:
            tcfg = self.config.trainer
            if tcfg.clip_grad_norm is not None or tcfg.clip_grad_value is not None:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                self.grad_scaler.unscale_(optimizer)
                if tcfg.clip_grad_value is not None:
                    torch.nn.utils.clip_grad_value_(params, tcfg.clip_grad_value)
                if tcfg.clip_grad_norm is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip_grad_norm)
            self.grad_scaler.step(optimizer)
            self.grad_scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _tick(self) -> None:
        """After an update: ``after_epoch`` at an epoch's end, ``at_eval`` for the due entries, flush."""
        epoch_end = self._epoch_listeners and self.counter.is_epoch_end
        due = self._cursor.due(self.counter.update)
        if due and self._has_children:
            due = sorted({_owner(s).index: _owner(s) for s in due}.values(), key=lambda s: s.index)
        if epoch_end or due:
            # the model goes to eval mode (and back) only if an entry called now may run it
            eval_mode = (epoch_end and self._epoch_needs_eval_mode) or any(
                s.plugin.needs_eval_mode for s in due
            )
            if eval_mode:
                self.model.eval()
            with torch.no_grad():
                if epoch_end:
                    self.plugins.after_epoch(self._core)
                if due:
                    self.plugins.at_eval(self._core, due)
                self._end_step()
            if eval_mode:
                self.train_model.train()
        elif self._step_end:
            with torch.no_grad():
                self._end_step()
        self.writer.flush()

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
            with torch.no_grad():
                self.plugins.at_eval(self._core, final)
                self._end_step()
            self.writer.flush()

    # ------------------------------------------------------------------------------------ eval mode

    def evaluate(self, slots: Sequence[Slot] | None = None, *, status: str = "completed") -> None:
        """Evaluation-only run (``noether eval``): ``at_eval(interval="eval")`` on every scheduled entry.

        ``status`` is what the trackers record as the run's status (an evaluation does not change how
        the training ended)."""
        interval: EvalInterval = "eval"
        self.model.eval()
        with torch.no_grad():
            self.plugins.at_eval(self._core, slots if slots is not None else self.plugins.scheduled, interval)
        self.writer.flush()
        for tracker in self.trackers:
            tracker.close(status)

    # ------------------------------------------------------------------------------------ durations

    def _report_durations(self) -> None:
        """Where the time went: slowest plugins per event and their share of the training time."""
        rows = self.plugins.durations()
        total = self._train_seconds
        summary: list[dict[str, Any]] = []
        threshold = self.config.trainer.slow_plugin_share
        for slot, hook, seconds, calls in rows:
            share = seconds / total if total > 0 else 0.0
            summary.append(
                {
                    "plugin": slot.key,
                    "event": hook,
                    "seconds": round(seconds, 6),
                    "calls": calls,
                    "share_of_training": round(share, 4),
                }
            )
        if self.is_main:
            for tracker in self.trackers:
                tracker.set_summary("durations", {"training_seconds": round(total, 3), "plugins": summary})
        if not rows:
            return
        lines = [f"plugin time ({total:.2f}s of training, slowest first):"]
        for row in summary[:10]:
            lines.append(
                f"  {row['seconds']:9.4f}s {row['share_of_training']:6.1%}  {row['plugin']} {row['event']} "
                f"({row['calls']} call{'' if row['calls'] == 1 else 's'})"
            )
        log.info("\n".join(lines))
        per_plugin: dict[str, float] = {}
        for row in summary:
            per_plugin[row["plugin"]] = per_plugin.get(row["plugin"], 0.0) + row["seconds"]
        for name, seconds in per_plugin.items():
            if total > 0 and seconds / total > threshold:
                log.warning(
                    "plugin %r took %.1f%% of the training time (%.2fs), "
                    "more than trainer.slow_plugin_share=%s",
                    name,
                    100 * seconds / total,
                    seconds,
                    threshold,
                )


__all__ = ["DataContainer", "NonFiniteLossError", "Trainer", "pick_device", "seed_everything"]
