"""OfflineMetricsCallback: torchmetrics metrics over a dataset on the bundled example, their declared
directions, validation without torchmetrics, and two gloo processes agreeing with one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny_runs import run_noether, train, write_config

from noether_core.io.checkpoints import load_checkpoint

pytest.importorskip("torchmetrics")

EXAMPLE = Path(__file__).parent.parent / "noether_core" / "example" / "example.yaml"
ACCURACY = "torchmetrics.classification.MulticlassAccuracy"


def _example(epochs: int = 3) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    raw["trainer"]["max_epochs"] = epochs
    raw["trainer"]["add_default_callbacks"] = False
    return raw


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_accuracy_above_chance_and_each_direction_honoured(tmp_path: Path) -> None:
    raw = _example()
    raw["callbacks"] = [
        {
            "kind": "OfflineMetricsCallback",
            "every_n_epochs": 1,
            "dataset_key": "val",
            "metrics": {
                "acc": {"kind": ACCURACY, "kwargs": {"num_classes": 4}},
                # the same numbers declared lower-is-better: its best is the worst accuracy
                "flipped": {"kind": ACCURACY, "kwargs": {"num_classes": 4}, "higher_is_better": False},
            },
        },
        {"kind": "BestCheckpointCallback", "every_n_epochs": 1, "metric_key": "acc/val"},
        {
            "kind": "BestCheckpointCallback",
            "name": "best_flipped",
            "every_n_epochs": 1,
            "metric_key": "flipped/val",
        },
    ]
    assert train(tmp_path, raw) == 0
    run = tmp_path / "r"
    values = {r["update"]: r["acc/val"] for r in _records(run) if "acc/val" in r}
    assert len(values) == 3
    assert min(values.values()) > 0.5  # four classes: chance is 0.25
    assert len(set(values.values())) == 3
    checkpoints = run / "checkpoints"
    for key, pick in (("acc.val", max), ("flipped.val", min)):
        payload = load_checkpoint(checkpoints / f"classifier.head_cp=best_model.{key}_model.th")
        assert payload["training_iteration"]["update"] == pick(values, key=values.__getitem__)


def test_custom_inputs_and_a_regression_metric(tmp_path: Path) -> None:
    """``inputs`` by import path; MeanSquaredError is lower-is-better by its own class attribute."""
    (tmp_path / "metric_inputs.py").write_text(
        "import torch\n"
        "def confidence(model, batch):\n"
        "    x, y = batch\n"
        "    probs = model(x).softmax(1)\n"
        "    return probs.max(1).values, torch.ones(len(y))\n"
    )
    raw = _example(epochs=2)
    raw["callbacks"] = [
        {
            "kind": "OfflineMetricsCallback",
            "every_n_epochs": 1,
            "dataset_key": "test",
            "inputs": "metric_inputs:confidence",
            "metrics": {"gap": {"kind": "torchmetrics.MeanSquaredError"}},
        },
        {"kind": "MetricEarlyStopper", "every_n_epochs": 1, "metric_key": "gap/test", "tolerance": 5},
    ]
    sys.path.insert(0, str(tmp_path))
    try:
        assert train(tmp_path, raw) == 0
    finally:
        sys.path.remove(str(tmp_path))
    gaps = [r["gap/test"] for r in _records(tmp_path / "r") if "gap/test" in r]
    assert len(gaps) == 2
    assert all(0.0 <= g < 0.5 for g in gaps)


def _validate(
    tmp_path: Path, metrics: dict[str, Any], pythonpath: str = ""
) -> subprocess.CompletedProcess[str]:
    raw = _example()
    raw["callbacks"] = [
        {"kind": "OfflineMetricsCallback", "every_n_epochs": 1, "dataset_key": "val", "metrics": metrics}
    ]
    return run_noether(["config", "validate", write_config(tmp_path / "c.yaml", raw)], pythonpath=pythonpath)


def test_a_wrong_metric_is_refused_at_validation(tmp_path: Path) -> None:
    proc = _validate(tmp_path, {"acc": {"kind": "torchmetrics.classification.NoSuchMetric"}})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "NoSuchMetric" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _validate(tmp_path, {"acc": {"kind": ACCURACY, "kwargs": {"num_classes": 4, "colour": 1}}})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "colour" in proc.stderr


def test_without_torchmetrics_validation_names_the_install_command(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "torchmetrics"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('torchmetrics is not installed here')\n")
    proc = _validate(tmp_path, {"acc": {"kind": ACCURACY}}, pythonpath=str(shadow.parent))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'noether[torchmetrics]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_gloo_ranks_give_the_one_process_accuracy(tmp_path: Path) -> None:
    raw = _example(epochs=1)
    # a rate too small to move fp32 weights: both runs evaluate the same model, exactly
    raw["optimizer"] = {"kind": "adamw", "lr": 1e-12}
    raw["trainer"]["clip_grad_norm"] = None
    # 101 samples over 2 ranks in batches of 8: the sampler pads rank 1 with a repeat of sample 0
    raw["datasets"] = {
        "train": {"kind": "blobs", "kwargs": {"size": 256, "seed": 0}},
        "val": {"kind": "blobs", "kwargs": {"size": 101, "seed": 1}},
    }
    raw["callbacks"] = [
        {
            "kind": "OfflineMetricsCallback",
            "every_n_epochs": 1,
            "dataset_key": "val",
            "batch_size": 8,
            "metrics": {"acc": {"kind": ACCURACY, "kwargs": {"num_classes": 4, "average": "micro"}}},
        }
    ]
    cfg = write_config(tmp_path / "c.yaml", raw)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "noether_core",
        "train",
        str(cfg),
        "--output-dir",
        str(tmp_path),
        "--run-id",
        "ddp",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert train(tmp_path, raw, "single") == 0
    (ddp,) = [r["acc/val"] for r in _records(tmp_path / "ddp") if "acc/val" in r]
    (single,) = [r["acc/val"] for r in _records(tmp_path / "single") if "acc/val" in r]
    assert ddp == pytest.approx(single, abs=1e-7)
    assert round(single * 101) == pytest.approx(single * 101, abs=1e-4)  # a count of 101 samples
