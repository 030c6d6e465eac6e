"""``noether eval RUN_DIR [--checkpoint TAG]``: a checkpoint's weights, every evaluator at
``interval="eval"``, metrics appended to the run's ``metrics.jsonl`` like any other step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tiny_runs import ramp_config, train

from noether_core.cli import main
from noether_core.io.checkpoints import load_checkpoint
from noether_core.io.trackers import read_metrics


@pytest.fixture
def trained_run(tmp_path: Path) -> Path:
    """A run of a trainable ``y = w x`` model, stopped early at update 3, with checkpoints."""
    raw = ramp_config(max_updates=6, train_step="test_evaluation:two_losses")
    raw["model"] = {"kind": "tiny_runs:doubler"}
    raw["optimizer"] = {"kind": "sgd", "lr": 0.001}
    raw["callbacks"] = [
        {"kind": "CheckpointCallback", "every_n_updates": 2},
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2},
        {
            "kind": "BestMetricCallback",
            "every_n_updates": 2,
            "source_metric_key": "loss/val/total",
            "target_metric_keys": ["loss/val/a"],
        },
        {"kind": "FixedEarlyStopper", "stop_at_update": 3},
    ]
    assert train(tmp_path, raw, "r") == 0
    return tmp_path / "r"


def expected_losses(run_dir: Path, tag: str) -> tuple[float, float]:
    """(a, b) of the val ramp x = 0..9 for the weight ``w`` in checkpoint ``tag``: 28.5 w^2 and 4.5 |w|."""
    w = float(load_checkpoint(run_dir / "checkpoints" / f"model_cp={tag}_model.th")["state_dict"]["weight"])
    return 28.5 * w * w, 4.5 * abs(w)


TRAINING_FILES = ("metrics.jsonl", "summary.yaml", "log.txt", "config.yaml")


def test_eval_writes_apart_and_leaves_the_training_files_alone(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {name: (trained_run / name).read_bytes() for name in TRAINING_FILES}
    capsys.readouterr()
    assert (
        main(["eval", str(trained_run)]) == 0
    )  # checkpoint 'last', written when the run stopped at update 3
    out = capsys.readouterr().out
    assert {name: (trained_run / name).read_bytes() for name in TRAINING_FILES} == before
    (record,) = read_metrics(trained_run / "eval" / "last" / "metrics.jsonl")
    a, b = expected_losses(trained_run, "last")
    assert (record["epoch"], record["update"], record["sample"]) == (1, 3, 12)
    assert record["loss/val/a"] == pytest.approx(a, rel=1e-5)
    assert record["loss/val/total"] == pytest.approx(a + b, rel=1e-5)
    assert record["loss/val/a/at_best/loss/val/total"] == pytest.approx(a, rel=1e-5)
    assert not any(k.startswith("lossdiff/") for k in record)  # no training, no online loss
    assert "checkpoint last at E1_U3_S12:" in out  # the table of what it computed
    assert re.search(rf"^  loss/val/total +{a + b:.6g}$", out, re.MULTILINE)
    assert (trained_run / "eval" / "last" / "log.txt").exists()

    assert main(["eval", str(trained_run), "--checkpoint", "E1_U2_S8"]) == 0
    assert main(["eval", str(trained_run), "--checkpoint", "E1_U2_S8"]) == 0  # again: replaces, not appends
    (earlier,) = read_metrics(trained_run / "eval" / "E1_U2_S8" / "metrics.jsonl")
    a2, b2 = expected_losses(trained_run, "E1_U2_S8")
    assert earlier["update"] == 2
    assert a2 != pytest.approx(a)
    assert earlier["loss/val/total"] == pytest.approx(a2 + b2, rel=1e-5)
    summary = yaml.safe_load((trained_run / "eval" / "E1_U2_S8" / "summary.yaml").read_text())
    assert summary["metrics"]["loss/val/total"]["last"] == pytest.approx(a2 + b2, rel=1e-5)
    assert {name: (trained_run / name).read_bytes() for name in TRAINING_FILES} == before


def test_eval_of_a_missing_checkpoint_names_the_tags(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--checkpoint", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no weights of 'model' for tag 'nope'" in err
    assert not (trained_run / "eval").exists()  # nothing written for a checkpoint that is not there
    assert "E1_U2_S8" in err
    assert "last" in err
    assert "Traceback" not in err
    assert main(["eval", str(trained_run), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint best: run" in err
    assert "has no best checkpoint; name one with --checkpoint TAG (tags present: E1_U2_S8, last" in err


def test_eval_checkpoint_best_is_the_runs_one_best_checkpoint(tmp_path: Path) -> None:
    raw = ramp_config(max_updates=4, train_step="test_evaluation:two_losses")
    raw["model"] = {"kind": "tiny_runs:doubler"}
    raw["optimizer"] = {"kind": "sgd", "lr": 0.001}
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2},
        {"kind": "BestCheckpointCallback", "every_n_updates": 2, "metric_key": "loss/val/total"},
    ]
    assert train(tmp_path, raw, "r") == 0
    assert main(["eval", str(tmp_path / "r"), "--checkpoint", "best"]) == 0
    (record,) = read_metrics(tmp_path / "r" / "eval" / "best_model.loss.val.total" / "metrics.jsonl")
    assert "loss/val/total" in record


def test_eval_of_a_directory_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "not a noether run directory" in capsys.readouterr().err
