"""``ParamCountCallback``: trainable and frozen parameter counts of the model and its parts.

A module of ``@hookimpl`` functions (no config beyond ``kind``). Before training it writes three run
summaries per row, ``param_count/{X}/trainable``, ``param_count/{X}/frozen`` and ``param_count/{X}``
(their sum), and prints ``Parameter count of {X}: trainable=... frozen=...``.

Rows: ``X`` is the model's name (``trainer.model_name``) for the whole model; for a composite model
each part follows, recursively, named by its path (``classifier.encoder``, the same names as its
checkpoint files and optimizer groups). A parameter shared by two parts counts once in the whole model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import nn

from noether_core import CompositeModel, hookimpl

if TYPE_CHECKING:
    from noether_core import Run

log = logging.getLogger("noether")


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` element counts of ``module``'s parameters (each shared tensor once)."""
    trainable = frozen = 0
    for p in module.parameters():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def parameter_rows(model: nn.Module, name: str) -> Iterator[tuple[str, int, int]]:
    """``(name, trainable, frozen)`` for ``model`` and, if it is composite, every part below it."""
    yield (name, *count_parameters(model))
    if isinstance(model, CompositeModel):
        for part_name, part in model.parts.items():
            yield from parameter_rows(part, f"{name}.{part_name}")


def produces(config: object, run_config: object) -> list[str]:
    """Summaries only (``param_count/...``), no metrics."""
    return []


@hookimpl
def before_training(trainer: Run, model: nn.Module) -> None:
    for name, trainable, frozen in parameter_rows(model, trainer.model_name):
        trainer.writer.add_summary(f"param_count/{name}/trainable", trainable)
        trainer.writer.add_summary(f"param_count/{name}/frozen", frozen)
        trainer.writer.add_summary(f"param_count/{name}", trainable + frozen)
        log.info("Parameter count of %s: trainable=%d frozen=%d", name, trainable, frozen)
