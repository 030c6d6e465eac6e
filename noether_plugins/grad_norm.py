"""``GradNormCallback``: the gradient norm of the model's parameters, and their own norm.

At the updates where its interval is due it logs

* ``grad_norm/total``: the L2 norm over all gradients of the update, as the optimizer step receives them
  (summed over the micro-batches, averaged over ranks, loss scaling removed; before any clipping), the
  value ``torch.nn.utils.clip_grad_norm_`` returns;
* ``grad_norm/{module}`` for every top-level module of the model (``model.named_children()``) that has
  gradients, with ``per_module``;
* ``param_norm/total``: the L2 norm over the trainable parameters after the update, with ``param_norm``.

It works whether or not ``trainer.clip_grad_norm`` is set. The gradients are read in
``after_accumulation`` of the update's last micro-batch (the optimizer step zeroes them before
``after_update``), only when the update is due; the norms stay on the device until the scheduled tick
logs them, where the writer brings them to the host with the step's other values. An update skipped for
a non-finite loss has no gradients: nothing is logged for it. All its metrics are neutral.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import torch

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run, RunConfig


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.get_total_norm(tensors, norm_type=2.0)


class GradNormCallback:
    """Logs ``grad_norm/total`` (optionally ``grad_norm/{module}``) and ``param_norm/total``."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        per_module: bool = False
        """Also log ``grad_norm/{module}`` for each top-level module of the model."""
        param_norm: bool = True
        """Also log ``param_norm/total``, the norm of the trainable parameters after the update."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # the due update's norms, on the device, until its tick logs them
        self._pending: dict[str, torch.Tensor] = {}

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        """``grad_norm/total``, ``grad_norm/{module}`` (names known at run time), ``param_norm/total``."""
        return ["grad_norm/*", "param_norm/total"]

    @staticmethod
    def metric_directions(config: CallbackConfig) -> dict[str, str]:
        """Norms are never better higher or lower."""
        return {"grad_norm/*": "neutral", "param_norm/*": "neutral"}

    @hookimpl
    def after_accumulation(
        self,
        trainer: Run,
        model: torch.nn.Module,
        counter: Counter,
        config: Config,
        accumulation_step: int,
        accumulation_steps: int,
    ) -> None:
        # the counter has not advanced yet: this micro-batch belongs to update counter.update + 1
        if accumulation_step != accumulation_steps - 1:
            return
        interval = config.interval
        if interval is None or not trainer.scheduler.is_due(interval, counter.update + 1):
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:  # a skipped update (non-finite loss) or a frozen model
            return
        pending = {"grad_norm/total": _norm(grads)}
        scale = trainer.grad_scale
        if config.per_module:
            for name, module in model.named_children():
                part = [p.grad for p in module.parameters() if p.grad is not None]
                if part:
                    pending[f"grad_norm/{name}"] = _norm(part)
        if scale is not None:  # the step's update() changes the scale before the tick: divide now
            pending = {key: value / scale for key, value in pending.items()}
        self._pending = pending

    @hookimpl
    def at_eval(self, trainer: Run, model: torch.nn.Module, config: Config, interval: EvalInterval) -> None:
        if interval == "eval":
            return
        pending, self._pending = self._pending, {}
        writer = trainer.writer
        for key, value in pending.items():
            writer.add_scalar(key, value)
        if config.param_norm:
            params = [p.detach() for p in model.parameters() if p.requires_grad]
            if params:
                writer.add_scalar("param_norm/total", _norm(params))
