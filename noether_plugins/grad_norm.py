"""``GradNormCallback``: the gradient norm of the model's parameters, their own norm, and the size of an
update relative to them.

At the updates where its interval is due it logs

* ``grad_norm/total``: the L2 norm over all gradients of the update, as the optimizer step receives them
  (summed over the micro-batches, averaged over ranks, loss scaling removed; before any clipping), the
  value ``torch.nn.utils.clip_grad_norm_`` returns;
* ``grad_norm/{module}`` for every top-level module of the model (``model.named_children()``) that has
  gradients, with ``per_module``;
* ``grad_norm/group/{group}`` for every optimizer parameter group that has gradients, with
  ``per_group``; ``{group}`` is the group's name as ``LrCallback`` writes it in ``optim/lr/{group}``;
* ``param_norm/total``: the L2 norm over the trainable parameters after the update, with ``param_norm``;
* ``update_ratio/total``: ``||θ_after - θ_before|| / ||θ_before||`` over the trainable parameters, the
  size of the update relative to the weights it changed, with ``update_ratio``.

It works whether or not ``trainer.clip_grad_norm`` is set. The gradients are read in
``after_accumulation`` of the update's last micro-batch (the optimizer step zeroes them before
``after_update``), only when the update is due; for ``update_ratio`` the trainable parameters are copied
there too (on the device: one copy of them, held from the last micro-batch to the tick of that one
update). Everything stays on the device until the scheduled tick logs it, where the writer brings it to
the host with the step's other values. An update skipped for a non-finite loss has no gradients: nothing
is logged for it. All its metrics are neutral.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import torch

from noether_core import CallbackConfig, hookimpl
from noether_plugins.lr import _group_name

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run, RunConfig


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.get_total_norm(tensors, norm_type=2.0)


class GradNormCallback:
    """Logs ``grad_norm/total`` (optionally per module and per parameter group), ``param_norm/total`` and
    (optionally) ``update_ratio/total``."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        per_module: bool = False
        """Also log ``grad_norm/{module}`` for each top-level module of the model."""
        per_group: bool = False
        """Also log ``grad_norm/group/{group}`` for each optimizer parameter group (named as in
        ``optim/lr/{group}``)."""
        param_norm: bool = True
        """Also log ``param_norm/total``, the norm of the trainable parameters after the update."""
        update_ratio: bool = False
        """Also log ``update_ratio/total``, ``||θ_after - θ_before|| / ||θ_before||`` of the update (keeps a
        copy of the trainable parameters on the device from the due update's last micro-batch to its
        tick)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # the due update's norms, on the device, until its tick logs them
        self._pending: dict[str, torch.Tensor] = {}
        # the trainable parameters before the due update (update_ratio), and that update
        self._before: list[torch.Tensor] = []
        self._before_update = -1

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        """``grad_norm/total``, ``grad_norm/{module}``, ``grad_norm/group/{group}`` (names known at run
        time), ``param_norm/total``, ``update_ratio/total``."""
        return ["grad_norm/*", "param_norm/total", "update_ratio/total"]

    @staticmethod
    def metric_directions(config: CallbackConfig) -> dict[str, str]:
        """Norms and ratios are never better higher or lower."""
        return {"grad_norm/*": "neutral", "param_norm/*": "neutral", "update_ratio/*": "neutral"}

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
        if config.per_module:
            for name, module in model.named_children():
                part = [p.grad for p in module.parameters() if p.grad is not None]
                if part:
                    pending[f"grad_norm/{name}"] = _norm(part)
        optimizer = trainer.optimizer
        if config.per_group and optimizer is not None:
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                part = [p.grad for p in group["params"] if p.grad is not None]
                if part:
                    name = _group_name(group, i, trainer.model_name, len(groups))
                    pending[f"grad_norm/group/{name}"] = _norm(part)
        scale = trainer.grad_scale
        if scale is not None:  # the step's update() changes the scale before the tick: divide now
            pending = {key: value / scale for key, value in pending.items()}
        self._pending = pending
        if config.update_ratio:
            self._before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
            self._before_update = counter.update + 1

    @hookimpl
    def at_eval(
        self, trainer: Run, model: torch.nn.Module, counter: Counter, config: Config, interval: EvalInterval
    ) -> None:
        if interval == "eval":
            return
        pending, self._pending = self._pending, {}
        before, self._before = self._before, []
        writer = trainer.writer
        for key, value in pending.items():
            writer.add_scalar(key, value)
        if not (config.param_norm or before):
            return
        params = [p.detach() for p in model.parameters() if p.requires_grad]
        if not params:
            return
        if config.param_norm:
            writer.add_scalar("param_norm/total", _norm(params))
        if before and self._before_update == counter.update and len(before) == len(params):
            change = _norm([after - old for after, old in zip(params, before, strict=True)])
            writer.add_scalar("update_ratio/total", change / _norm(before))
