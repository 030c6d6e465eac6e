"""OfflineLossCallback: the train step's losses over a whole dataset, in eval mode.

Logs ``loss/{dataset_key}/{name}`` for ``total`` and every named loss of the train step, as the mean over
samples: each batch's mean loss counts once per sample of the batch, so a short last batch weighs what
its samples weigh (and under several ranks the sampler's padding is dropped). When the online training
loss of the same interval was logged in this step (``loss/online/{name}/{I}``, by the trainer's default
entries, which run first), also logs ``lossdiff/{dataset_key}/{name}`` = offline - online.

Train-step outputs whose name contains one of ``output_patterns_to_log`` are logged as
``{name}/{dataset_key}`` (their mean over samples).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
import torch

from noether_core import (
    PeriodicDataIteratorCallback,
    PeriodicDataIteratorConfig,
    as_step_output,
    batch_length,
)

if TYPE_CHECKING:
    from noether_core import CallbackConfig, Counter, EvalInterval, Run, RunConfig

log = logging.getLogger("noether.offline_loss")


def _per_sample(value: Any, n: int, what: str) -> torch.Tensor:
    """``value`` as one row per sample: a batch mean is repeated for each of the ``n`` samples."""
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)
    tensor = tensor.float()
    if tensor.ndim == 0:
        return tensor.reshape(1).expand(n)
    if tensor.shape == (n,):
        return tensor
    raise ValueError(
        f"{what} must be a batch mean (0-dim) or one value per sample (shape ({n},)), "
        f"got shape {tuple(tensor.shape)}"
    )


class OfflineLossCallback(PeriodicDataIteratorCallback):
    """The train step's losses over ``dataset_key``: ``loss/{dataset}/{name}`` and ``lossdiff/...``."""

    @attrs.frozen(kw_only=True)
    class Config(PeriodicDataIteratorConfig):
        output_patterns_to_log: list[str] | None = None
        """Also log the train step's outputs whose name contains one of these, as ``{name}/{dataset_key}``."""

    config: Config

    def process_data(self, batch: Any, *, model: torch.nn.Module, trainer: Run) -> Any:
        n = batch_length(batch)
        if n is None:
            raise ValueError(f"cannot tell how many samples a batch of {self.config.dataset_key!r} holds")
        out = as_step_output(trainer.train_step(model, batch))
        losses = {"total": _per_sample(out.total, n, "the total loss")}
        for name, value in out.losses.items():
            losses[name] = _per_sample(value, n, f"loss {name!r}")
        outputs: dict[str, torch.Tensor] = {}
        patterns = self.config.output_patterns_to_log or []
        for name, value in (out.outputs or {}).items():
            if any(p in name for p in patterns):
                outputs[name] = _per_sample(value, n, f"output {name!r}")
        return losses, outputs

    def process_results(
        self,
        results: Any,
        *,
        trainer: Run,
        model: torch.nn.Module,
        counter: Counter,
        interval: EvalInterval,
    ) -> None:
        losses, outputs = results
        dataset = self.config.dataset_key
        writer = trainer.writer
        short = (
            self.config.interval.short if self.config.interval is not None and interval != "eval" else None
        )
        for name, values in losses.items():
            value = values.mean()
            writer.add_scalar(f"loss/{dataset}/{name}", value)
            if trainer.is_main:
                log.info("%sloss/%s/%s: %.5f", writer.prefix, dataset, name, value.item())
            online = writer.get(f"loss/online/{name}/{short}") if short is not None else None
            if online is not None:
                writer.add_scalar(f"lossdiff/{dataset}/{name}", value - online)
        for name, values in outputs.items():
            writer.add_scalar(f"{name}/{dataset}", values.mean())

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        dataset = getattr(config, "dataset_key", "*")
        patterns = [f"loss/{dataset}/*", f"lossdiff/{dataset}/*"]
        patterns += [f"*{p}*/{dataset}" for p in getattr(config, "output_patterns_to_log", None) or ()]
        return patterns


__all__ = ["OfflineLossCallback"]
