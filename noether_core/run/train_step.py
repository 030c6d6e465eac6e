"""The train step contract: what turns a batch into losses.

A train step is a callable ``step(model, batch) -> StepOutput | Tensor``. The trainer calls it inside
autocast for the forward pass and calls ``backward`` on ``total``. Override it with
``trainer.train_step: package.module:my_step`` to compute several losses or return extra outputs::

    def my_step(model, batch):
        x, y = batch
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        reg = 1e-4 * logits.pow(2).mean()
        return StepOutput(total=ce + reg, losses={"ce": ce, "reg": reg},
                          outputs={"accuracy": (logits.argmax(1) == y).float().mean()})

``losses`` are logged as ``loss/online/{name}/...`` next to ``total``; ``outputs`` reach plugins
(``after_accumulation(outputs=...)``). Losses must be means over the batch; evaluators weight them by
the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn


@attrs.frozen
class StepOutput:
    """What a train step returns: ``total``, the loss that is backpropagated; ``losses``, named parts
    of it, logged as ``loss/online/{name}/...``; ``outputs``, extra values for plugins
    (``after_accumulation(outputs=...)``, ``TrackAdditionalOutputsCallback``)."""

    total: torch.Tensor
    losses: Mapping[str, torch.Tensor] = attrs.Factory(dict)
    outputs: Mapping[str, Any] | None = None


TrainStep = Callable[[nn.Module, Any], "StepOutput | torch.Tensor"]


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(x, y)`` of a tuple/list batch or a dict batch with keys ``x`` and ``y``."""
    if isinstance(batch, (tuple, list)):  # checked first: a Mapping isinstance check is slow
        x, y = batch
        return x, y
    if isinstance(batch, Mapping):
        return batch["x"], batch["y"]
    x, y = batch
    return x, y


def default_train_step(model: nn.Module, batch: Any) -> StepOutput:
    """Cross-entropy for integer targets, mean squared error otherwise."""
    x, y = split_batch(batch)
    pred = model(x)
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        loss = F.cross_entropy(pred, y)
    else:
        loss = F.mse_loss(pred, y)
    return StepOutput(total=loss)


def as_step_output(result: StepOutput | torch.Tensor) -> StepOutput:
    """``result`` as a :class:`StepOutput`: a bare loss tensor becomes its ``total``; anything else is a
    ``TypeError``."""
    if isinstance(result, StepOutput):
        return result
    if isinstance(result, torch.Tensor):
        return StepOutput(total=result)
    raise TypeError(f"a train step returns StepOutput or a loss tensor, got {type(result).__name__}")


__all__ = ["StepOutput", "TrainStep", "as_step_output", "default_train_step", "split_batch"]
