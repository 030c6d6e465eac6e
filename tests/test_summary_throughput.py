"""``ModelSummaryCallback`` and ``ThroughputCallback`` (issue #14) in real tiny runs: the layer table
against the model's own parameters, and throughput against the samples and wall time a recording plugin
of this module sees, also across a resume."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny_runs import UPE, composite_model, entry, fit, make_trainer, tiny_config, train
from torch import nn

from noether_core import CallbackConfig, hookimpl
from noether_core.cli import main
from noether_core.run.train_step import StepOutput, default_train_step, split_batch

# ------------------------------------------------------------------------------------ ModelSummary


def _module(model: nn.Module, path: str) -> nn.Module:
    part, _, rest = path.partition(".")
    module = model.parts[part]  # type: ignore[index]
    return module.get_submodule(rest) if rest else module


def _summary_run(tmp_path: Path, depth: int | None) -> tuple[list[dict[str, Any]], str, nn.Module]:
    raw = tiny_config(max_updates=1, max_epochs=None)
    raw["model"] = composite_model(frozen_encoder=True)
    raw["callbacks"] = [{"kind": "ModelSummaryCallback", **({} if depth is None else {"depth": depth})}]
    assert train(tmp_path, raw) == 0
    run_dir = tmp_path / "r"
    rows = yaml.safe_load((run_dir / "summary.yaml").read_text())["summary"]["model_summary"]
    model = make_trainer(tmp_path, raw, "model").model  # the same config builds the same shapes
    return rows, (run_dir / "log.txt").read_text(), model


def _expected(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def test_model_summary_lists_the_top_level_parts_by_default(tmp_path: Path) -> None:
    rows, log_text, model = _summary_run(tmp_path, None)
    assert [(r["name"], r["type"]) for r in rows] == [("encoder", "MLP"), ("head", "MLP")]
    for row in rows:
        params, trainable = _expected(_module(model, row["name"]))
        assert (row["params"], row["trainable"]) == (params, trainable)
    encoder, head = rows
    assert encoder["params"] > 0
    assert encoder["trainable"] == 0  # frozen
    assert head["trainable"] == head["params"] > 0
    total = sum(p.numel() for p in model.parameters())
    assert f"total params: {total:,}, trainable: {head['params']:,}" in log_text
    assert "encoder  MLP" in log_text


def test_model_summary_depth_2_shows_the_nested_modules(tmp_path: Path) -> None:
    rows, log_text, model = _summary_run(tmp_path, 2)
    names = [r["name"] for r in rows]
    nested = [f"encoder.{n}" for n, _ in model.parts["encoder"].named_children()]  # type: ignore[index]
    assert nested
    assert names[: 1 + len(nested)] == ["encoder", *nested]
    assert "head" in names
    assert any(n.startswith("head.") for n in names)
    for row in rows:
        module = _module(model, row["name"])
        assert row["type"] == type(module).__name__
        assert (row["params"], row["trainable"]) == _expected(module)
        if row["name"].startswith("encoder"):
            assert row["trainable"] == 0
    assert sum(r["params"] for r in rows if r["name"].count(".") == 1) == sum(
        r["params"] for r in rows if "." not in r["name"]
    )
    for name in nested:
        assert name in log_text


def test_model_summary_refuses_depth_0(tmp_path: Path) -> None:
    raw = tiny_config()
    raw["callbacks"] = [{"kind": "ModelSummaryCallback", "depth": 0}]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["config", "validate", str(cfg)]) == 2


# ------------------------------------------------------------------------------------ Throughput


class Clock:
    """Records ``(update, sample, perf_counter)`` at the start of training and after every update."""

    marks: list[tuple[int, int, float]] = []

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @hookimpl
    def before_training(self, counter: Any) -> None:
        Clock.marks.append((counter.update, counter.sample, time.perf_counter()))

    @hookimpl
    def after_update(self, counter: Any) -> None:
        Clock.marks.append((counter.update, counter.sample, time.perf_counter()))


def _throughput(run_dir: Path) -> dict[int, tuple[float, float]]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "throughput/samples_per_sec" in record:
            out[record["update"]] = (
                record["throughput/samples_per_sec"],
                record["throughput/updates_per_sec"],
            )
    return out


def _within_2x(value: float, expected: float) -> None:
    assert value > 0
    assert expected / 2 < value < expected * 2, (value, expected)


def _config(every: int, **extra: Any) -> dict[str, Any]:
    raw = tiny_config(**extra)
    raw["callbacks"] = [
        {"kind": "test_summary_throughput:Clock"},
        {"kind": "ThroughputCallback", "every_n_updates": every},
    ]
    return raw


def test_throughput_is_samples_and_updates_over_the_window(tmp_path: Path) -> None:
    Clock.marks = []
    assert train(tmp_path, _config(4)) == 0
    logged = _throughput(tmp_path / "r")
    assert sorted(logged) == list(range(4, 2 * UPE + 1, 4))
    at = {update: (sample, t) for update, sample, t in Clock.marks}  # update 0: the start of training
    for update, (samples_per_sec, updates_per_sec) in logged.items():
        (s0, t0), (s1, t1) = at[update - 4], at[update]
        _within_2x(samples_per_sec, (s1 - s0) / (t1 - t0))
        _within_2x(updates_per_sec, 4 / (t1 - t0))
        assert samples_per_sec == pytest.approx(updates_per_sec * 16)  # batch 16, no partial batches


def test_throughput_window_survives_a_resume(tmp_path: Path) -> None:
    raw = _config(6, max_epochs=None, max_updates=20)
    raw["callbacks"].append({"kind": "CheckpointCallback", "every_n_updates": 8})
    Clock.marks = []
    assert train(tmp_path, raw) == 0
    before = {update: t for update, _, t in Clock.marks}
    run_dir = tmp_path / "r"
    tag = next(p.name for p in (run_dir / "checkpoints").glob("model_cp=E*_U8_*_trainer.th"))
    tag = tag.removeprefix("model_cp=").removesuffix("_trainer.th")

    Clock.marks = []
    assert main(["train", "--resume", str(run_dir), "--checkpoint", tag]) == 0
    after = {update: t for update, _, t in Clock.marks}
    assert min(after) == 8  # before_training of the resumed run
    logged = _throughput(run_dir)
    assert sorted(logged) == [6, 12, 18]
    # the window 7..12 ran 7..8 before the checkpoint and 9..12 after the resume
    wall = (before[8] - before[6]) + (after[12] - after[8])
    samples_per_sec, updates_per_sec = logged[12]
    _within_2x(samples_per_sec, 6 * 16 / wall)
    _within_2x(updates_per_sec, 6 / wall)
    _within_2x(logged[18][0], 6 * 16 / (after[18] - after[12]))


def token_step(model: nn.Module, batch: Any) -> StepOutput:
    """The default step, reporting 7 tokens per sample of the micro-batch (a tensor, as a real step's
    count of non-padding tokens would be)."""
    step = default_train_step(model, batch)
    x, _ = split_batch(batch)
    return StepOutput(total=step.total, outputs={"num_tokens": torch.tensor(7 * x.shape[0])})


def test_tokens_per_second_counts_every_micro_batch(tmp_path: Path) -> None:
    raw = _config(4, accumulation_steps=2, train_step="test_summary_throughput:token_step")
    Clock.marks = []
    assert train(tmp_path, raw) == 0
    run_dir = tmp_path / "r"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "throughput/tokens_per_sec" in r]
    assert [r["update"] for r in logged] == list(range(4, 2 * UPE + 1, 4))
    for record in logged:
        tokens, samples = record["throughput/tokens_per_sec"], record["throughput/samples_per_sec"]
        assert tokens == pytest.approx(7 * samples)  # both micro-batches of each update counted


def test_no_tokens_key_without_num_tokens(tmp_path: Path) -> None:
    Clock.marks = []
    assert train(tmp_path, _config(8)) == 0
    assert "throughput/tokens_per_sec" not in (tmp_path / "r" / "metrics.jsonl").read_text()


# ------------------------------------------------------------------------------------ FLOP/s and MFU


def _linear_flops(widths: list[int]) -> int:
    """FLOPs per sample of a stack of linear layers ``widths[0] -> widths[1] -> ...``, forward and backward,
    as ``torch.utils.flop_counter`` counts them: ``2 * in * out`` a layer forward, the same again for the
    gradient of its weight, and again for the gradient of its input except for the first layer (the data
    needs none). Biases, activations and the loss are not matrix products, so not counted."""
    layers = list(itertools.pairwise(widths))
    forward = sum(2 * i * o for i, o in layers)
    first_in, first_out = layers[0]
    return 3 * forward - 2 * first_in * first_out


@pytest.mark.parametrize(
    ("model", "widths", "accumulation"),
    [
        ({"kind": "linear", "kwargs": {"in_features": 2, "out_features": 4}}, [2, 4], 1),
        (None, [2, 16, 16, 4], 1),  # tiny_config's MLP
        (None, [2, 16, 16, 4], 2),  # the count is per sample of a micro-batch of 8
    ],
    ids=["linear", "mlp", "mlp-accumulate"],
)
def test_flops_counted_on_the_first_batch_are_the_analytic_count(
    tmp_path: Path, model: dict[str, Any] | None, widths: list[int], accumulation: int
) -> None:
    raw = tiny_config(max_updates=8, max_epochs=None, accumulation_steps=accumulation)
    if model is not None:
        raw["model"] = model
    peak = 1e9
    raw["callbacks"] = [{"kind": "ThroughputCallback", "every_n_updates": 4, "peak_flops": peak}]
    trainer, records = fit(tmp_path, raw, expect="completed")
    flops = _linear_flops(widths)
    assert entry(trainer, "ThroughputCallback")._flops == flops
    assert sorted(records.values("throughput/flops_per_sec")) == [4, 8]
    for update, flops_per_sec in records.values("throughput/flops_per_sec").items():
        record = records.record_at(update)
        assert flops_per_sec == pytest.approx(record["throughput/samples_per_sec"] * flops)
        assert record["throughput/mfu"] == pytest.approx(flops_per_sec / (peak * 1))  # world size 1
    assert trainer.metrics.ordinality("throughput/mfu") == "neutral"


def test_flops_per_sample_given_is_not_counted(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["callbacks"] = [{"kind": "ThroughputCallback", "every_n_updates": 2, "flops_per_sample": 1000.0}]
    trainer, records = fit(tmp_path, raw, expect="completed")
    throughput = entry(trainer, "ThroughputCallback")
    assert throughput._flops == 1000.0
    for update, flops_per_sec in records.values("throughput/flops_per_sec").items():
        assert flops_per_sec == pytest.approx(records.record_at(update)["throughput/samples_per_sec"] * 1000)
    assert not records.values("throughput/mfu")  # no peak


def test_count_flops_without_peak_logs_no_mfu(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["callbacks"] = [{"kind": "ThroughputCallback", "every_n_updates": 2, "count_flops": True}]
    trainer, records = fit(tmp_path, raw, expect="completed")
    assert entry(trainer, "ThroughputCallback")._flops == _linear_flops([2, 16, 16, 4])
    assert sorted(records.values("throughput/flops_per_sec")) == [2, 4]
    assert not records.values("throughput/mfu")


def test_no_flops_keys_by_default(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["callbacks"] = [{"kind": "ThroughputCallback", "every_n_updates": 2}]
    trainer, records = fit(tmp_path, raw, expect="completed")
    assert entry(trainer, "ThroughputCallback")._flops is None
    assert not any(k in r for r in records.records for k in ("throughput/flops_per_sec", "throughput/mfu"))


def test_counted_flops_survive_a_resume(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=None, max_updates=12)
    raw["callbacks"] = [
        {"kind": "ThroughputCallback", "every_n_updates": 3, "peak_flops": 1e9},
        {"kind": "CheckpointCallback", "every_n_updates": 6},
    ]
    assert train(tmp_path, raw) == 0
    run_dir = tmp_path / "r"
    trainer_file = next((run_dir / "checkpoints").glob("model_cp=E*_U6_*_trainer.th"))
    state = torch.load(trainer_file, weights_only=True)
    assert _find(state, "flops_per_sample") == _linear_flops([2, 16, 16, 4])
    tag = trainer_file.name.removeprefix("model_cp=").removesuffix("_trainer.th")
    assert main(["train", "--resume", str(run_dir), "--checkpoint", tag]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "throughput/flops_per_sec" in r]
    assert [r["update"] for r in logged] == [3, 6, 9, 12]
    for record in logged:
        flops = record["throughput/flops_per_sec"] / record["throughput/samples_per_sec"]
        assert flops == pytest.approx(_linear_flops([2, 16, 16, 4]))
        assert record["throughput/mfu"] == pytest.approx(record["throughput/flops_per_sec"] / 1e9)


def _find(tree: Any, key: str) -> Any:
    """The value of the first ``key`` anywhere in nested dicts and lists."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None
