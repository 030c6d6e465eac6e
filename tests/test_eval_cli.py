"""``noether eval RUN_DIR [--checkpoint TAG]``: a checkpoint's weights, every evaluator at
``interval="eval"``, metrics appended to the run's ``metrics.jsonl`` like any other step."""

from __future__ import annotations

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


def test_eval_appends_the_checkpoints_metrics(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = read_metrics(trained_run / "metrics.jsonl")
    assert [r["update"] for r in before] == [2]
    capsys.readouterr()
    assert (
        main(["eval", str(trained_run)]) == 0
    )  # checkpoint 'last', written when the run stopped at update 3
    out = capsys.readouterr().out
    records = read_metrics(trained_run / "metrics.jsonl")
    assert records[:-1] == before
    last = records[-1]
    a, b = expected_losses(trained_run, "last")
    assert (last["epoch"], last["update"], last["sample"]) == (1, 3, 12)
    assert last["loss/val/a"] == pytest.approx(a, rel=1e-5)
    assert last["loss/val/total"] == pytest.approx(a + b, rel=1e-5)
    assert last["loss/val/a/at_best/loss/val/total"] == pytest.approx(a, rel=1e-5)
    assert not any(k.startswith("lossdiff/") for k in last)  # no training, no online loss
    assert "loss/val/total:" in out
    assert "evaluated" in out

    assert main(["eval", str(trained_run), "--checkpoint", "E1_U2_S8"]) == 0
    earlier = read_metrics(trained_run / "metrics.jsonl")[-1]
    a2, b2 = expected_losses(trained_run, "E1_U2_S8")
    assert earlier["update"] == 2
    assert a2 != pytest.approx(a)
    assert earlier["loss/val/total"] == pytest.approx(a2 + b2, rel=1e-5)
    summary = yaml.safe_load((trained_run / "summary.yaml").read_text())
    assert summary["metrics"]["loss/val/total"]["last"] == pytest.approx(a2 + b2, rel=1e-5)


def test_eval_of_a_missing_checkpoint_names_the_tags(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err
    assert "no weights of 'model' for tag 'best'" in err
    assert "E1_U2_S8" in err
    assert "last" in err
    assert "Traceback" not in err


def test_eval_of_a_directory_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "not a noether run directory" in capsys.readouterr().err
