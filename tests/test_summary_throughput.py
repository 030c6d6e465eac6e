"""``ModelSummaryCallback`` and ``ThroughputCallback`` (issue #14) in real tiny runs: the layer table
against the model's own parameters, and throughput against the samples and wall time a recording plugin
of this module sees, also across a resume."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny_runs import UPE, composite_model, make_trainer, tiny_config, train
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
