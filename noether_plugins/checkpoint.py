"""``CheckpointCallback``: the run's weights, optimizer and trainer state, on an interval and at the end.

Files (``checkpoints/`` of the run, each tag's files written through ``trainer.save_checkpoint`` as one
set that becomes visible as a whole):

* when its interval is due, tag ``E{e}_U{u}_S{s}`` (the position, e.g. ``E1_U10_S320``): the weights
  (``save_weights``), the optimizer state (``save_optim``) and, when either is saved, the trainer state.
  By default each holds all three and ``noether train --resume RUN_DIR --checkpoint E1_U10_S320``
  resumes from it; ``save_optim: false`` makes them weights to evaluate only;
* tag ``latest``, overwritten each time: weights (``save_latest_weights``), optimizer
  (``save_latest_optim``) and the trainer state. By default ``latest`` holds all three, which is what
  ``noether train --resume RUN_DIR`` loads; it always holds every model part, whatever ``model_names``
  says, since a resume needs them all;
* tag ``last`` once training ends (completed, stopped early, or interrupted by SIGTERM/SIGINT; not when
  it failed), with the same parts as the position tags. ``latest`` is refreshed then too, so it points at
  the end of the run.

Saves at an update happen once every entry has run its events of that update
(``trainer.after_this_step``), so the trainer state in them includes entries listed after this one: a
resume from them continues a best checkpoint's patience or an early stopper's count exactly.

``keep_last_n`` deletes all but the newest ``n`` position tags (every part, EMA weights of those tags
included) after each save; ``latest``, ``last`` and ``best_model.*`` are never deleted.
``before_training`` logs an estimate of the sizes. Evaluation-only runs (``interval == "eval"``) save
nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
from attrs import validators as v

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from torch import nn

    from noether_core import Counter, EvalInterval, Run, RunConfig, RunStatus

log = logging.getLogger("noether")

ALL_FLAGS_FALSE = (
    "At least one of save_weights, save_latest_weights, save_optim, save_latest_optim must be True."
)


def format_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (powers of 1000, like ``ls -lh --si``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def select_parts(trainer: Run, model_names: list[str] | None) -> list[tuple[str, nn.Module]]:
    """The model parts ``model_names`` selects (a part's full name, ``classifier.encoder``, or its last
    component, ``encoder``), as ``trainer.save_checkpoint`` selects them; all parts for ``None``.

    Raises ``ValueError`` naming the parts when a name selects nothing.
    """
    parts = trainer.named_models()
    if model_names is None:
        return parts
    unknown = [n for n in model_names if not any(n in (name, name.split(".")[-1]) for name, _ in parts)]
    if unknown:
        raise ValueError(
            f"model_names {unknown} match no model part; the parts are {', '.join(name for name, _ in parts)}"
        )
    return [(name, part) for name, part in parts if name in model_names or name.split(".")[-1] in model_names]


def _optimizer_bytes(trainer: Run) -> int:
    """Bytes of the optimizer state: measured when it has state (a resumed run), else estimated from
    the optimizer's kind (Adam keeps two tensors per trainable parameter, SGD with momentum one)."""
    optimizer = trainer.optimizer
    if optimizer is None:
        return 0
    measured: int = sum(
        int(t.numel() * t.element_size())
        for state in optimizer.state.values()
        for t in state.values()
        if hasattr(t, "element_size")
    )
    if measured:
        return measured
    trainable: int = sum(
        int(p.numel() * p.element_size()) for g in optimizer.param_groups for p in g["params"]
    )
    kind = type(optimizer).__name__.lower()
    if kind.startswith("sgd"):
        return trainable if any(g.get("momentum", 0) for g in optimizer.param_groups) else 0
    return 2 * trainable  # Adam, AdamW and most others keep two moments


class CheckpointCallback:
    """Saves weights, optimizer and trainer state on its interval (``E{e}_U{u}_S{s}``), as ``latest``,
    and as ``last`` at the end."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        save_weights: bool = True
        """Weights at every due position (tag ``E{e}_U{u}_S{s}``) and at the end (``last``)."""
        save_optim: bool = True
        """Optimizer state at every due position and at the end, which makes those tags resumable (the
        reference defaulted to false: no position tag could be resumed)."""
        save_latest_weights: bool = True
        """Weights in ``latest``, overwritten at every due position: the resume point."""
        save_latest_optim: bool = True
        """Optimizer state in ``latest`` (the reference defaulted to false, which broke the default
        resume)."""
        model_names: list[str] | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
        """Model parts whose weights are saved (composite models: ``encoder`` or ``classifier.encoder``);
        ``None``: all. ``latest`` always holds every part."""
        keep_last_n: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
        """Keep only the newest ``n`` position tags on disk; ``None``: keep all."""

        def __attrs_post_init__(self) -> None:
            if not (
                self.save_weights or self.save_optim or self.save_latest_weights or self.save_latest_optim
            ):
                raise ValueError(ALL_FLAGS_FALSE)

    def __init__(self, config: Config) -> None:
        self.config = config
        self._latest_at: int | None = None

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        """It logs no metrics (see :mod:`noether_core.run.metric_dependencies`)."""
        return []

    @hookimpl
    def before_training(self, trainer: Run, counter: Counter, config: Config) -> None:
        if trainer.writer.prefix:
            raise ValueError(
                "CheckpointCallback cannot run inside EmaCallback's eval_callbacks: it would overwrite the "
                "live model's checkpoints with EMA weights; use EmaCallback's save_weights instead"
            )
        parts = select_parts(trainer, config.model_names)
        weights = sum(t.numel() * t.element_size() for _, part in parts for t in part.state_dict().values())
        all_weights = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())
        optim = _optimizer_bytes(trainer)
        per_position = weights * config.save_weights + optim * config.save_optim
        latest = all_weights * config.save_latest_weights + optim * config.save_latest_optim
        interval = config.interval
        left = trainer.scheduler.count_due(interval, counter.update) if interval else 0
        message = (
            f"checkpoint sizes (estimated): weights {format_bytes(weights)}, "
            f"optimizer {format_bytes(optim)}; latest {format_bytes(latest)}"
        )
        if per_position:
            on_disk = per_position * min(left, config.keep_last_n or left)
            message += (
                f"; each E*_U*_S* checkpoint {format_bytes(per_position)}, {left} to come: "
                f"{format_bytes(per_position * left)} written"
                + (
                    f", at most {format_bytes(on_disk)} kept (keep_last_n={config.keep_last_n})"
                    if config.keep_last_n
                    else ""
                )
                + f"; last {format_bytes(per_position)}"
            )
        else:
            message += "; only latest is saved"
        log.info("%s", message)

    def _save_position(self, trainer: Run, tag: str, config: Config) -> None:
        if config.save_weights or config.save_optim:
            trainer.save_checkpoint(
                tag,
                weights=config.save_weights,
                optim=config.save_optim,
                trainer_state=True,
                model_names=config.model_names,
            )

    def _save_latest(self, trainer: Run, counter: Counter, config: Config) -> None:
        if (config.save_latest_weights or config.save_latest_optim) and self._latest_at != counter.update:
            trainer.save_checkpoint(
                "latest",
                weights=config.save_latest_weights,
                optim=config.save_latest_optim,
                trainer_state=True,
            )
            self._latest_at = counter.update

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, config: Config, interval: EvalInterval) -> None:
        if interval == "eval":  # an evaluation-only run trains nothing: nothing new to save
            return
        # saved once every entry has run at this update, so the trainer state holds the state of the
        # entries listed after this one too (a best-checkpoint patience, an early stopper's count)
        trainer.after_this_step(lambda: self._save_step(trainer, counter, config))

    def _save_step(self, trainer: Run, counter: Counter, config: Config) -> None:
        self._save_position(trainer, counter.tag, config)
        self._save_latest(trainer, counter, config)
        if config.keep_last_n is not None and trainer.is_main:
            names = {trainer.model_name, *(name for name, _ in trainer.named_models())}
            for name in sorted(names):
                for path in trainer.checkpoints.prune(name, config.keep_last_n):
                    log.debug("keep_last_n=%d: deleted %s", config.keep_last_n, path.name)

    @hookimpl
    def after_training(self, trainer: Run, counter: Counter, config: Config, status: RunStatus) -> None:
        if status == "failed":  # the state is whatever the failure left: never make it a resume point
            return
        self._save_position(trainer, "last", config)
        if status != "interrupted":  # when interrupted, the trainer has just saved a complete latest
            self._save_latest(trainer, counter, config)

    def __repr__(self) -> str:
        return f"CheckpointCallback({self.config.interval or ''})"


__all__ = ["CheckpointCallback", "format_bytes", "select_parts"]
