"""Optimizer and value schedules (learning rate, weight decay) from config.

Schedules are pure functions of the update index, so resume restores them from the counter alone.
Each trainable part of a composite model gets its own parameter group named after the part, which is
what ``optim/lr/{model}/{group}`` metric keys refer to.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from noether_core.config.schema import OptimizerConfig, ScheduleConfig
from noether_core.run.models import named_models


def warmup_updates(cfg: ScheduleConfig, total_updates: int) -> int:
    if cfg.warmup_fraction is not None:
        return int(cfg.warmup_fraction * total_updates)
    return cfg.warmup_updates


def schedule_factor(cfg: ScheduleConfig | None, update: int, total_updates: int) -> float:
    """Multiplier of the base value for the update with 0-based index ``update``."""
    if cfg is None:
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
    """One optimizer over every trainable parameter, a group per trainable part; ``None`` if all frozen."""
    groups = []
    for name, part in named_models(model, model_name):
        params = [p for p in part.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "name": name, "base_lr": cfg.lr, "base_wd": cfg.weight_decay})
    if not groups:
        return None
    if cfg.kind == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def apply_schedules(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, update: int, total_updates: int
) -> None:
    """Set each group's lr and weight decay for the update with 0-based index ``update``."""
    lr_factor = schedule_factor(cfg.lr_schedule, update, total_updates)
    wd_factor = schedule_factor(cfg.wd_schedule, update, total_updates)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_factor
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
        grad_scaler.step(optimizer)
        grad_scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


__all__ = ["apply_schedules", "build_optimizer", "optimizer_step", "schedule_factor", "warmup_updates"]
