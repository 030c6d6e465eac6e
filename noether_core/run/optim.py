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


__all__ = ["apply_schedules", "build_optimizer", "schedule_factor", "warmup_updates"]
