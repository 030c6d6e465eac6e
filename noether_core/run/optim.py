"""Optimizer and value schedules (learning rate, weight decay) from config.

The built-in schedules are pure functions of the update index, so resume restores them from the
counter alone; a ``torch.optim.lr_scheduler`` scheduler (:class:`TorchSchedule`) keeps its own state,
which the trainer state holds. The parameter groups are those of :mod:`noether_core.run.param_groups`:
each trainable part of a composite model gets its own group named after the part, which is what
``optim/lr/{model}/{group}`` metric keys refer to, and ``optimizer.param_groups`` adds groups by pattern.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from noether_core.config.schema import OptimizerConfig, ScheduleConfig
from noether_core.errors import ConfigError, ConfigIssue
from noether_core.run.param_groups import parameter_groups
from noether_core.run.torch_kinds import (
    KindProblem,
    display_name,
    optimizer_arguments,
    optimizer_class,
    scheduler_arguments,
    scheduler_class,
    takes,
)


def warmup_updates(cfg: ScheduleConfig, total_updates: int) -> int:
    if cfg.warmup_fraction is not None:
        return int(cfg.warmup_fraction * total_updates)
    return cfg.warmup_updates


def schedule_factor(cfg: ScheduleConfig | None, update: int, total_updates: int) -> float:
    """Multiplier of the base value for the update with 0-based index ``update``."""
    if cfg is None or not cfg.builtin:
        return 1.0
    warmup = warmup_updates(cfg, total_updates)
    if update < warmup:
        return (update + 1) / warmup
    if cfg.kind == "constant":
        return 1.0
    span = max(total_updates - warmup - 1, 1)
    progress = min(max((update - warmup) / span, 0.0), 1.0)
    end = cfg.end_factor
    if cfg.kind == "linear":
        return 1.0 - (1.0 - end) * progress
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, model_name: str, cfg: OptimizerConfig) -> torch.optim.Optimizer | None:
    """One optimizer over every trainable parameter, in the groups of
    :func:`~noether_core.run.param_groups.parameter_groups`; ``None`` if all is frozen. Raises
    :class:`ConfigError` for a config the optimizer refuses."""
    try:
        cls = optimizer_class(cfg.kind)
        arguments = optimizer_arguments(cls, cfg)
    except KindProblem as exc:
        raise ConfigError([ConfigIssue(f"optimizer.{exc.field}", str(exc))]) from None
    groups = parameter_groups(model, model_name, cfg, decays=takes(cls, "weight_decay"))
    if not groups:
        return None
    try:
        return cls(groups, **arguments)
    except Exception as exc:
        reason = f"{display_name(cls)} refuses the model's parameters: {type(exc).__name__}: {exc}"
        raise ConfigError([ConfigIssue("optimizer.kind", reason)]) from exc


class TorchSchedule:
    """A ``torch.optim.lr_scheduler`` scheduler driven by the update counter.

    ``step()`` runs once per update (``interval: update``) or once per epoch (``interval: epoch``), in
    :meth:`before_update` of the update that follows, so that while an update runs, and in its
    ``after_update`` event, the groups hold the learning rate that update uses (what ``LrCallback``
    logs): the same sequence as the usual ``optimizer.step(); scheduler.step()`` loop, one
    ``step()`` behind it at any moment. Its ``state_dict()`` goes into the trainer state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, updates_per_epoch: int) -> None:
        cls = scheduler_class(cfg.kind)
        self.scheduler: lr_scheduler.LRScheduler = cls(optimizer, **scheduler_arguments(cls, cfg))
        self.every = updates_per_epoch if cfg.interval == "epoch" else 1

    def before_update(self, update: int) -> None:
        """Step the scheduler before the update with 0-based index ``update`` when it is due."""
        if update and update % self.every == 0:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(dict(state))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer | None, cfg: OptimizerConfig, updates_per_epoch: int
) -> TorchSchedule | None:
    """The torch scheduler of ``cfg.lr_schedule``; ``None`` for a built-in schedule, none, or no
    optimizer. Raises :class:`ConfigError` for one that cannot be built."""
    schedule = cfg.lr_schedule
    if optimizer is None or schedule is None or schedule.builtin:
        return None
    try:
        return TorchSchedule(optimizer, schedule, updates_per_epoch)
    except KindProblem as exc:
        raise ConfigError([ConfigIssue(f"optimizer.lr_schedule.{exc.field}", str(exc))]) from None
    except Exception as exc:
        reason = f"building scheduler {schedule.kind!r} failed: {type(exc).__name__}: {exc}"
        raise ConfigError([ConfigIssue("optimizer.lr_schedule", reason)]) from exc


def apply_schedules(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, update: int, total_updates: int
) -> None:
    """Set each group's lr and weight decay for the update with 0-based index ``update``, for the
    built-in schedules that are set (a torch scheduler sets the lr itself)."""
    if cfg.lr_schedule is not None and cfg.lr_schedule.builtin:
        lr_factor = schedule_factor(cfg.lr_schedule, update, total_updates)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor
    if cfg.wd_schedule is not None:
        wd_factor = schedule_factor(cfg.wd_schedule, update, total_updates)
        for group in optimizer.param_groups:
            group["weight_decay"] = group["base_wd"] * wd_factor


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    grad_scaler: torch.amp.GradScaler,
    *,
    clip_grad_norm: float | None,
    clip_grad_value: float | None,
    skip: bool,
) -> torch.Tensor | None:
    """Unscale, clip (by value, then by norm), step and zero the gradients; with ``skip`` (a non-finite
    loss) only zero them. Returns the total gradient norm before clipping when ``clip_grad_norm``
    computed one, else ``None``."""
    grad_norm: torch.Tensor | None = None
    if not skip:
        if clip_grad_norm is not None or clip_grad_value is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            grad_scaler.unscale_(optimizer)
            if clip_grad_value is not None:
                torch.nn.utils.clip_grad_value_(params, clip_grad_value)
            if clip_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        if grad_scaler.is_enabled():
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:  # what a disabled scaler's step and update come down to, without the two calls
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


__all__ = [
    "TorchSchedule",
    "apply_schedules",
    "build_lr_scheduler",
    "build_optimizer",
    "optimizer_step",
    "schedule_factor",
    "warmup_updates",
]
