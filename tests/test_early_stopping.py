"""Early stopping: FixedEarlyStopper and MetricEarlyStopper stop at the expected update, as a success,
with ``after_training`` still run; MetricEarlyStopper's patience survives a resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_evaluation import validate
from tiny_runs import entry, fit, ramp_config

from noether_core.cli import main
from noether_core.io.trackers import read_metrics


def recorder_events(trainer: Any) -> list[tuple[str, int, Any]]:
    return entry(trainer, "sample_plugins:Recorder").events  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------- fixed


@pytest.mark.parametrize(
    ("field", "value", "stops_at"),
    [
        ("stop_at_update", 5, 5),
        ("stop_at_epoch", 2, 4),
        ("stop_at_sample", 18, 5),
    ],  # 2 updates of 4 per epoch
)
def test_fixed_stopper_stops_at_the_expected_update(
    tmp_path: Path, field: str, value: int, stops_at: int
) -> None:
    raw = ramp_config(max_updates=20)
    raw["callbacks"] = [
        {"kind": "sample_plugins:Recorder", "every_n_epochs": 1},
        {"kind": "FixedEarlyStopper", field: value},  # no interval: its Config checks after every update
    ]
    trainer, _ = fit(tmp_path, raw)
    assert trainer.counter.update == stops_at
    events = recorder_events(trainer)
    assert events[-1] == ("after_training", stops_at, "stopped")
    if field == "stop_at_epoch":  # the epoch's own evaluations still ran at the stopping update
        assert ("after_epoch", 4, 2) in events
        assert ("at_eval", 4, "epoch") in events


def test_fixed_stopper_at_or_past_the_end_lets_the_run_complete(tmp_path: Path) -> None:
    raw = ramp_config(max_updates=4)
    raw["callbacks"] = [
        {"kind": "sample_plugins:Recorder", "every_n_epochs": 1},
        {"kind": "FixedEarlyStopper", "stop_at_update": 4},
    ]
    trainer, _ = fit(tmp_path, raw)
    assert recorder_events(trainer)[-1] == ("after_training", 4, "completed")


def test_early_stop_exits_0_with_status_stopped(tmp_path: Path) -> None:
    raw = ramp_config(max_updates=20)
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 3},
        {"kind": "FixedEarlyStopper", "stop_at_update": 7, "every_n_updates": 1},
        {"kind": "sample_plugins:SaveAtEnd"},  # writes checkpoint 'final' in after_training
    ]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--output-dir", str(tmp_path), "--run-id", "r"]) == 0
    run_dir = tmp_path / "r"
    assert yaml.safe_load((run_dir / "summary.yaml").read_text())["status"] == "stopped"
    assert [r["update"] for r in read_metrics(run_dir / "metrics.jsonl")] == [3, 6]
    assert (run_dir / "checkpoints" / "model_cp=final_model.th").exists()


def test_a_resume_from_the_checkpoint_of_the_stop_trains_no_further(tmp_path: Path) -> None:
    """A run killed after its stop was decided (say while it exits) resumes from the checkpoint taken at
    that update: it ends ``stopped`` there, as the uninterrupted run did, instead of training on."""
    raw = ramp_config(max_updates=20)
    raw["callbacks"] = [
        {"kind": "FixedEarlyStopper", "stop_at_update": 7, "every_n_updates": 1},
        {"kind": "CheckpointCallback", "every_n_updates": 7, "save_latest_weights": True},
    ]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--output-dir", str(tmp_path), "--run-id", "r"]) == 0
    run_dir = tmp_path / "r"
    tag = next(p.name for p in (run_dir / "checkpoints").glob("model_cp=E*_U7_*_trainer.th"))
    tag = tag.removeprefix("model_cp=").removesuffix("_trainer.th")
    assert main(["train", "--resume", str(run_dir), "--checkpoint", tag]) == 0
    assert yaml.safe_load((run_dir / "summary.yaml").read_text())["status"] == "stopped"
    last = torch.load(run_dir / "checkpoints" / "model_cp=last_model.th", weights_only=True)
    assert last["training_iteration"]["update"] == 7  # not 8, one update more and a second stop


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "callbacks[0]: set exactly one of stop_at_epoch, stop_at_update, stop_at_sample"),
        ({"stop_at_epoch": 1, "stop_at_update": 3}, "got stop_at_epoch, stop_at_update"),
        ({"stop_at_update": 0}, "callbacks[0].stop_at_update: must be >= 1"),
        (
            {"stop_at_update": 3, "every_n_epochs": 1, "every_n_updates": 2},
            "set exactly one of every_n_epochs",
        ),
    ],
)
def test_fixed_stopper_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, Any], message: str
) -> None:
    raw = ramp_config()
    raw["callbacks"] = [{"kind": "FixedEarlyStopper", **fields}]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert message in err


def test_fixed_stopper_with_an_interval_of_its_own(tmp_path: Path) -> None:
    raw = ramp_config(max_updates=20)
    raw["callbacks"] = [{"kind": "FixedEarlyStopper", "stop_at_update": 5, "every_n_epochs": 1}]
    trainer, _ = fit(tmp_path, raw)
    assert trainer.counter.update == 6  # checked at epoch ends only: the first one at or past update 5


# ------------------------------------------------------------------------------------------ metric


def metric_config(values: list[float], tolerance: int, **fields: Any) -> dict[str, Any]:
    raw = ramp_config(max_updates=len(values) + 2)
    raw["callbacks"] = [
        {
            "kind": "test_evaluation:Scripted",
            "metric": "loss/val/total",
            "values": [*values, 0.0, 0.0],
            "every_n_updates": 1,
        },
        {"kind": "sample_plugins:Recorder", "every_n_updates": 1},
        {
            "kind": "MetricEarlyStopper",
            "every_n_updates": 1,
            "metric_key": "loss/val/total",
            "tolerance": tolerance,
            **fields,
        },
    ]
    return raw


@pytest.mark.parametrize(
    ("values", "tolerance", "stops_at"),
    [
        ([3.0, 2.0, 2.5, 2.0, 1.0], 2, 4),  # 2.5 and an equal 2.0: two evaluations without improvement
        ([3.0, 2.0, 2.5, 1.0, 1.5, 1.2], 2, 6),  # an improvement resets the count
        ([3.0, 2.0, 2.5, 1.0, 1.5, 1.2], 1, 3),
    ],
)
def test_metric_stopper_counts_evaluations_without_improvement(
    tmp_path: Path, values: list[float], tolerance: int, stops_at: int
) -> None:
    trainer, _ = fit(tmp_path, metric_config(values, tolerance))
    assert trainer.counter.update == stops_at
    assert recorder_events(trainer)[-1] == ("after_training", stops_at, "stopped")


def test_metric_stopper_higher_is_better(tmp_path: Path) -> None:
    raw = metric_config([0.5, 0.6, 0.55, 0.7, 0.65, 0.6], 2)
    for item in raw["callbacks"]:
        item.update({"metric": "val/accuracy"} if "metric" in item else {})
    raw["callbacks"][2]["metric_key"] = "val/accuracy"
    trainer, _ = fit(tmp_path, raw)
    assert trainer.counter.update == 6


@pytest.mark.parametrize(("policy", "stops_at"), [("stagnate", 4), ("stop", 3)])
def test_metric_stopper_nan_policy(tmp_path: Path, policy: str, stops_at: int) -> None:
    values = [3.0, 2.0, math.nan, math.nan, 1.0]
    trainer, _ = fit(tmp_path, metric_config(values, 2, on_nan=policy))
    assert trainer.counter.update == stops_at


def test_metric_stopper_nan_policy_fail(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"'loss/val/total' is NaN \(on_nan: fail\)"):
        fit(tmp_path, metric_config([3.0, math.nan], 2, on_nan="fail"))


def test_metric_stopper_patience_survives_resume(tmp_path: Path) -> None:
    values = [3.0, 2.0, 2.5, 2.6, 2.7, 1.0]  # stagnates at updates 3, 4, 5: tolerance 3 stops at 5
    raw = metric_config(values, 3)
    raw["callbacks"].append({"kind": "sample_plugins:SignalAt", "update": 4})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--output-dir", str(tmp_path), "--run-id", "r"]) == 130
    # without its saved state the stopper would take 2.7 for a first best and never stop
    assert main(["train", "--resume", str(tmp_path / "r"), "--set", "callbacks[3].update=0"]) == 0
    run_dir = tmp_path / "r"
    assert yaml.safe_load((run_dir / "summary.yaml").read_text())["status"] == "stopped"
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["update"] == 5


SEED_METRIC_STOPPER = """
- kind: noether.core.callbacks.MetricEarlyStopper
  every_n_epochs: 1
  metric_key: loss/val/total
  tolerance: 0.10
  name: MetricEarlyStopper
"""


def test_seed_metric_stopper_example_is_rejected_for_its_fractional_tolerance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's example writes ``tolerance: 0.10``; tolerance counts evaluations, so it must be an int."""
    raw = ramp_config()
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1},
        *yaml.safe_load(SEED_METRIC_STOPPER),
    ]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "callbacks[1].tolerance: expected int, got 0.1 (float)" in err
    raw["callbacks"][1]["tolerance"] = 1
    assert validate(tmp_path, raw, capsys)[0] == 0
    raw["callbacks"][1]["tolerance"] = 0
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "callbacks[1].tolerance: must be >= 1, got 0" in err


def test_metric_without_producer_fails_train_and_validate_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = ramp_config()
    raw["callbacks"] = [
        {"kind": "MetricEarlyStopper", "every_n_epochs": 1, "metric_key": "loss/val/total", "tolerance": 3}
    ]
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "callbacks[0]: MetricEarlyStopper (every_n_epochs=1) reads 'loss/val/total'" in err
    assert main(["train", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path), "--run-id", "r"]) == 2
    assert "reads 'loss/val/total'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # it failed before creating the run


def test_stoppers_do_nothing_in_eval(tmp_path: Path) -> None:
    from noether_plugins.early_stopping import FixedEarlyStopper, MetricEarlyStopper

    class Trainer:
        def request_stop(self, reason: str) -> None:
            raise AssertionError(reason)

    fixed = FixedEarlyStopper(FixedEarlyStopper.Config(kind="FixedEarlyStopper", stop_at_update=1))
    fixed.at_eval(Trainer(), counter=None, interval="eval")  # type: ignore[arg-type]
    metric = MetricEarlyStopper(
        MetricEarlyStopper.Config(kind="MetricEarlyStopper", metric_key="x", tolerance=1)
    )
    metric.at_eval(Trainer(), interval="eval")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "stops_at"),
    [
        ({}, 6),  # every strict improvement counts: 2.75, 2.5 and 2.25 reset the count
        ({"min_delta": 0.5}, 3),  # 2.75 and 2.5 improve by no more than 0.5 on 3.0
    ],
)
def test_metric_stopper_min_delta(tmp_path: Path, fields: dict[str, Any], stops_at: int) -> None:
    values = [3.0, 2.75, 2.5, 2.25, 2.25, 2.25]  # exact in binary
    trainer, _ = fit(tmp_path, metric_config(values, 2, **fields))
    assert trainer.counter.update == stops_at
    assert recorder_events(trainer)[-1] == ("after_training", stops_at, "stopped")


def test_metric_stopper_explicit_mode_overrides_the_declared_direction(tmp_path: Path) -> None:
    # a loss is lower-is-better, but mode: max watches it rising: best 2.0 at update 2, then two misses
    values = [1.0, 2.0, 1.5, 1.8, 0.1, 0.1]
    trainer, _ = fit(tmp_path, metric_config(values, 2, mode="max"))
    assert trainer.counter.update == 4
    trainer, _ = fit(tmp_path, metric_config(values, 2, mode="min"), run_id="min")
    assert trainer.counter.update == 3  # 1.0 is best; 2.0 and 1.5 are no improvement


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_delta": -0.1}, "min_delta: must be >= 0.0"),
        ({"mode": "up"}, "mode"),
    ],
)
def test_metric_stopper_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, Any], message: str
) -> None:
    raw = metric_config([1.0], 1, **fields)
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert message in err


# --------------------------------------------------------------------------------------- threshold


def threshold_config(metric: str, values: list[float], **fields: Any) -> dict[str, Any]:
    raw = ramp_config(max_updates=len(values) + 2)
    raw["callbacks"] = [
        {
            "kind": "test_evaluation:Scripted",
            "metric": metric,
            "values": [*values, 0.0, 0.0],
            "every_n_updates": 1,
        },
        {"kind": "ThresholdStopper", "every_n_updates": 1, "metric_key": metric, **fields},
    ]
    return raw


def run_threshold(tmp_path: Path, raw: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--output-dir", str(tmp_path), "--run-id", "r"]) == 0
    run_dir = tmp_path / "r"
    summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
    assert summary["status"] == "stopped"
    return read_metrics(run_dir / "metrics.jsonl")[-1]["update"], summary["summary"]


@pytest.mark.parametrize(
    ("metric", "values", "fields", "stops_at", "reason"),
    [
        ("loss/val/total", [3.0, 2.0, 1.0, 0.5], {"stop_at": 1.0}, 3, "reached the threshold"),
        ("val/accuracy", [0.2, 0.5, 0.9, 0.95], {"stop_at": 0.8}, 3, "reached the threshold"),
        ("loss/val/total", [3.0, 2.0, 5.0, 0.5], {"stop_at": 0.1, "diverge_at": 4.0}, 3, "diverged"),
        ("val/accuracy", [0.5, 0.6, 0.05], {"diverge_at": 0.1}, 3, "diverged"),
        ("loss/val/total", [3.0, math.nan, 1.0], {"stop_at": 0.1}, 2, "is nan"),
        ("loss/val/total", [3.0, math.inf, 1.0], {"stop_at": 0.1}, 2, "is inf"),
        # mode: max on a loss: 3.0 is past stop_at 2.5 in the "higher" direction
        ("loss/val/total", [1.0, 2.0, 3.0], {"stop_at": 2.5, "mode": "max"}, 3, "reached the threshold"),
    ],
)
def test_threshold_stopper_stops_with_its_reason(
    tmp_path: Path, metric: str, values: list[float], fields: dict[str, Any], stops_at: int, reason: str
) -> None:
    update, summary = run_threshold(tmp_path, threshold_config(metric, values, **fields))
    assert update == stops_at
    assert summary["stop_reason"].startswith("ThresholdStopper: ")
    assert reason in summary["stop_reason"]
    assert f"at update {stops_at}" in summary["stop_reason"]


def test_threshold_stopper_not_crossed_lets_the_run_complete(tmp_path: Path) -> None:
    raw = threshold_config("loss/val/total", [3.0, 2.0, 1.5], stop_at=1.0, diverge_at=4.0)
    raw["callbacks"][0]["values"] = [3.0, 2.0, 1.5, 1.5, 1.5]
    trainer, _ = fit(tmp_path, raw, expect="completed")
    assert trainer.counter.update == 5


def test_threshold_stopper_on_a_real_loss(tmp_path: Path) -> None:
    """The ramp run's real validation loss: a generous stop_at is reached at the first evaluation."""
    raw = ramp_config(max_updates=20)
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2},
        {"kind": "ThresholdStopper", "every_n_updates": 2, "metric_key": "loss/val/total", "stop_at": 1e9},
    ]
    update, summary = run_threshold(tmp_path, raw)
    assert update == 2
    assert "reached the threshold: loss/val/total" in summary["stop_reason"]


def test_threshold_stopper_that_can_never_stop_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = threshold_config("loss/val/total", [1.0], stop_on_non_finite=False)
    status, err = validate(tmp_path, raw, capsys)
    assert status == 2
    assert "set stop_at, diverge_at or stop_on_non_finite" in err
