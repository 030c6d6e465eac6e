from __future__ import annotations

import json
import math
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import noether_core.io.trackers as trackers_module
from noether_core.config.schema import TrackerConfig
from noether_core.errors import ConfigError, PluginLoadError
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import (
    ENTRY_POINT_GROUP,
    DiskTracker,
    Tracker,
    available_tracker_kinds,
    load_trackers,
    read_metrics,
)

TRACKER_MODULE = textwrap.dedent(
    """
    class Recorder:
        def __init__(self, prefix="", *, keep=True):
            self.prefix = prefix
            self.keep = keep
            self.records = []
            self.summary = {}
            self.status = None

        def start(self, paths, config):
            self.config = dict(config)

        def log(self, record):
            self.records.append(dict(record))

        def set_summary(self, key, value):
            self.summary[key] = value

        def close(self, status):
            self.status = status


    class Namespace:
        Inner = Recorder


    class NotATracker:
        def log(self, record):
            pass


    def failing_factory():
        raise RuntimeError("backend unavailable")


    NOT_CALLABLE = 3
    """
)


def _strict_json(line: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture
def paths(tmp_path: Path) -> RunPaths:
    return RunPaths.create(tmp_path, "run")


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A real module on sys.path with a unique name, holding tracker classes."""
    directory = tmp_path / "site"
    directory.mkdir()
    name = f"noether_test_trackers_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(TRACKER_MODULE)
    (directory / f"{name}_broken.py").write_text("raise ImportError('needs the wandb package')\n")
    monkeypatch.syspath_prepend(str(directory))
    yield directory, name
    for module in (name, f"{name}_broken"):
        sys.modules.pop(module, None)


def _register_dist(directory: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    info = directory / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


# --- DiskTracker -------------------------------------------------------------------------------------


def test_disk_tracker_is_a_tracker() -> None:
    assert isinstance(DiskTracker(MetricProperties()), Tracker)


def _lines_on_disk(paths: RunPaths) -> list[Any]:
    # read through a separate handle, as after a crash: only what reached the OS counts
    return [_strict_json(line) for line in paths.metrics_jsonl.read_text().splitlines()]


def test_records_reach_the_file_on_flush_and_at_close(
    paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trackers_module, "FLUSH_SECONDS", 3600.0)  # no flush by the clock in this test
    tracker = DiskTracker(MetricProperties())
    tracker.start(paths, {"trainer": {"max_epochs": 1}})
    first = {"epoch": 0, "update": 1, "sample": 8, "loss/online/total/U1": 2.0}
    tracker.log(first)
    assert _lines_on_disk(paths) == []  # still in the buffer
    tracker.flush()
    assert _lines_on_disk(paths) == [first]
    second = {"epoch": 0, "update": 2, "sample": 16, "loss/online/total/U1": 1.0}
    tracker.log(second)
    tracker.close("completed")
    assert _lines_on_disk(paths) == [first, second]


def test_records_reach_the_file_once_the_flush_interval_passed(
    paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trackers_module, "FLUSH_SECONDS", 0.0)
    tracker = DiskTracker(MetricProperties())
    tracker.start(paths, {})
    for update in (1, 2):
        tracker.log({"epoch": 0, "update": update, "sample": 8 * update, "x": 1.0})
        assert [r["update"] for r in _lines_on_disk(paths)] == list(range(1, update + 1))
    tracker.close("completed")


def test_statistics_count_every_record(paths: RunPaths) -> None:
    """The summary is exact whenever it is asked for, over hundreds of records, NaN included."""
    tracker = DiskTracker(MetricProperties())
    tracker.start(paths, {})
    values = [math.sin(i) * i for i in range(1, 301)]  # more than one batch, extremes anywhere
    for update, value in enumerate(values, start=1):
        tracker.log({"epoch": 0, "update": update, "sample": update, "loss/val/total": value})
        if update == 150:
            middle = tracker.metric_summary()["loss/val/total"]
            assert middle == {
                "min": min(values[:150]),
                "max": max(values[:150]),
                "last": values[149],
                "best": min(values[:150]),
            }
    tracker.log({"epoch": 0, "update": 301, "sample": 301, "loss/val/total": math.nan})
    summary = tracker.metric_summary()["loss/val/total"]
    assert summary["min"] == min(values)
    assert summary["max"] == max(values)
    assert math.isnan(summary["last"])  # type: ignore[arg-type]
    tracker.close("completed")
    assert len(read_metrics(paths.metrics_jsonl)) == 301


def test_plain_records_are_written_as_the_json_encoder_writes_them(paths: RunPaths) -> None:
    """Finite floats and ints take a shortcut past the encoder: the lines are the encoder's all the same."""
    records: list[dict[str, Any]] = [
        {"epoch": 0, "update": 1, "sample": 8, "loss/online/total/U4": 0.1, "optim/lr/model": 1e-300},
        {"epoch": 1, "update": 2, "sample": 16, 'q"u\\ote': -0.0, "größe/\u2603": 2**70, "t\tab": 5e-324},
        {"epoch": 1, "update": 3, "sample": 24},
        {"epoch": 1, "update": 4, "sample": 32, "a": 1.5, "b": math.nan},  # the encoder's own path
    ]
    tracker = DiskTracker(MetricProperties())
    tracker.start(paths, {})
    for record in records:
        tracker.log(record)
    tracker.close("completed")
    lines = paths.metrics_jsonl.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == [json.dumps(record) for record in records[:3]]
    assert lines[3] == json.dumps({**records[3], "b": "NaN"})
    summary = tracker.metric_summary()
    assert summary["größe/\u2603"] == {"min": 2.0**70, "max": 2.0**70, "last": 2.0**70}
    assert summary["a"] == {"min": 1.5, "max": 1.5, "last": 1.5}
    assert "update" not in summary


def test_non_finite_values_are_strict_json(paths: RunPaths) -> None:
    tracker = DiskTracker(MetricProperties())
    tracker.start(paths, {})
    tracker.log({"epoch": 0, "update": 1, "sample": 8, "a": math.nan, "b": math.inf, "c": -math.inf, "d": 1})
    tracker.close("completed")
    line = paths.metrics_jsonl.read_text().strip()
    assert _strict_json(line) == {
        "epoch": 0,
        "update": 1,
        "sample": 8,
        "a": "NaN",
        "b": "Infinity",
        "c": "-Infinity",
        "d": 1,
    }
    (record,) = read_metrics(paths.metrics_jsonl)
    assert math.isnan(record["a"])
    assert record["b"] == math.inf
    assert record["c"] == -math.inf
    assert float(_strict_json(line)["a"]) != float(_strict_json(line)["a"])  # float() reads them too


def test_summary_yaml(paths: RunPaths) -> None:
    metrics = MetricProperties()
    metrics.register("val/psnr", "higher")
    tracker = DiskTracker(metrics)
    tracker.start(paths, {})
    rows = [
        {"val/loss": 3.0, "val/accuracy": 0.2, "optim/lr/model": 1e-3, "val/psnr": 20.0, "custom": 5},
        {"val/loss": 1.0, "val/accuracy": 0.6, "optim/lr/model": 5e-4, "val/psnr": 25.0, "custom": 2},
        {"val/loss": 2.0, "val/accuracy": 0.4, "optim/lr/model": 1e-4, "val/psnr": math.nan, "custom": 9},
    ]
    for update, row in enumerate(rows, start=1):
        tracker.log({"epoch": update, "update": update, "sample": 8 * update, **row})
    tracker.set_summary("param_count/model", torch.tensor(1234))
    tracker.set_summary("ds_stats/train/len", np.int64(64))
    tracker.set_summary("note", {"a": [1, 2.5, "x"]})
    tracker.close("stopped")

    summary = yaml.safe_load(paths.summary_yaml.read_text())
    assert list(summary) == ["status", "metrics", "summary"]
    assert summary["status"] == "stopped"
    assert summary["metrics"]["val/loss"] == {"min": 1.0, "max": 3.0, "last": 2.0, "best": 1.0}
    assert summary["metrics"]["val/accuracy"] == {"min": 0.2, "max": 0.6, "last": 0.4, "best": 0.6}
    assert summary["metrics"]["optim/lr/model"] == {"last": 1e-4}
    psnr = summary["metrics"]["val/psnr"]
    assert (psnr["min"], psnr["max"], psnr["best"]) == (20.0, 25.0, 25.0)  # NaN never wins
    assert math.isnan(psnr["last"])
    assert summary["metrics"]["custom"] == {"min": 2.0, "max": 9.0, "last": 9.0}  # direction unknown
    assert not {"epoch", "update", "sample"} & set(summary["metrics"])
    assert summary["summary"] == {
        "param_count/model": 1234,
        "ds_stats/train/len": 64,
        "note": {"a": [1, 2.5, "x"]},
    }
    assert [p.name for p in paths.root.iterdir() if p.name.endswith(".tmp")] == []


def test_close_is_idempotent_and_final(paths: RunPaths) -> None:
    tracker = DiskTracker(MetricProperties())
    tracker.start(paths, {})
    tracker.log({"epoch": 0, "update": 1, "sample": 8, "val/loss": 1.0})
    tracker.close("failed")
    tracker.close("completed")
    assert yaml.safe_load(paths.summary_yaml.read_text())["status"] == "failed"
    with pytest.raises(RuntimeError, match="after close"):
        tracker.log({"epoch": 0, "update": 2, "sample": 16, "val/loss": 1.0})


def test_set_summary_refuses_what_yaml_cannot_hold() -> None:
    tracker = DiskTracker()
    with pytest.raises(TypeError, match="'obj'"):
        tracker.set_summary("obj", object())
    with pytest.raises(TypeError, match="single number"):
        tracker.set_summary("vec", torch.ones(3))


def test_reopening_a_run_continues_metrics_and_summary(paths: RunPaths) -> None:
    first = DiskTracker(MetricProperties())
    first.start(paths, {})
    first.log({"epoch": 1, "update": 10, "sample": 80, "val/loss": 0.5})
    first.set_summary("param_count/model", 10)
    first.close("completed")
    with paths.metrics_jsonl.open("a") as file:
        file.write('{"epoch": 1, "update": 11, "sam')  # a crash cut the last line short

    second = DiskTracker(MetricProperties())
    second.start(paths, {})
    second.log({"epoch": 1, "update": 10, "sample": 80, "val/loss": 0.7, "val/accuracy": 0.9})
    second.close("completed")

    lines = paths.metrics_jsonl.read_text().splitlines()
    assert [_strict_json(line)["update"] for line in lines] == [10, 10]  # the fragment is gone
    summary = yaml.safe_load(paths.summary_yaml.read_text())
    assert summary["metrics"]["val/loss"] == {"min": 0.5, "max": 0.7, "last": 0.7, "best": 0.5}
    assert summary["summary"] == {"param_count/model": 10}


def test_read_metrics_rejects_corruption_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"update": 1}\nnot json\n{"update": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_metrics(path)
    path.write_text('{"update": 1}\n{"upd')
    assert read_metrics(path) == [{"update": 1}]


# --- load_trackers -----------------------------------------------------------------------------------


def test_load_tracker_by_import_path(module_dir: tuple[Path, str], paths: RunPaths) -> None:
    _, module = module_dir
    trackers = load_trackers(
        [
            TrackerConfig(kind=f"{module}:Recorder", kwargs={"prefix": "run/", "keep": False}),
            TrackerConfig(kind=f"{module}:Namespace.Inner"),
        ]
    )
    assert [type(t).__name__ for t in trackers] == ["Recorder", "Recorder"]
    assert isinstance(trackers[0], Tracker)
    first: Any = trackers[0]
    assert (first.prefix, first.keep) == ("run/", False)
    first.start(paths, {"a": 1})
    first.log({"epoch": 0, "update": 1, "sample": 8, "x": 1.0})
    first.close("completed")
    assert first.records == [{"epoch": 0, "update": 1, "sample": 8, "x": 1.0}]
    assert first.status == "completed"


def test_load_tracker_by_entry_point(module_dir: tuple[Path, str]) -> None:
    directory, module = module_dir
    _register_dist(directory, "noether-test-recorder", "1.2", {"recorder": f"{module}:Recorder"})
    assert "recorder" in available_tracker_kinds()
    (tracker,) = load_trackers([TrackerConfig(kind="recorder", kwargs={"prefix": "p"})])
    assert type(tracker).__name__ == "Recorder"
    assert getattr(tracker, "prefix") == "p"  # noqa: B009


def test_unknown_kind_lists_kinds_and_suggests(module_dir: tuple[Path, str]) -> None:
    directory, module = module_dir
    _register_dist(directory, "noether-test-recorder", "1.2", {"recorder": f"{module}:Recorder"})
    with pytest.raises(ConfigError) as info:
        load_trackers([TrackerConfig(kind=f"{module}:Recorder"), TrackerConfig(kind="recoder")])
    (issue,) = info.value.issues
    assert issue.path == "tracker[1].kind"
    assert "'recoder'" in issue.message
    assert "recorder" in issue.message.split("available:")[1]
    assert "did you mean 'recorder'?" in issue.message
    assert info.value.exit_status == 2


def test_every_config_problem_is_reported(module_dir: tuple[Path, str]) -> None:
    _, module = module_dir
    with pytest.raises(ConfigError) as info:
        load_trackers(
            [
                TrackerConfig(kind="nope"),
                TrackerConfig(kind=f"{module}:Recorder", kwargs={"prefx": "x"}),
                TrackerConfig(kind="no_such_module_xyz:Thing"),
                TrackerConfig(kind=f"{module}:Missing"),
                TrackerConfig(kind=f"{module}:NOT_CALLABLE"),
            ]
        )
    by_path = {issue.path: issue.message for issue in info.value.issues}
    assert set(by_path) == {
        "tracker[0].kind",
        "tracker[1].kwargs",
        "tracker[2].kind",
        "tracker[3].kind",
        "tracker[4].kind",
    }
    # the same wording as a model's or a dataset's kwargs (one signature check serves them all)
    assert by_path["tracker[1].kwargs"] == "unknown argument 'prefx'; did you mean 'prefix'?"
    assert "no module named 'no_such_module_xyz'" in by_path["tracker[2].kind"]
    assert "no attribute 'Missing'" in by_path["tracker[3].kind"]
    assert "not a class or factory" in by_path["tracker[4].kind"]


def test_broken_trackers_are_plugin_errors(module_dir: tuple[Path, str]) -> None:
    directory, module = module_dir
    with pytest.raises(PluginLoadError, match="needs the wandb package") as info:
        load_trackers([TrackerConfig(kind=f"{module}_broken:Tracker")])
    assert info.value.exit_status == 3
    with pytest.raises(PluginLoadError, match="backend unavailable"):
        load_trackers([TrackerConfig(kind=f"{module}:failing_factory")])
    with pytest.raises(PluginLoadError, match="lacks start, set_summary, close"):
        load_trackers([TrackerConfig(kind=f"{module}:NotATracker")])

    _register_dist(directory, "noether-test-broken", "0.3", {"broken": f"{module}_broken:Tracker"})
    with pytest.raises(PluginLoadError) as info:
        load_trackers([TrackerConfig(kind="broken")])
    assert (info.value.distribution, info.value.version) == ("noether-test-broken", "0.3")
    assert "noether-test-broken 0.3" in str(info.value)


def test_name_claimed_by_two_distributions(module_dir: tuple[Path, str]) -> None:
    directory, module = module_dir
    _register_dist(directory, "noether-test-one", "1.0", {"dup": f"{module}:Recorder"})
    _register_dist(directory, "noether-test-two", "2.0", {"dup": f"{module}:Recorder"})
    with pytest.raises(PluginLoadError, match=r"noether-test-one 1\.0 and noether-test-two 2\.0"):
        load_trackers([TrackerConfig(kind="dup")])


def test_no_trackers_configured() -> None:
    assert load_trackers([]) == []
