"""Evaluation: the data-iterating base, OfflineLoss, BestMetric, TrackAdditionalOutputs, final evaluations,
and the declared metric dependencies checked before a run.

The runs use a frozen ``y = 2x`` model on the ramp ``x = 0, 1, ..., n-1`` with ``y = 0``, so every loss
is known by hand: the squared error of sample ``x`` is ``4 x^2``.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import socket
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
import yaml
from tiny_runs import entry, fit, plan, ramp_config
from torch import nn
from torch.utils.data import DistributedSampler

from noether_core import CallbackConfig, ConfigError, hookimpl
from noether_core.cli import main
from noether_core.io.trackers import read_metrics
from noether_core.run.evaluation import (
    PeriodicDataIteratorCallback,
    batch_length,
    collate,
    gather_results,
    merge_rank_results,
    restore_dataset_order,
)
from noether_core.run.metric_dependencies import check_metric_dependencies
from noether_core.run.sampling import ShardBatches
from noether_core.run.train_step import StepOutput

# ------------------------------------------------------------------ data, model, steps and plugins by path


class PropertyRamp(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Samples ``{"x", "y", "big"}``; ``with_properties`` leaves out what is not asked for."""

    def __init__(self, size: int = 10, properties: frozenset[str] | None = None) -> None:
        self.size = size
        self.properties = properties

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"x": torch.tensor([float(i)]), "y": torch.zeros(1), "big": torch.zeros(100)}
        return {k: v for k, v in sample.items() if self.properties is None or k in self.properties}

    def with_properties(self, properties: frozenset[str]) -> PropertyRamp:
        return PropertyRamp(self.size, properties)


def two_losses(model: nn.Module, batch: Any) -> StepOutput:
    """``a``: squared error (``4x^2`` per sample), ``b``: absolute prediction (``2x``), and outputs."""
    x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
    pred = model(x)
    a = ((pred - y) ** 2).mean()
    b = pred.abs().mean()
    return StepOutput(total=a + b, losses={"a": a, "b": b}, outputs={"pred_mean": pred.mean(), "other": a})


CALLS = {"n": 0}


def counting_step(model: nn.Module, batch: Any) -> StepOutput:
    """Outputs ``calls`` (how often this process called it, plus 10 x rank) and ``xsum`` (sum of ``x``)."""
    CALLS["n"] += 1
    x, y = batch
    loss = ((model(x) - y) ** 2).mean()
    rank = int(os.environ.get("RANK", "0"))
    calls = torch.tensor(float(CALLS["n"] + 10 * rank))
    return StepOutput(total=loss, outputs={"calls": calls, "call_rank": calls, "xsum": x.sum()})


class Scripted:
    """Logs ``values[i]`` under ``key`` at its i-th evaluation (stateful, so it continues on resume)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        metric: str
        values: list[float]

    def __init__(self, config: Config) -> None:
        self.config = config
        self.i = 0

    @hookimpl
    def at_eval(self, trainer: Any) -> None:
        trainer.writer.add_scalar(self.config.metric, self.config.values[self.i])
        self.i += 1

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = state["i"]

    @classmethod
    def produces(cls, config: Config, run_config: Any) -> list[str]:
        return [config.metric]


class Collector(PeriodicDataIteratorCallback):
    """Gathers every sample's ``x`` and checks the order; keeps the last results."""

    def process_data(self, batch: Any, *, model: nn.Module, trainer: Any) -> Any:
        assert not model.training
        assert not torch.is_grad_enabled()
        x, _ = batch
        return {"x": x[:, 0], "n": torch.tensor(len(x))}

    def process_results(self, results: Any, *, trainer: Any, model: Any, counter: Any, interval: Any) -> None:
        self.results = results
        x = results["x"]
        trainer.writer.add_scalar("collected/rows", float(len(x)))
        trainer.writer.add_scalar("collected/in_order", float(torch.equal(x, torch.arange(len(x)).float())))
        trainer.writer.add_scalar("collected/batches", float(results["n"].sum()))


# ------------------------------------------------------------------------------------------ helpers


def validate(tmp_path: Path, raw: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    status = main(["config", "validate", str(path)])
    return status, capsys.readouterr().err


SQ = [4.0 * x * x for x in range(10)]  # squared error of each val sample
EXPECTED_A = sum(SQ) / 10  # 114: the sample mean (batch means 14, 126, 290 would average to 143.3)
EXPECTED_B = sum(2.0 * x for x in range(10)) / 10  # 9


# --------------------------------------------------------------------------------------- collation


def test_collate_keeps_structure_and_types() -> None:
    batches = [
        {
            "rows": torch.tensor([1.0, 2.0]),
            "pair": (torch.tensor(0.5), [torch.ones(2, 3)]),
            "n": 2,
            "s": "a",
            "none": None,
        },
        {
            "rows": torch.tensor([3.0]),
            "pair": (torch.tensor(1.5), [torch.zeros(1, 3)]),
            "n": 1,
            "s": "b",
            "none": None,
        },
    ]
    out = collate(batches)
    assert torch.equal(out["rows"], torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(out["pair"], tuple)
    assert isinstance(out["pair"][1], list)
    assert torch.equal(out["pair"][0], torch.tensor([0.5, 1.5]))  # 0-dim: one value per batch
    assert out["pair"][1][0].shape == (3, 3)
    assert torch.equal(out["n"], torch.tensor([2, 1]))
    assert out["s"] == ["a", "b"]
    assert out["none"] is None


def test_collate_rejects_batches_of_different_shape() -> None:
    with pytest.raises(ValueError, match=r"result\['a'\]: every batch must return a tensor with 1 dim"):
        collate([{"a": torch.ones(2)}, {"a": torch.tensor(1.0)}])
    with pytest.raises(ValueError, match="dict with the keys"):
        collate([{"a": 1}, {"b": 1}])


def test_per_sample_rows_must_match_the_samples() -> None:
    single = gather_results([torch.ones(2), torch.ones(2)], _no_dist(), 4, local_samples=4)
    assert single.shape == (4,)
    with pytest.raises(ValueError, match="one row per sample"):
        gather_results([torch.ones(3), torch.ones(3)], _no_dist(), 4, local_samples=4)


def _no_dist() -> Any:
    from noether_core.run.distributed import DistInfo

    return DistInfo()


def test_two_rank_gather_restores_dataset_order_and_drops_padding() -> None:
    n, world, batch = 7, 2, 3
    dataset = list(range(n))
    per_rank = []
    for rank in range(world):
        indices = list(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False))  # padded
        batches = [torch.tensor(indices[i : i + batch]) for i in range(0, len(indices), batch)]
        per_rank.append(
            [{"idx": b, "pair": (b * 10.0, torch.tensor(len(b))), "tag": f"r{rank}"} for b in batches]
        )
    assert [len(b) for b in per_rank] == [2, 2]  # 4 indices each: one of them is padding
    merged = merge_rank_results(per_rank, n)
    assert torch.equal(merged["idx"], torch.arange(n))
    assert torch.equal(merged["pair"][0], torch.arange(n) * 10.0)
    assert torch.equal(merged["pair"][1], torch.tensor([3, 1, 3, 1]))  # per batch: rank 0's, then rank 1's
    assert merged["tag"] == ["r0", "r0", "r1", "r1"]


@pytest.mark.parametrize(("n", "world"), [(10, 3), (7, 3), (3, 3), (2, 3), (5, 4)])
def test_uneven_shares_gather_in_dataset_order_without_the_padding(n: int, world: int) -> None:
    dataset = list(range(n))
    per_rank = []
    for rank in range(world):
        indices = list(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False))  # padded
        per_rank.append([{"idx": torch.tensor(indices[i : i + 2])} for i in range(0, len(indices), 2)])
    merged = merge_rank_results(per_rank, n)
    assert torch.equal(merged["idx"], torch.arange(n))  # each sample once, the repeated ones dropped


@pytest.mark.parametrize(("n", "world", "batch"), [(10, 3, 2), (7, 3, 4), (2, 3, 1), (5, 4, 3), (9, 2, 2)])
def test_a_shard_deals_as_distributed_sampler_and_never_mixes_padding_into_a_batch(
    n: int, world: int, batch: int
) -> None:
    for rank in range(world):
        batches = list(ShardBatches(n, batch, rank=rank, world_size=world))
        assert len(batches) == len(ShardBatches(n, batch, rank=rank, world_size=world))
        dealt = list(DistributedSampler(list(range(n)), num_replicas=world, rank=rank, shuffle=False))
        assert [i for b in batches for i in b] == dealt
        real = len(range(rank, n, world))  # the samples that are this rank's own
        boundaries = set(itertools.accumulate(len(b) for b in batches))
        assert real in boundaries | {0}  # the padding starts a batch of its own


def test_restore_dataset_order_needs_one_row_per_sample() -> None:
    assert torch.equal(
        restore_dataset_order([torch.tensor([0, 2]), torch.tensor([1, 0])], 3), torch.arange(3)
    )
    with pytest.raises(ValueError, match="same number of rows"):
        restore_dataset_order([torch.tensor([0, 2]), torch.tensor([1])], 3)
    with pytest.raises(ValueError, match="cannot cover 5 samples"):
        restore_dataset_order([torch.tensor([0, 2]), torch.tensor([1, 3])], 5)


def test_batch_length_finds_the_first_tensor_with_rows() -> None:
    assert batch_length({"meta": torch.tensor(1), "x": (torch.ones(3, 2),)}) == 3
    assert batch_length(["a", 1]) is None


# ---------------------------------------------------------------------------------------- offline loss


def test_offline_loss_weights_samples_not_batches(tmp_path: Path) -> None:
    raw = ramp_config(train_step="test_evaluation:two_losses")
    raw["callbacks"] = [
        {
            "kind": "OfflineLossCallback",
            "dataset_key": "val",
            "every_n_updates": 2,
            "output_patterns_to_log": ["pred"],
        }
    ]
    trainer, records = fit(tmp_path, raw)
    loader = entry(trainer, "OfflineLossCallback").loader(trainer)
    assert loader.batch_size == trainer.micro_batch_size == 4  # batches of 4, 4 and 2
    assert loader is trainer.data.eval_loader("val", 4)  # the run's loader, kept alive
    assert records.values("loss/val/a") == {2: pytest.approx(EXPECTED_A), 4: pytest.approx(EXPECTED_A)}
    assert records.values("loss/val/b")[2] == pytest.approx(EXPECTED_B)
    assert records.values("loss/val/total")[4] == pytest.approx(EXPECTED_A + EXPECTED_B)
    assert records.values("pred_mean/val")[2] == pytest.approx(9.0)  # mean prediction 2x
    assert "other/val" not in records.records[0]  # no pattern matches it
    assert not any(
        k.startswith("lossdiff/") for r in records.records for k in r
    )  # no online loss in this run


def test_offline_loss_own_batch_size_max_size_and_properties(tmp_path: Path) -> None:
    raw = ramp_config(train_step="test_evaluation:two_losses")
    raw["datasets"]["props"] = {"kind": "test_evaluation:PropertyRamp"}
    raw["callbacks"] = [
        {
            "kind": "OfflineLossCallback",
            "dataset_key": "val",
            "every_n_updates": 4,
            "batch_size": 3,
            "max_size": 5,
            "name": "first5",
        },
        {
            "kind": "OfflineLossCallback",
            "dataset_key": "props",
            "every_n_updates": 4,
            "properties": ["x", "y"],
            "name": "props",
        },
        {"kind": "test_evaluation:Collector", "dataset_key": "val", "every_n_updates": 4, "batch_size": 3},
    ]
    trainer, records = fit(tmp_path, raw)
    assert [records.values(f"collected/{k}")[4] for k in ("rows", "in_order", "batches")] == [10, 1, 10]
    assert records.values("loss/val/a") == {4: pytest.approx(sum(SQ[:5]) / 5)}
    assert records.values("loss/props/a") == {4: pytest.approx(EXPECTED_A)}
    first = next(iter(entry(trainer, "props").loader(trainer)))
    assert set(first) == {"x", "y"}


def test_properties_on_a_dataset_without_support_is_a_clear_error(tmp_path: Path) -> None:
    raw = ramp_config()
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 1, "properties": ["x"]}
    ]
    with pytest.raises(Exception, match="has no with_properties"):
        fit(tmp_path, raw)


def test_lossdiff_uses_the_online_loss_of_the_same_step(tmp_path: Path) -> None:
    raw = ramp_config()
    raw["callbacks"] = [
        {
            "kind": "test_evaluation:Scripted",
            "metric": "loss/online/total/U2",
            "values": [100.0, 50.0],
            "every_n_updates": 2,
        },
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2},
    ]
    _, records = fit(tmp_path, raw)
    assert records.values("lossdiff/val/total") == {
        2: pytest.approx(EXPECTED_A - 100),
        4: pytest.approx(EXPECTED_A - 50),
    }


def test_lossdiff_in_the_default_set_up(tmp_path: Path) -> None:
    """The trainer's default online-loss entries run first, so intervals that align give a lossdiff."""
    raw = ramp_config(
        max_updates=6, add_default_callbacks=True, log_every_n_updates=2, track_every_n_updates=1
    )
    raw["callbacks"] = [{"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2}]
    _, records = fit(tmp_path, raw)
    diffs = records.values("lossdiff/val/total")
    online = records.values("loss/online/total/U2")
    assert sorted(diffs) == [2, 4, 6]
    for update, diff in diffs.items():
        assert diff == pytest.approx(EXPECTED_A - online[update], rel=1e-5)


def test_final_evaluation_with_eval_at_end(tmp_path: Path) -> None:
    raw = ramp_config(max_updates=4)
    raw["datasets"]["v1"] = {"kind": "tiny_runs:ramp", "kwargs": {"size": 1}}
    raw["datasets"]["v2"] = {"kind": "tiny_runs:ramp", "kwargs": {"size": 2}}
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 3, "eval_at_end": True},
        {"kind": "OfflineLossCallback", "dataset_key": "v1", "every_n_updates": 3},
        {"kind": "OfflineLossCallback", "dataset_key": "v2", "every_n_updates": 2, "eval_at_end": True},
    ]
    _, records = fit(tmp_path, raw)
    # the final evaluation is a step of its own at the last update, after the regular one
    assert [(r["update"], sorted(k for k in r if k.endswith("/total"))) for r in records.records] == [
        (2, ["loss/v2/total"]),
        (3, ["loss/v1/total", "loss/val/total"]),
        (4, ["loss/v2/total"]),  # due at the last update anyway: not run again
        (4, ["loss/val/total"]),
    ]
    assert records.records[-1]["loss/val/total"] == pytest.approx(EXPECTED_A)


# ----------------------------------------------------------------------------------------- best metric


def best_metric_config(values: list[float], targets: list[float]) -> dict[str, Any]:
    raw = ramp_config(max_updates=len(values), batch_size=4)
    raw["callbacks"] = [
        {
            "kind": "test_evaluation:Scripted",
            "metric": "loss/val/total",
            "values": values,
            "every_n_updates": 1,
            "name": "val",
        },
        {
            "kind": "test_evaluation:Scripted",
            "metric": "loss/test/total",
            "values": targets,
            "every_n_updates": 1,
            "name": "test",
        },
        {
            "kind": "BestMetricCallback",
            "every_n_updates": 1,
            "source_metric_key": "loss/val/total",
            "target_metric_keys": ["loss/test/total"],
            "optional_target_metric_keys": ["loss/val/total", "acc/none"],
        },
    ]
    return raw


def test_best_metric_logs_targets_at_the_best_step(tmp_path: Path) -> None:
    raw = best_metric_config([3.0, 2.0, 2.5, 1.0, math.nan, 1.0], [30.0, 20.0, 25.0, 10.0, 0.0, 5.0])
    trainer, records = fit(tmp_path, raw)
    at_best = records.values("loss/test/total/at_best/loss/val/total")
    assert list(at_best.values()) == [30.0, 20.0, 20.0, 10.0, 10.0, 10.0]  # NaN and a tie are no improvement
    assert records.values("loss/val/total/at_best/loss/val/total")[6] == 1.0
    assert not any("acc/none" in k for r in records.records for k in r)
    assert entry(trainer, "BestMetricCallback").state_dict() == {
        "best": 1.0,
        "at_best": {"loss/test/total": 10.0, "loss/val/total": 1.0},
    }


def test_best_metric_state_survives_resume(tmp_path: Path) -> None:
    raw = best_metric_config([3.0, 1.0, 2.5, 2.0, 1.5, 0.5], [30.0, 10.0, 25.0, 20.0, 15.0, 5.0])
    raw["callbacks"].append({"kind": "sample_plugins:SignalAt", "update": 3})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--output-dir", str(tmp_path), "--run-id", "r"]) == 130
    assert main(["train", "--resume", str(tmp_path / "r"), "--set", "callbacks[3].update=0"]) == 0
    at_best = {
        r["update"]: r["loss/test/total/at_best/loss/val/total"]
        for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
    }
    assert at_best == {1: 30.0, 2: 10.0, 3: 10.0, 4: 10.0, 5: 10.0, 6: 5.0}


def test_best_metric_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = ramp_config()
    raw["callbacks"] = [
        {"kind": "BestMetricCallback", "every_n_epochs": 1, "source_metric_key": "loss/val/total"}
    ]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "callbacks[0]: set target_metric_keys or optional_target_metric_keys" in err
    # the how-to guide's spelling: metric_key is not a field of BestMetricCallback
    raw["callbacks"] = [
        {
            "kind": "noether.core.callbacks.BestMetricCallback",
            "every_n_epochs": 1,
            "metric_key": "val/accuracy",
        }
    ]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "callbacks[0].metric_key: unknown field; did you mean 'source_metric_key'?" in err


# ------------------------------------------------------------------------------------- track outputs


def test_track_outputs_mean_and_last_under_accumulation(tmp_path: Path) -> None:
    CALLS["n"] = 0
    raw = ramp_config(max_updates=4, accumulation_steps=2, train_step="test_evaluation:counting_step")
    raw["callbacks"] = [
        {
            "kind": "TrackAdditionalOutputsCallback",
            "every_n_epochs": 1,
            "keys": ["calls", "xsum"],
            "patterns": ["call"],
            "name": "mean",
        },
        {
            "kind": "TrackAdditionalOutputsCallback",
            "every_n_updates": 2,
            "keys": ["calls"],
            "patterns": ["calls"],
            "reduce": "last",
            "name": "last",
            "save_output": True,
        },
    ]
    trainer, records = fit(tmp_path, raw)
    # 2 updates per epoch, 2 micro-batches each: calls 1-4 in epoch 1, 5-8 in epoch 2
    assert records.values("calls/E1") == {2: 2.5, 4: 6.5}
    assert records.values("call_rank/E1") == {2: 2.5, 4: 6.5}
    assert records.values("xsum/E1") == {2: 7.0, 4: 7.0}  # each epoch sees x = 0..7 once, in 4 micro-batches
    assert records.values("calls/U2") == {2: 3.5, 4: 7.5}  # the last update's two micro-batches
    assert entry(trainer, "last")._counts == {"calls": 2}  # one value per micro-batch, even if matched twice
    saved = sorted(p.name for p in (tmp_path / "run" / "update_outputs").iterdir())
    assert saved == ["calls_U2_E1_U2_S8.th", "calls_U2_E2_U4_S16.th"]
    assert torch.load(tmp_path / "run" / "update_outputs" / saved[1]).item() == 7.5  # calls 7 and 8


def test_track_outputs_needs_keys_or_patterns_and_names_missing_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = ramp_config()
    raw["callbacks"] = [{"kind": "TrackAdditionalOutputsCallback", "every_n_updates": 1}]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "set keys or patterns" in err
    raw = ramp_config(train_step="test_evaluation:counting_step")
    raw["callbacks"] = [{"kind": "TrackAdditionalOutputsCallback", "every_n_updates": 1, "keys": ["nope"]}]
    with pytest.raises(Exception, match="returned no output 'nope'; it returned calls, call_rank, xsum"):
        fit(tmp_path, raw)


# ------------------------------------------------------------------------------- declared dependencies


def test_missing_producer_fails_validation_with_the_consumer_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = ramp_config()
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "train", "every_n_epochs": 1},
        {
            "kind": "BestMetricCallback",
            "every_n_epochs": 1,
            "source_metric_key": "loss/val/total",
            "target_metric_keys": ["loss/train/total"],
        },
    ]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert (
        "callbacks[1]: BestMetricCallback (every_n_epochs=1) reads 'loss/val/total' in the same step" in err
    )
    assert "no entry listed before it logs it" in err
    assert "list {kind: OfflineLossCallback, dataset_key: val, every_n_epochs: 1} before it" in err
    assert "callbacks[0] OfflineLossCallback (every_n_epochs=1): loss/train/*, lossdiff/train/*" in err
    assert "loss/train/total'" not in err  # the target is produced


def test_producer_at_another_interval_or_after_the_consumer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = {
        "kind": "BestMetricCallback",
        "every_n_updates": 2,
        "source_metric_key": "loss/val/total",
        "optional_target_metric_keys": ["x"],
    }
    raw = ramp_config()
    raw["callbacks"] = [{"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 4}, best]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "not due at 1 of its 2 evaluations (first at update 2)" in err
    raw["callbacks"] = [{"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_samples": 4}, best]
    assert validate(tmp_path, raw, capsys)[0] == 0  # every update (4 samples each) covers every other one
    raw["callbacks"] = [best, {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2}]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "callbacks[1] OfflineLossCallback logs it but is listed after it" in err


def test_eval_at_end_consumer_needs_a_producer_in_the_final_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = ramp_config(max_updates=4, train_step="test_evaluation:two_losses")
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 3},
        {
            "kind": "BestMetricCallback",
            "every_n_updates": 3,
            "source_metric_key": "loss/val/total",
            "target_metric_keys": ["loss/val/a"],
            "eval_at_end": True,
        },
    ]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "set eval_at_end: true and every_n_updates=3 on its producer" in err
    raw["callbacks"][0]["eval_at_end"] = True
    _, records = fit(tmp_path, raw)
    assert records.values("loss/val/a/at_best/loss/val/total") == {
        3: pytest.approx(EXPECTED_A),
        4: pytest.approx(EXPECTED_A),
    }


def test_best_checkpoint_and_ema_children_take_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offline = {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2}
    best = {
        "kind": "BestMetricCallback",
        "every_n_updates": 2,
        "source_metric_key": "loss/val/total",
        "target_metric_keys": ["loss/val/total"],
        "name": "child_best",
    }
    raw = ramp_config()
    raw["callbacks"] = [
        {
            "kind": "EmaCallback",
            "every_n_updates": 2,
            "target_factors": [0.9],
            "eval_callbacks": [offline, best],
        },
        {"kind": "BestCheckpointCallback", "every_n_updates": 2, "metric_key": "ema=0.9/loss/val/total"},
    ]
    assert validate(tmp_path, raw, capsys)[0] == 0
    raw["callbacks"][0]["eval_callbacks"] = [best, offline]  # the child reads its sibling: order matters
    raw["callbacks"][1]["metric_key"] = "loss/val/total"  # the live model's loss: nobody logs it
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert (
        "callbacks[0].eval_callbacks[0]: BestMetricCallback (every_n_updates=2) reads 'loss/val/total'" in err
    )
    assert "callbacks[0].eval_callbacks[1] OfflineLossCallback logs it but is listed after it" in err
    assert "callbacks[1]: BestCheckpointCallback (every_n_updates=2) reads 'loss/val/total'" in err


def test_undeclared_entries_turn_errors_into_warnings() -> None:
    raw = ramp_config()
    raw["callbacks"] = [
        {"kind": "sample_plugins:Recorder", "every_n_updates": 1},
        {"kind": "MetricEarlyStopper", "every_n_updates": 1, "metric_key": "rec/U1", "tolerance": 1},
    ]
    warnings = check_metric_dependencies(plan(raw))
    assert len(warnings) == 1
    assert "unless callbacks[0] sample_plugins:Recorder" in warnings[0]


def test_unknown_dataset_key_is_a_config_error(tmp_path: Path) -> None:
    raw = ramp_config()
    raw["callbacks"] = [{"kind": "OfflineLossCallback", "dataset_key": "vall", "every_n_epochs": 1}]
    with pytest.raises(
        ConfigError, match=r"callbacks\[0\].dataset_key: no dataset 'vall'; did you mean 'val'\?"
    ):
        plan(raw, check=True)


SEED_ENTRIES = """
callbacks:
  - kind: noether.training.callbacks.OfflineLossCallback
    every_n_epochs: 1
    dataset_key: val
  - kind: noether.training.callbacks.OfflineLossCallback
    every_n_epochs: 1
    dataset_key: test
    name: test_loss
  - kind: noether.core.callbacks.BestMetricCallback
    every_n_epochs: 1
    source_metric_key: loss/val/total
    target_metric_keys:
      -  loss/test/total
  - kind: noether.core.callbacks.TrackAdditionalOutputsCallback
    name: TrackAdditionalOutputsCallback
    every_n_updates: 1
    keys:
      - "surface_pressure_loss"
  - kind: noether.core.callbacks.FixedEarlyStopper
    stop_at_epoch: 10
    name: FixedEarlyStopper
"""


def test_seed_examples_validate_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = ramp_config()
    raw["datasets"]["test"] = raw["datasets"]["val"]
    raw.update(yaml.safe_load(SEED_ENTRIES))
    status, err = validate(tmp_path, raw, capsys)
    assert status == 0, err


# ---------------------------------------------------------------------------------- two real ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    from noether_core.run.distributed import shutdown

    torch.set_num_threads(1)
    CALLS["n"] = 0  # a forked child starts with this process's count
    # two samples of the train set per rank and update; an evaluation set the ranks do not divide evenly
    raw = ramp_config(max_updates=2, batch_size=2 * world, train_step="test_evaluation:counting_step")
    raw["datasets"]["val"]["kwargs"]["size"] = EVAL_SIZES[world]
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2, "batch_size": 2},
        {"kind": "test_evaluation:Collector", "dataset_key": "val", "every_n_updates": 2, "batch_size": 2},
        {"kind": "TrackAdditionalOutputsCallback", "every_n_updates": 2, "keys": ["calls"], "reduce": "last"},
    ]
    trainer, records = fit(Path(out) / f"rank{rank}", raw)
    Path(out, f"rank{rank}.json").write_text(json.dumps(records.records))
    shutdown(trainer.dist)


#: The evaluation set's size for each number of ranks: 2 ranks hold 5 rows each (one of them padding),
#: 3 ranks 4 each (two of the 12 padding).
EVAL_SIZES = {2: 9, 3: 10}


@pytest.mark.parametrize("world", [2, 3])
def test_several_processes_gather_in_dataset_order(tmp_path: Path, world: int) -> None:
    # fork: the children start in a fraction of a second (spawn would import torch twice more); they
    # compute on one thread, so no thread pool copied from this process is ever used
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, world, port, str(tmp_path))) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in procs] == [0] * world
    rows = json.loads((tmp_path / "rank0.json").read_text())
    for rank in range(1, world):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == []  # only rank 0 tracks
    (last,) = [r for r in rows if r["update"] == 2]
    n = EVAL_SIZES[world]
    assert last["loss/val/total"] == pytest.approx(sum(SQ[:n]) / n)
    assert last["collected/rows"] == n
    assert last["collected/in_order"] == 1.0
    # per-batch values are not de-padded: every rank's rows, padding included
    assert last["collected/batches"] == -(-n // world) * world
    # the last update's value (2 calls, plus 10 x rank), averaged over the ranks
    assert last["calls/U2"] == pytest.approx(sum(2 + 10 * rank for rank in range(world)) / world)
