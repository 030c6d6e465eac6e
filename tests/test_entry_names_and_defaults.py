"""What the config's entries mean next to the trainer's defaults and to each other: an entry of a
default kind replaces that default, ``add_default_callbacks`` keeps a list of kinds, entries that would
log one metric key in one step are refused before training, and unnamed entries of one kind get names
that tell them apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_default_entries import default_entries
from tiny_runs import run_noether, tiny_config, write_config

from noether_core.cli import main
from noether_core.config.loader import structure_config
from noether_core.config.schema import DEFAULT_KINDS
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.display_names import display_names
from noether_core.run.plan import ALWAYS_DEFAULTS, LOG_DEFAULTS, TRACK_DEFAULTS, RunPlan

TESTS = Path(__file__).parent


def tiny(callbacks: list[dict[str, Any]], **trainer: Any) -> dict[str, Any]:
    raw = tiny_config(**trainer)
    raw["datasets"]["test"] = {"kind": "blobs", "kwargs": {"size": 32, "seed": 2}}
    raw["callbacks"] = callbacks
    return raw


def noether(tmp_path: Path, *args: Any) -> tuple[int, str]:
    proc = run_noether(list(args), pythonpath=str(TESTS), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------- default entries


def test_the_default_kinds_are_the_ones_the_plan_adds() -> None:
    assert set(DEFAULT_KINDS) == {*ALWAYS_DEFAULTS, *TRACK_DEFAULTS, *LOG_DEFAULTS}


def test_a_list_keeps_only_those_defaults() -> None:
    entries = default_entries(add_default_callbacks=["OnlineLossCallback", "ProgressCallback"])
    assert [e.key for e in entries] == ["OnlineLossCallback/U2", "OnlineLossCallback/U10", "ProgressCallback"]
    assert default_entries(add_default_callbacks=[]) == []
    assert len(default_entries(add_default_callbacks=True)) == 7


def test_an_unknown_kind_in_the_list_is_a_config_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny([], add_default_callbacks=["LrCalback"]))
    status, out = noether(tmp_path, "config", "validate", cfg)
    assert status == 2
    assert "trainer.add_default_callbacks: 'LrCalback' (item 0) is not a default kind" in out
    assert "did you mean 'LrCallback'?" in out
    assert "Traceback" not in out


def test_a_config_entry_of_a_default_kind_replaces_every_default_of_that_kind() -> None:
    registry_ = PluginRegistry.from_environment()
    raw = {
        "trainer": {"max_updates": 1000},
        "model": {"kind": "mlp"},
        "datasets": {"train": {"kind": "blobs"}},
        # a seed spelling and an import path name the same plugins as the defaults
        "callbacks": [
            {"kind": "noether.core.callbacks.OnlineLossCallback", "every_n_updates": 50},
            {"kind": "noether_plugins.progress:ProgressCallback", "every_n_updates": 100},
        ],
    }
    plan = RunPlan(structure_config(raw, registry_), registry_)
    kinds = [e.config.kind for e in plan.default_entries]
    assert "OnlineLossCallback" not in kinds  # both the track and the log entries
    assert "ProgressCallback" not in kinds
    assert kinds[:2] == ["DatasetStatsCallback", "ParamCountCallback"]
    assert "LrCallback" in kinds


def test_an_extra_lr_and_progress_entry_run_once_in_a_real_run(tmp_path: Path) -> None:
    """Before: an extra LrCallback failed at update 1 (DuplicateMetricError), an extra ProgressCallback
    printed every line twice."""
    raw = tiny(
        [{"kind": "LrCallback", "every_n_updates": 5}, {"kind": "ProgressCallback", "every_n_updates": 8}],
        add_default_callbacks=True,
        log_every_n_updates=4,
        track_every_n_updates=2,
    )
    cfg = write_config(tmp_path / "c.yaml", raw)
    status, out = noether(tmp_path, "train", cfg, "--output-dir", tmp_path, "--run-id", "r")
    assert status == 0, out
    assert out.count("% done.") == 32 // 8  # the config's ProgressCallback alone, every 8 updates
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records if "optim/lr/model" in r] == [1, 5, 10, 15, 20, 25, 30]
    durations = yaml.safe_load((tmp_path / "r" / "summary.yaml").read_text())["summary"]["durations"]
    names = {row["plugin"] for row in durations["plugins"]}
    assert {"LrCallback", "ProgressCallback", "OnlineLossCallback/U2"} <= names


# ---------------------------------------------------------------------------------- metric collisions


def test_two_entries_logging_one_key_are_refused_by_validate_and_train(tmp_path: Path) -> None:
    raw = tiny(
        [
            {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1},
            {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1, "batch_size": 8},
        ]
    )
    cfg = write_config(tmp_path / "c.yaml", raw)
    status, out = noether(tmp_path, "config", "validate", cfg)
    assert status == 2
    assert (
        "callbacks[1]: 'OfflineLossCallback#2' (OfflineLossCallback) and 'OfflineLossCallback#1' "
        "(callbacks[0]) would both log keys matching 'loss/val/*' at the same updates (every_n_epochs=1)"
    ) in out
    assert "Traceback" not in out
    status, out = noether(tmp_path, "train", cfg, "--output-dir", tmp_path / "runs", "--run-id", "r")
    assert status == 2
    assert "would both log keys matching 'loss/val/*'" in out
    assert not (tmp_path / "runs" / "r").exists()  # refused before the run directory


def test_what_counts_as_a_collision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def collisions(callbacks: list[dict[str, Any]]) -> str:
        """``noether config validate``'s complaint about ``callbacks``, "" when the config is valid."""
        cfg = write_config(tmp_path / "c.yaml", tiny(callbacks))
        status = main(["config", "validate", str(cfg)])
        err = capsys.readouterr().err
        assert status in (0, 2), err
        return "" if status == 0 else err

    logs, also = "control_plugins:Logs", "control_plugins:AlsoLogs"
    # one exact key, whatever the kinds
    out = collisions([{"kind": logs, "every_n_updates": 4}, {"kind": also, "every_n_updates": 2}])
    assert "would both log 'custom/value' at update 4 (every_n_updates=4 and every_n_updates=2)" in out
    # intervals that never meet within the run (32 updates): nothing collides
    assert not collisions([{"kind": logs, "every_n_updates": 20}, {"kind": also, "every_n_updates": 30}])
    # one pattern of one kind collides; of two kinds, it may stand for different keys
    pattern = {"metric": "custom/a", "declared": "custom/*", "every_n_updates": 4}
    assert "keys matching 'custom/*'" in collisions(
        [{"kind": logs, **pattern}, {"kind": logs, **pattern, "metric": "custom/b"}]
    )
    assert not collisions([{"kind": logs, **pattern}, {"kind": also, **pattern, "metric": "custom/b"}])
    # different datasets log different keys
    assert not collisions(
        [
            {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1},
            {"kind": "OfflineLossCallback", "dataset_key": "test", "every_n_epochs": 1},
        ],
    )
    # children count with their owner's prefix: two on one factor collide
    child = {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1}
    ema = {"kind": "EmaCallback", "name": "ema", "every_n_epochs": 1, "target_factors": [0.9]}
    out = collisions([{**ema, "eval_callbacks": [child, child]}])
    assert "callbacks[0].eval_callbacks[1]: " in out
    assert "keys matching 'ema=0.9/loss/val/*'" in out


# ---------------------------------------------------------------------------------- display names


def names(*entries: dict[str, Any]) -> list[str]:
    registry_ = PluginRegistry.from_environment()
    config = structure_config(tiny(list(entries)), registry_)
    found = display_names(config.entries())
    return [found.get(path, entry.key) for path, entry in config.entries()]


def test_unnamed_entries_of_one_kind_get_names_that_tell_them_apart() -> None:
    val = {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1}
    test = {**val, "dataset_key": "test"}
    assert names(val, test) == ["OfflineLossCallback[val]", "OfflineLossCallback[test]"]
    assert names(val, val, test) == [
        "OfflineLossCallback[val]#1",
        "OfflineLossCallback[val]#2",
        "OfflineLossCallback[test]",
    ]
    assert names(val) == ["OfflineLossCallback"]
    assert names(val, {**test, "name": "held_out"}) == ["OfflineLossCallback", "held_out"]
    memory = {"kind": "PeakMemoryCallback", "every_n_updates": 10}
    assert names(memory, {**memory, "every_n_updates": 4}) == [
        "PeakMemoryCallback[U10]",
        "PeakMemoryCallback[U4]",
    ]
    assert names(memory, memory) == ["PeakMemoryCallback#1", "PeakMemoryCallback#2"]
    fails = {"kind": "control_plugins:FailsAt", "every_n_updates": 1}
    assert names({**fails, "at": 3}, {**fails, "at": 100}) == [
        "control_plugins:FailsAt[at=3]",
        "control_plugins:FailsAt[at=100]",
    ]


def test_the_names_reach_the_timings_the_schedule_and_the_errors(tmp_path: Path) -> None:
    raw = tiny(
        [
            {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1},
            {"kind": "OfflineLossCallback", "dataset_key": "test", "every_n_epochs": 1},
        ]
    )
    cfg = write_config(tmp_path / "c.yaml", raw)
    status, out = noether(tmp_path, "schedule", cfg)
    assert status == 0, out
    assert "  OfflineLossCallback[val]: every_n_epochs=1, fires 2 times" in out
    assert "U16  OfflineLossCallback[val], OfflineLossCallback[test]  end of epoch 1" in out

    status, out = noether(tmp_path, "train", cfg, "--output-dir", tmp_path, "--run-id", "r")
    assert status == 0, out
    assert "OfflineLossCallback[test] at_eval (2 calls)" in out  # the timing table
    durations = yaml.safe_load((tmp_path / "r" / "summary.yaml").read_text())["summary"]["durations"]
    rows = {(row["plugin"], row["event"]) for row in durations["plugins"]}
    assert {("OfflineLossCallback[val]", "at_eval"), ("OfflineLossCallback[test]", "at_eval")} <= rows

    fails = {"kind": "control_plugins:FailsAt", "every_n_updates": 1}
    cfg = write_config(tmp_path / "f.yaml", tiny([{**fails, "at": 100}, {**fails, "at": 3}]))
    status, out = noether(tmp_path, "train", cfg, "--output-dir", tmp_path, "--run-id", "f")
    assert status == 1
    assert "'control_plugins:FailsAt[at=3]'" in out
    assert "failing at update 3" in out


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process configs name ``control_plugins`` kinds too."""
    monkeypatch.syspath_prepend(str(TESTS))
