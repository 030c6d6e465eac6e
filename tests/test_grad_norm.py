"""GradNormCallback on real tiny runs: the logged ``grad_norm/total`` is the L2 norm of the gradients the
optimizer step received at that update (recorded by :class:`GradRecorder` at the same point), with and
without clipping and with gradient accumulation; per-module norms add up to it; ``param_norm/total`` is
the norm of the parameters after the update."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_runs import composite_model, entry, fit, tiny_config

from noether_core import CallbackConfig, hookimpl


def _l2(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


class GradRecorder:
    """Keeps, per update, the L2 norm of the gradients as the optimizer step gets them, the trainer's own
    ``grad_norm`` (set only with clipping) and the norm of the parameters after the step."""

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config
        self.grads: dict[int, float] = {}
        self.clip_norms: dict[int, float | None] = {}
        self.params: dict[int, float] = {}

    @hookimpl
    def after_accumulation(
        self,
        trainer: Any,
        model: torch.nn.Module,
        counter: Any,
        accumulation_step: int,
        accumulation_steps: int,
    ) -> None:
        if accumulation_step == accumulation_steps - 1:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            # with fp16 the gradients carry the loss scale until the optimizer step unscales them
            scale = trainer.grad_scale
            self.grads[counter.update + 1] = _l2(grads) / (1.0 if scale is None else float(scale))

    @hookimpl
    def after_update(self, model: torch.nn.Module, counter: Any, grad_norm: torch.Tensor | None) -> None:
        self.clip_norms[counter.update] = None if grad_norm is None else float(grad_norm)
        self.params[counter.update] = _l2([p.detach() for p in model.parameters()])


@pytest.mark.parametrize(
    ("clip", "accumulation", "precision"),
    [(None, 1, "fp32"), (0.05, 1, "fp32"), (None, 2, "fp32"), (0.05, 1, "fp16")],
    ids=["no-clip", "clip", "accumulate", "fp16-clip"],
)
def test_grad_norm_equals_the_norm_of_the_gradients_at_that_update(
    tmp_path: Path, clip: float | None, accumulation: int, precision: str
) -> None:
    raw = tiny_config(max_epochs=1, clip_grad_norm=clip, accumulation_steps=accumulation, precision=precision)
    raw["callbacks"] = [
        {"kind": "test_grad_norm:GradRecorder"},
        {"kind": "GradNormCallback", "every_n_updates": 3, "per_module": True},
    ]
    trainer, records = fit(tmp_path, raw, expect="completed")
    recorder = entry(trainer, "test_grad_norm:GradRecorder")
    logged = records.values("grad_norm/total")
    assert sorted(logged) == [3, 6, 9, 12, 15]
    for update, value in logged.items():
        assert value > 0
        assert value == pytest.approx(recorder.grads[update], rel=1e-5)
        assert records.values("param_norm/total")[update] == pytest.approx(recorder.params[update], rel=1e-5)
        if clip is not None:  # before clipping, unscaled: what clip_grad_norm_ returned
            assert value == pytest.approx(recorder.clip_norms[update], rel=1e-5)
            assert value > clip  # so the clipping did act on these updates
        modules = [
            key
            for key in records.record_at(update)
            if key.startswith("grad_norm/") and key != "grad_norm/total"
        ]
        assert modules  # the MLP's top-level modules
        parts = math.sqrt(sum(records.values(key)[update] ** 2 for key in modules))
        assert parts == pytest.approx(value, rel=1e-5)
    assert trainer.metrics.ordinality("grad_norm/total") == "neutral"
    if precision == "fp16":  # the gradients did carry a loss scale, which the logged norms leave out
        scale = trainer.grad_scale
        assert scale is not None
        assert float(scale) > 1


def test_grad_norm_logs_only_at_its_interval(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=1)
    raw["callbacks"] = [{"kind": "GradNormCallback", "every_n_updates": 5, "param_norm": False}]
    _, records = fit(tmp_path, raw, expect="completed")
    assert sorted(records.values("grad_norm/total")) == [5, 10, 15]
    assert not records.values("param_norm/total")
    assert all("grad_norm/total" in r for r in records.records)  # every record is one of its ticks
    assert not any(k.startswith("grad_norm/") and k != "grad_norm/total" for r in records.records for k in r)


def test_per_group_norms_add_up_to_the_total(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=1)
    raw["model"] = composite_model()  # one optimizer group per part: clf.encoder, clf.head
    raw["callbacks"] = [{"kind": "GradNormCallback", "every_n_updates": 4, "per_group": True}]
    trainer, records = fit(tmp_path, raw, expect="completed")
    assert trainer.optimizer is not None
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["clf.encoder", "clf.head"]
    for update, total in records.values("grad_norm/total").items():
        record = records.record_at(update)
        groups = sorted(k for k in record if k.startswith("grad_norm/group/"))
        assert groups == ["grad_norm/group/clf.encoder", "grad_norm/group/clf.head"]
        assert all(record[k] > 0 for k in groups)
        assert sum(record[k] ** 2 for k in groups) == pytest.approx(total**2, rel=1e-5)
    assert sorted(records.values("grad_norm/total")) == [4, 8, 12, 16]
    assert trainer.metrics.ordinality("grad_norm/group/clf.head") == "neutral"


def test_per_group_norms_of_unnamed_groups_are_numbered(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=2, max_epochs=None)
    raw["callbacks"] = [
        {"kind": "test_grad_norm:SplitGroups"},
        {"kind": "GradNormCallback", "every_n_updates": 1, "per_group": True},
    ]
    _, records = fit(tmp_path, raw, expect="completed")
    record = records.record_at(2)
    groups = sorted(k for k in record if k.startswith("grad_norm/group/"))
    assert groups == ["grad_norm/group/model/0", "grad_norm/group/model/1"]  # the model name
    assert sum(record[k] ** 2 for k in groups) == pytest.approx(record["grad_norm/total"] ** 2, rel=1e-5)


class SplitGroups:
    """Splits the optimizer's one group into two unnamed ones, weights and biases, before training."""

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @hookimpl
    def before_training(self, trainer: Any) -> None:
        optimizer = trainer.optimizer
        (group,) = optimizer.param_groups
        params = group.pop("params")
        group.pop("name")
        optimizer.param_groups.clear()
        optimizer.add_param_group({**group, "params": [p for p in params if p.ndim > 1]})
        optimizer.add_param_group({**group, "params": [p for p in params if p.ndim <= 1]})


class WeightRecorder:
    """Keeps copies of the trainable parameters before (at the last micro-batch) and after each update."""

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config
        self.before: dict[int, list[torch.Tensor]] = {}
        self.after: dict[int, list[torch.Tensor]] = {}

    @staticmethod
    def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in model.parameters() if p.requires_grad]

    @hookimpl
    def after_accumulation(
        self, model: torch.nn.Module, counter: Any, accumulation_step: int, accumulation_steps: int
    ) -> None:
        if accumulation_step == accumulation_steps - 1:
            self.before[counter.update + 1] = self._weights(model)

    @hookimpl
    def after_update(self, model: torch.nn.Module, counter: Any) -> None:
        self.after[counter.update] = self._weights(model)


@pytest.mark.parametrize("accumulation", [1, 2], ids=["one-micro-batch", "accumulate"])
def test_update_ratio_is_the_change_of_the_weights_over_their_norm(tmp_path: Path, accumulation: int) -> None:
    raw = tiny_config(max_epochs=1, accumulation_steps=accumulation)
    raw["callbacks"] = [
        {"kind": "test_grad_norm:WeightRecorder"},
        {"kind": "GradNormCallback", "every_n_updates": 5, "update_ratio": True, "param_norm": False},
    ]
    trainer, records = fit(tmp_path, raw, expect="completed")
    recorder = entry(trainer, "test_grad_norm:WeightRecorder")
    logged = records.values("update_ratio/total")
    assert sorted(logged) == [5, 10, 15]
    for update, ratio in logged.items():
        before, after = recorder.before[update], recorder.after[update]
        by_hand = _l2([a - b for a, b in zip(after, before, strict=True)]) / _l2(before)
        assert 0 < ratio < 1
        assert ratio == pytest.approx(by_hand, rel=1e-5)
    assert not records.values("param_norm/total")
    assert trainer.metrics.ordinality("update_ratio/total") == "neutral"


def test_no_update_ratio_by_default(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=3, max_epochs=None)
    raw["callbacks"] = [{"kind": "GradNormCallback", "every_n_updates": 1}]
    trainer, records = fit(tmp_path, raw, expect="completed")
    assert not records.values("update_ratio/total")
    assert entry(trainer, "GradNormCallback")._before == []  # no copy of the weights kept
