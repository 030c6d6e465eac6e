"""The run is planned once: one ``noether train`` (or ``eval``, ``config validate``, ``schedule``) builds
each dataset at most once, loads each plugin kind once and builds one config converter."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
from tiny_runs import plan, tiny_config, train, write_config
from torch.utils.data import Dataset

import noether_core.config.loader as loader
import noether_core.plugins.registry as registry_module
from noether_core.cli import main
from noether_core.run.datasets import Blobs

BUILT: collections.Counter[str] = collections.Counter()


def counted_blobs(name: str, **kwargs: Any) -> Dataset[Any]:
    """The bundled blobs, counting how often each named dataset is built."""
    BUILT[name] += 1
    return Blobs(**kwargs)


def counted_config(**trainer: Any) -> dict[str, Any]:
    """A run with train/val/test datasets built by :func:`counted_blobs`, the default plugins, and an
    evaluator with consumers (so the metric-dependency check needs the run's geometry)."""
    raw = tiny_config(max_epochs=1, add_default_callbacks=True, **trainer)
    raw["datasets"] = {
        name: {"kind": "test_plan:counted_blobs", "kwargs": {"name": name, "size": size, "seed": i}}
        for i, (name, size) in enumerate([("train", 64), ("val", 32), ("test", 32)])
    }
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1},
        {"kind": "OfflineLossCallback", "dataset_key": "test", "every_n_epochs": 1},
        {"kind": "BestCheckpointCallback", "every_n_epochs": 1, "metric_key": "loss/val/total"},
        {"kind": "CheckpointCallback", "every_n_epochs": 1},
    ]
    return raw


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """``BUILT`` from zero, and counts of the plugins inspected and the converters built, by kind."""
    BUILT.clear()
    counts: collections.Counter[str] = collections.Counter()
    inspect_plugin, build_converter = registry_module.inspect_plugin, loader._build_converter

    def counting_inspect(source: Any, target: Any) -> Any:
        counts[f"plugin {source.kind}"] += 1
        return inspect_plugin(source, target)

    def counting_converter(registry: Any) -> Any:
        counts["converter"] += 1
        return build_converter(registry)

    monkeypatch.setattr(registry_module, "inspect_plugin", counting_inspect)
    monkeypatch.setattr(loader, "_build_converter", counting_converter)
    return counts


def test_noether_train_builds_each_dataset_once(tmp_path: Path, counted: collections.Counter[str]) -> None:
    assert train(tmp_path, counted_config(), "r") == 0
    assert BUILT == {"train": 1, "val": 1, "test": 1}
    assert counted["converter"] == 1
    assert {k: n for k, n in counted.items() if k.startswith("plugin")} == {
        f"plugin {kind}": 1
        for kind in (
            "OfflineLossCallback",
            "BestCheckpointCallback",
            "CheckpointCallback",
            "DatasetStatsCallback",
            "ParamCountCallback",
            "OnlineLossCallback",
            "LrCallback",
            "TrainTimeCallback",
            "PeakMemoryCallback",
            "ProgressCallback",
        )
    }


def test_resume_and_eval_build_each_dataset_once(tmp_path: Path, counted: collections.Counter[str]) -> None:
    assert train(tmp_path, counted_config(), "r") == 0
    BUILT.clear()
    assert main(["eval", str(tmp_path / "r")]) == 0
    assert BUILT == {"train": 1, "val": 1, "test": 1}
    BUILT.clear()
    assert main(["train", "--resume", str(tmp_path / "r"), "--set", "trainer.max_epochs=2"]) == 0
    assert BUILT == {"train": 1, "val": 1, "test": 1}


def test_validate_builds_only_what_a_check_needs(tmp_path: Path, counted: collections.Counter[str]) -> None:
    """Without consumers of metrics nothing is built; with them, the run's length needs ``train``."""
    raw = counted_config()
    consumers = write_config(tmp_path / "consumers.yaml", raw)
    assert main(["config", "validate", str(consumers)]) == 0
    assert BUILT == {"train": 1}
    BUILT.clear()
    without = write_config(tmp_path / "without.yaml", {**raw, "callbacks": raw["callbacks"][3:]})
    assert main(["config", "validate", str(without)]) == 0
    assert BUILT == {}
    assert main(["schedule", str(consumers)]) == 0
    assert BUILT == {"train": 1}


def test_the_plan_is_lazy_and_keeps_what_it_built() -> None:
    BUILT.clear()
    run_plan = plan(counted_config())
    assert BUILT == {}
    assert run_plan.geometry.updates_per_epoch == 4  # 64 samples / batch 16
    assert BUILT == {"train": 1}
    assert list(run_plan.datasets) == ["train", "val", "test"]
    assert run_plan.dataset("val") is run_plan.datasets["val"]
    assert BUILT == {"train": 1, "val": 1, "test": 1}
    kinds = [e.config.kind for e in run_plan.all_entries]
    assert kinds[:2] == ["DatasetStatsCallback", "ParamCountCallback"]  # defaults first
    assert kinds[-4:] == [
        "OfflineLossCallback",
        "OfflineLossCallback",
        "BestCheckpointCallback",
        "CheckpointCallback",
    ]
    assert run_plan.scheduler.total_updates == run_plan.geometry.total_updates == 4
