"""What a checkpoint of a run holds, and resuming from one.

A checkpoint tag is a set of files (see :mod:`noether_core.io.paths`): each model part's weights, the
optimizer state, and the trainer state, which holds everything else an exact resume needs: the position,
the batch geometry it was taken with, the grad scaler, every random generator, the NaN-skip streak and,
under each entry's name, its plugin's ``state_dict()`` and its ``state`` dict.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from noether_core.errors import (
    CheckpointLoadError,
    ConfigError,
    ConfigIssue,
    ImmediateStop,
    NonFiniteLossError,
    PluginFailure,
    PluginLoadError,
    raised_at,
)
from noether_core.io.checkpoints import CheckpointWriter, load_checkpoint, unsafe_values
from noether_core.io.paths import RunPaths, parse_position_tag
from noether_core.plugins.dispatch import PLUGIN_ERRORS
from noether_core.plugins.manager import PluginManager
from noether_core.run.counter import Counter, seek
from noether_core.run.device import seed_everything
from noether_core.run.distributed import DistInfo, gather_to_main
from noether_core.run.models import named_models
from noether_core.run.optim import TorchSchedule

log = logging.getLogger("noether")

TRAINER_STATE_VERSION = 1

#: The geometry keys a resume must find unchanged: they decide which samples each update sees. The
#: number of processes and of micro-batches per update do not (each update takes the same slice of the
#: epoch's permutation whatever they are; see :mod:`noether_core.run.sampling`), so they may change.
FIXED_GEOMETRY = ("updates_per_epoch", "effective_batch_size")


def _update_of(trainer_file: Path) -> int | None:
    """The update a trainer state file was saved at, read without loading its tensors; ``None`` when
    the file cannot be read (the resume names the problem if that tag is chosen)."""
    try:
        state = torch.load(trainer_file, map_location="cpu", weights_only=True, mmap=True)
        return int(state["counter"]["update"])
    except Exception:
        return None


def capture_rng() -> dict[str, Any]:
    """The state of torch's, NumPy's and Python's global generators (and CUDA's), as checkpointable
    data: tensors and plain numbers only, so ``weights_only`` loading accepts it."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng` captured."""
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


def derived_seed(seed: int, rank: int, update: int) -> int:
    """The seed of rank ``rank``'s global generators in a run resumed at ``update`` on another number
    of processes: a function of the three alone (a 63-bit hash), so every rank, on every machine,
    derives it without asking the others, and no two ranks or resume points share a stream."""
    digest = hashlib.blake2b(f"noether:{seed}:{rank}:{update}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _saved_update(state: Mapping[str, Any], file: Path) -> int:
    """The update a trainer state was saved at (its ``counter``), or :class:`CheckpointLoadError`."""
    counter = state.get("counter")
    update = counter.get("update") if isinstance(counter, Mapping) else None
    if isinstance(update, bool) or not isinstance(update, int) or update < 0:
        found = "no 'counter'" if counter is None else f"counter {counter!r}"[:80]
        raise CheckpointLoadError(
            file,
            f"it is not a trainer state noether wrote: expected counter.update, an int >= 0, found {found}",
        )
    return update


@contextlib.contextmanager
def _damaged(file: Path, what: str, verb: str = "does") -> Iterator[None]:
    """A part of a checkpoint that does not load (a missing key, a wrong type or size) is named as
    such, not as the raw error of the code that read it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointLoadError(
            file,
            f"its {what} {verb} not load ({type(exc).__name__}: {detail}); the file is damaged or "
            "from another run",
        ) from exc


def load_weights_into(part: nn.Module, name: str, payload: Mapping[str, Any], file: Path) -> None:
    """Load the weights of model part ``name`` from a model file's ``payload``, after checking that
    they fit: every parameter and buffer present, with the model's shapes. A mismatch (a config whose
    model differs from the checkpoint's) is a :class:`CheckpointLoadError` naming the parameters, and
    leaves the part unchanged."""
    weights = payload.get("state_dict")
    if not isinstance(weights, Mapping):
        raise CheckpointLoadError(
            file, "it holds no 'state_dict' of weights; it is not a model file noether wrote"
        )
    own = part.state_dict()
    problems = []
    for key, tensor in own.items():
        saved = weights.get(key)
        if saved is None:
            problems.append(f"{key!r} is missing")
        elif not isinstance(saved, torch.Tensor):
            problems.append(f"{key!r} is a {type(saved).__name__}, not a tensor")
        elif saved.shape != tensor.shape:
            problems.append(
                f"{key!r} has shape {list(saved.shape)} in the checkpoint, {list(tensor.shape)} in the model"
            )
    unknown = [str(k) for k in weights if k not in own]
    if unknown:
        problems.append(f"the checkpoint also has {', '.join(repr(k) for k in unknown[:3])}")
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise CheckpointLoadError(
            file,
            f"the weights do not fit model part {name!r} as the config builds it: {shown}. The config's "
            "model differs from the one the checkpoint was saved with; resume with the run's own config",
        )
    with _damaged(file, "weights"):
        part.load_state_dict(weights)


class RunState:
    """The resumable state of one run: it writes checkpoint sets and resumes from them.

    ``geometry`` (updates per epoch, effective batch size, accumulation steps, world size) is stored
    with every trainer state; a resume with other updates per epoch or another effective batch size is
    refused, since positions would not mean the same samples; the world size and the accumulation steps
    may change (:data:`FIXED_GEOMETRY`). ``nan_streak`` is the trainer's count of NaN updates skipped in
    a row. ``dist`` is this process's place in the run and ``seed`` the config's seed: the random
    generators of every rank are saved, and a resume on another number of processes re-derives them
    from both (:func:`derived_seed`).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        model_name: str,
        optimizer: torch.optim.Optimizer | None,
        grad_scaler: torch.amp.GradScaler,
        counter: Counter,
        plugins: PluginManager,
        geometry: Mapping[str, int],
        lr_scheduler: TorchSchedule | None = None,
        dist: DistInfo | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.dist = dist or DistInfo()
        self.seed = seed
        self.model_name = model_name
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.grad_scaler = grad_scaler
        self.counter = counter
        self.plugins = plugins
        self.geometry = dict(geometry)
        self.nan_streak = 0
        #: why a plugin asked the run to stop (``trainer.request_stop``); saved, so that a run killed
        #: after its stop was decided and resumed from a checkpoint taken then ends without training on
        self.stop_reason: str | None = None
        #: whether the stop is a pause (a time limit), which a checkpoint does not remember: a resume
        #: from it goes on training
        self.stop_resumable = False

    def note_nan(self, update: int, limit: int) -> None:
        """Count an update skipped for a non-finite loss; more than ``limit`` in a row fail the run."""
        self.nan_streak += 1
        log.warning("non-finite loss at update %d: skipping it (%d in a row)", update, self.nan_streak)
        if self.nan_streak > limit:
            raise NonFiniteLossError(
                f"the loss was NaN or infinite in {self.nan_streak} updates in a row "
                f"(trainer.skip_nan_loss_max_count is {limit})"
            )

    def note_finite(self) -> None:
        """An update with a finite loss ends a streak of skipped ones."""
        if self.nan_streak:
            log.info("loss is finite again after %d skipped update(s)", self.nan_streak)
            self.nan_streak = 0

    def named_models(self) -> list[tuple[str, nn.Module]]:
        """Leaf models with their checkpoint names (``classifier.encoder``)."""
        return list(named_models(self.model, self.model_name))

    def entry_states(self, hook: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every entry's ``state_dict()`` (stateful class plugins) and non-empty ``state`` dict, by entry
        name, checked: a value a checkpoint cannot hold is a :class:`PluginFailure` of that entry in
        ``hook``, naming the key (the trainer checks right after ``before_training``, and at every save)."""
        plugins: dict[str, Any] = {}
        states: dict[str, Any] = {}
        for slot in self.plugins.slots:
            kept = []
            if slot.stateful:
                try:
                    plugins[slot.key] = slot.obj.state_dict()  # type: ignore[attr-defined]
                except ImmediateStop:
                    raise
                except PLUGIN_ERRORS as exc:
                    # its own failure, not that of the entry whose save asked for the state
                    raise PluginFailure(slot.key, slot.kind, "state_dict()", exc) from exc
                kept.append(("state_dict()", plugins[slot.key]))
            if slot.state:
                states[slot.key] = dict(slot.state)
                kept.append(("state", states[slot.key]))
            for what, value in kept:
                problems = unsafe_values(value, what)
                if problems:
                    shown = "; ".join(problems[:3]) + (
                        f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
                    )
                    problem = TypeError(
                        f"a checkpoint cannot hold {shown} (keep tensors, numbers, strings, None and "
                        "lists, tuples and dicts of them; convert the rest, e.g. with .item() or .tolist())"
                    )
                    raise PluginFailure(slot.key, slot.kind, hook, problem)
        return plugins, states

    def capture(self) -> dict[str, Any]:
        """Everything besides weights and optimizer that an exact resume needs."""
        plugins, states = self.entry_states("saving its state")
        counter = self.counter
        rng = capture_rng()
        # every rank's generators (a collective): a resume on as many processes gives each its own back
        rng_by_rank = gather_to_main(rng, self.dist)
        return {
            "version": TRAINER_STATE_VERSION,
            "counter": {"update": counter.update},
            "geometry": dict(self.geometry),
            "data": {
                "epoch": counter.epoch,
                "samples_consumed_in_epoch": counter.update_in_epoch * counter.effective_batch_size,
            },
            "lr_schedule": {"update": counter.update},
            # a torch.optim.lr_scheduler scheduler's own state (the built-in schedules need the update only)
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "grad_scaler": self.grad_scaler.state_dict(),
            "rng": rng,
            "rng_by_rank": rng_by_rank,
            "nan_streak": self.nan_streak,
            "stop_reason": None if self.stop_resumable else self.stop_reason,
            "plugins": plugins,
            "entry_state": states,
        }

    def save(
        self,
        checkpoints: CheckpointWriter,
        tag: str,
        *,
        is_main: bool,
        weights: bool = True,
        optim: bool = True,
        trainer_state: bool = True,
        model_names: Sequence[str] | None = None,
        include_frozen: bool = True,
    ) -> list[Path]:
        """Write the files of checkpoint ``tag`` as one set (rank 0 writes; every rank calls it, since
        capturing the state may take collectives). See ``Run.save_checkpoint``."""
        state = self.capture() if trainer_state else None
        if not is_main:
            return []
        counter = self.counter
        position = {"epoch": counter.epoch, "update": counter.update, "sample": counter.sample}
        with checkpoints.checkpoint_set(tag) as parts:
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
                    parts.save_model(name, part.state_dict(), position=position)
            if optim and self.optimizer is not None:
                parts.save_optim(self.model_name, self.optimizer.state_dict(), position=position)
            if state is not None:
                parts.save_trainer(self.model_name, state, position=position)
            return parts.paths

    def resumable_tags(self, paths: RunPaths) -> list[tuple[str, int]]:
        """The tags of ``paths`` this run can resume from, newest first, with their updates: ``latest``,
        ``last`` and the position tags whose set holds the trainer state, the weights of every model part
        and (when the run has an optimizer) the optimizer state. ``latest`` comes first among tags of
        the same update; a tag whose trainer state cannot be read comes first of all (update
        ``sys.maxsize``)."""
        directory = paths.root / "checkpoints"
        if not directory.is_dir():
            return []
        names = [name for name, _ in self.named_models()]
        found = []
        for tag in paths.checkpoint_tags(self.model_name):
            position = parse_position_tag(tag)
            if position is None and tag not in ("latest", "last"):
                continue
            trainer_file = paths.checkpoint_file(self.model_name, tag, "trainer")
            needed = [trainer_file, *(paths.checkpoint_file(name, tag, "model") for name in names)]
            if self.optimizer is not None:
                needed.append(paths.checkpoint_file(self.model_name, tag, "optim"))
            if not all(file.is_file() for file in needed):
                continue
            update = position[1] if position is not None else _update_of(trainer_file)
            # a trainer state that cannot be read goes first: resuming from it names the damaged file,
            # instead of quietly going back to an older set
            found.append((tag, sys.maxsize if update is None else update))
        order = {"latest": 0, "last": 1}
        found.sort(key=lambda item: (-item[1], order.get(item[0], 2)))
        return found

    def _resumable_note(self, paths: RunPaths) -> str:
        tags = [tag for tag, _ in self.resumable_tags(paths)]
        if tags:
            return f"resumable tags, newest first: {', '.join(tags)}"
        return (
            "no tag is resumable (a resumable set holds the trainer state, the weights of every model part "
            "and the optimizer state; with CheckpointCallback's save_optim: false its position tags hold "
            "no optimizer state)"
        )

    def load_weights(self, paths: RunPaths, tag: str) -> None:
        """Load every part's weights of checkpoint ``tag`` from ``paths`` (and take its position)."""
        CheckpointWriter(paths).recover()  # a commit a killed writer left is finished first
        position: dict[str, int] | None = None
        for name, part in self.named_models():
            file = paths.checkpoint_file(name, tag, "model")
            if not file.exists():
                tags = paths.checkpoint_tags(name)
                raise CheckpointLoadError(
                    file, f"no weights of {name!r} for tag {tag!r}; tags present: {', '.join(tags) or 'none'}"
                )
            payload = load_checkpoint(file)
            load_weights_into(part, name, payload, file)
            saved_at = payload.get("training_iteration")
            position = saved_at if isinstance(saved_at, dict) else position
        update = position.get("update") if position is not None else None
        if isinstance(update, int) and update >= 0:
            seek(self.counter, min(update, self.counter.total_updates))

    def resume(self, paths: RunPaths, tag: str | None = None) -> str:
        """Load checkpoint ``tag`` of the run at ``paths`` whole: weights, optimizer, trainer state,
        plugin states, random generators; returns the tag. Without ``tag``, the newest resumable set
        (:meth:`resumable_tags`). Checks everything it can before it changes anything a plugin sees; a
        refused resume raises :class:`CheckpointLoadError` (naming the resumable tags) or
        :class:`ConfigError`."""
        CheckpointWriter(paths).recover()  # a commit a killed writer left is finished first
        if tag is None:
            newest = self.resumable_tags(paths)
            if not newest:
                present = paths.checkpoint_tags(self.model_name)
                raise CheckpointLoadError(
                    paths.root / "checkpoints",
                    f"run {str(paths.root)!r} has no checkpoint to resume from; tags present: "
                    f"{', '.join(present) or 'none'}; {self._resumable_note(paths)}",
                )
            tag = newest[0][0]
        self._load_whole(paths, tag)
        return tag

    def _load_whole(self, paths: RunPaths, tag: str) -> None:
        update: int | None = None
        if not (paths.root / "checkpoints").is_dir():  # looking for files would create the folder
            raise CheckpointLoadError(
                paths.root / "checkpoints",
                f"run {str(paths.root)!r} has no checkpoints folder: nothing to resume",
            )

        def load(path: Path) -> dict[str, Any]:
            if not path.exists():
                raise CheckpointLoadError(
                    path,
                    f"checkpoint {tag!r} cannot be resumed: this file is missing; "
                    f"{self._resumable_note(paths)}",
                )
            payload = load_checkpoint(path)
            # model, optim and trainer files are written one after another; a kill between two of them
            # leaves parts of different updates, which must not be mixed
            iteration = payload.get("training_iteration")
            saved_at = iteration.get("update") if isinstance(iteration, dict) else None
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
                f"tags present: {', '.join(tags) or 'none'}; {self._resumable_note(paths)}",
            )
        state = load(trainer_file)
        update = _saved_update(state, trainer_file)
        saved_geometry = state.get("geometry")
        saved_geometry = saved_geometry if isinstance(saved_geometry, dict) else {}
        changed = {
            k: (v, self.geometry[k])
            for k, v in saved_geometry.items()
            if k in FIXED_GEOMETRY and self.geometry.get(k) != v
        }
        if changed:
            detail = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ConfigError(
                [ConfigIssue("trainer", f"resuming needs the run's batch geometry unchanged ({detail})")]
            )
        for name, part in self.named_models():
            file = paths.checkpoint_file(name, tag, "model")
            load_weights_into(part, name, load(file), file)
        if self.optimizer is not None:
            file = paths.checkpoint_file(self.model_name, tag, "optim")
            with _damaged(file, "optimizer state"):
                self.optimizer.load_state_dict(load(file)["state_dict"])
        with _damaged(trainer_file, "grad scaler state"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        if self.lr_scheduler is not None:
            scheduler_state = state.get("lr_scheduler")
            if not isinstance(scheduler_state, dict):
                raise ConfigError(
                    [
                        ConfigIssue(
                            "optimizer.lr_schedule",
                            f"checkpoint {tag!r} holds no state of a torch scheduler (the run was saved with "
                            "another lr_schedule); resume with the run's own lr_schedule",
                        )
                    ]
                )
            with _damaged(trainer_file, "learning-rate scheduler state"):
                self.lr_scheduler.load_state_dict(scheduler_state)
        counter = self.counter
        if update > counter.total_updates:
            raise ConfigError(
                [
                    ConfigIssue(
                        "trainer",
                        f"checkpoint {tag!r} is at update {update}, past this run's end "
                        f"({counter.total_updates} updates, {counter.end}); raise the end to continue",
                    )
                ]
            )
        seek(counter, update)
        with _damaged(trainer_file, "plugin states", verb="do"):
            self.nan_streak = int(state.get("nan_streak", 0))
            stop_reason = state.get("stop_reason")
            self.stop_reason = None if stop_reason is None else str(stop_reason)
            saved = dict(state.get("plugins", {}))
            states = dict(state.get("entry_state", {}))
        for slot in self.plugins.stateful():
            if slot.key in saved:
                try:
                    slot.obj.load_state_dict(saved.pop(slot.key))  # type: ignore[attr-defined]
                except ImmediateStop:
                    raise
                except PLUGIN_ERRORS as exc:
                    source = slot.plugin.source
                    raise PluginLoadError(
                        slot.kind,
                        f"entry {slot.key!r} could not load its state from checkpoint {tag!r} of "
                        f"{str(paths.root)!r}: load_state_dict() raised {type(exc).__name__}: {exc}"
                        f"{raised_at(exc)}",
                        source.distribution,
                        source.version,
                    ) from exc
            else:
                log.warning(
                    "resume: plugin %r has state but the checkpoint holds none for it; it starts fresh",
                    slot.key,
                )
        for key in saved:
            log.warning(
                "resume: the checkpoint holds state of plugin %r, which this run does not have; ignored", key
            )
        for slot in self.plugins.slots:
            slot.state.clear()
            slot.state.update(states.get(slot.key, {}))
        with _damaged(trainer_file, "random generators' state"):
            self._restore_rng(state, saved_geometry.get("world_size", 1), update)
        log.info("resumed from %s (tag %s) at %s", paths.root, tag, counter.tag)

    def _restore_rng(self, state: Mapping[str, Any], saved_world_size: object, update: int) -> None:
        """Each rank's random generators: its own, saved, when the run resumes on as many processes
        (``rng`` in a checkpoint of one process written before ``rng_by_rank``); else re-derived from
        the seed, the rank and the update (:func:`derived_seed`): copying one rank's stream to several
        would give them the same dropout masks and augmentations."""
        saved = state["rng"]  # rank 0's: in every trainer state noether writes
        by_rank = state.get("rng_by_rank")
        world_size = self.dist.world_size
        if saved_world_size == world_size and isinstance(by_rank, list) and len(by_rank) == world_size:
            restore_rng(by_rank[self.dist.rank])
        elif saved_world_size == world_size == 1:
            restore_rng(saved)
        else:
            seed_everything(derived_seed(self.seed, self.dist.rank, update))
            log.info(
                "resume: %s processes now, %s when the checkpoint was saved: the random generators of "
                "each process are re-derived from the seed, its rank and update %d",
                world_size,
                saved_world_size,
                update,
            )


__all__ = [
    "FIXED_GEOMETRY",
    "TRAINER_STATE_VERSION",
    "RunState",
    "capture_rng",
    "derived_seed",
    "load_weights_into",
    "restore_rng",
]
