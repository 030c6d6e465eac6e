"""Nothing grows with the run length (issue #15): a long in-process run with every built-in plugin that
runs on a CPU without extra services keeps the same Python heap from its warm-up to its end, and a
billion-update config with every periodic plugin plans and starts in the memory a short one takes.

Memory is read with :mod:`tracemalloc` (Python allocations, grouped by the line that made them), by a
probe plugin that snapshots the heap at chosen updates after a ``gc.collect()``. A container that grows
by even one small object per update shows as a site that grows by thousands of objects between two
snapshots; the slack allowed is a fixed few KiB per site, whatever the run length, and the failure
message lists the sites that grew most.
"""

from __future__ import annotations

import gc
import logging
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from tiny_runs import make_trainer, tiny_config
from torch import nn

from noether_core import CallbackConfig, hookimpl
from noether_core.run.train_step import StepOutput, default_train_step

#: Snapshots taken by :class:`HeapProbe` in this process: update -> snapshot.
SNAPSHOTS: dict[int, tracemalloc.Snapshot] = {}
#: Bytes one allocation site may grow by between two snapshots, and all sites together. An object per
#: update would be hundreds of KiB over the thousands of updates between snapshots. What is alive at
#: the moment of a snapshot but bounded (an evaluation loader's index lists, a checkpoint's
#: serialization buffers, torch's dispatch caches) differs between two snapshots by up to about
#: 16 KiB at one site, depending on what ran before in the process and how busy the machine is.
SITE_SLACK = 32 * 1024
TOTAL_SLACK = 64 * 1024


class HeapProbe:
    """Snapshots the traced Python heap (after a full collection) at the updates ``at`` lists."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        at: list[int] = attrs.Factory(list)

    def __init__(self, config: Config) -> None:
        self.at = frozenset(config.at)

    @hookimpl
    def after_update(self, counter: Any) -> None:
        if counter.update in self.at:
            # pytest's log capture keeps every record of the test, which grows with the run by design
            for handler in logging.getLogger().handlers:
                if type(handler).__module__.startswith("_pytest") and hasattr(handler, "reset"):
                    handler.reset()
            gc.collect()
            SNAPSHOTS[counter.update] = tracemalloc.take_snapshot()


class CountingTracker:
    """A tracker that counts the records flushed, and keeps none of them."""

    def __init__(self) -> None:
        self.records = 0

    def start(self, paths: Any, config: Any) -> None:
        pass

    def log(self, record: Any) -> None:
        self.records += 1

    def set_summary(self, key: str, value: Any) -> None:
        pass

    def close(self, status: str) -> None:
        pass


def step_with_outputs(model: nn.Module, batch: Any) -> StepOutput:
    """The default step, plus an extra output for TrackAdditionalOutputsCallback."""
    out = default_train_step(model, batch)
    return StepOutput(total=out.total, losses=out.losses, outputs={"total_copy": out.total.detach()})


def every_plugin(max_updates: int, every: int, log_every: int) -> dict[str, Any]:
    """A tiny run with every built-in plugin that runs on a CPU without extra services: the defaults
    (logging every ``log_every`` updates), evaluations every ``every`` updates, checkpoints every
    ``2 * every``, and the csv tracker."""
    raw = tiny_config(
        max_updates=max_updates,
        add_default_callbacks=True,
        log_every_n_updates=log_every,
        track_every_n_updates=max(log_every // 5, 1),
        train_step="test_flat_memory:step_with_outputs",
    )
    del raw["trainer"]["max_epochs"]
    raw["datasets"]["val"]["kwargs"]["size"] = 16  # one batch per evaluation
    val = {"dataset_key": "val", "every_n_updates": every}
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", **val},
        {
            "kind": "OfflineMetricsCallback",
            **val,
            "metrics": {
                "acc": {
                    "kind": "torchmetrics.classification.MulticlassAccuracy",
                    "kwargs": {"num_classes": 4},
                }
            },
        },
        {"kind": "TrackAdditionalOutputsCallback", "every_n_updates": log_every, "keys": ["total_copy"]},
        {"kind": "GradNormCallback", "every_n_updates": log_every, "per_module": True, "update_ratio": True},
        {"kind": "ThroughputCallback", "every_n_updates": log_every, "count_flops": True},
        {"kind": "ModelSummaryCallback"},
        {"kind": "ProfilerCallback", "every_n_updates": 5, "windows": 1},
        {
            "kind": "EmaCallback",
            "every_n_updates": 2 * every,
            "target_factors": [0.9, 0.99],
            "save_latest_weights": True,
            "eval_callbacks": [{"kind": "OfflineLossCallback", **val}],
        },
        {
            "kind": "BestMetricCallback",
            "every_n_updates": every,
            "source_metric_key": "loss/val/total",
            "target_metric_keys": ["acc/val"],
        },
        {
            "kind": "BestCheckpointCallback",
            "every_n_updates": every,
            "metric_key": "loss/val/total",
            "save_top_k": 2,
        },
        {
            "kind": "BestCheckpointCallback",
            "name": "best_tol",
            "every_n_updates": every,
            "metric_key": "acc/val",
            "tolerances": [2],
        },
        {
            "kind": "MetricEarlyStopper",
            "every_n_updates": every,
            "metric_key": "loss/val/total",
            "tolerance": 10**6,
        },
        {
            "kind": "ThresholdStopper",
            "every_n_updates": every,
            "metric_key": "loss/val/total",
            "diverge_at": 1e9,
        },
        {"kind": "FixedEarlyStopper", "every_n_updates": every, "stop_at_update": 10**12},
        {"kind": "TimerCallback", "duration": "1000:00:00"},
        {"kind": "CheckpointCallback", "every_n_updates": 2 * every, "keep_last_n": 2},
    ]
    raw["tracker"] = [{"kind": "csv"}]
    return raw


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # the run logs at INFO as ``noether train`` does, so noether's logging path is measured whatever
    # level an earlier test left
    monkeypatch.setattr(logging.getLogger("noether"), "level", logging.INFO)
    SNAPSHOTS.clear()
    tracemalloc.start(1)
    try:
        yield
    finally:
        tracemalloc.stop()
        SNAPSHOTS.clear()


def growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[tracemalloc.StatisticDiff]:
    """Allocation sites by how much they grew from ``before`` to ``after`` (tracemalloc's own and the
    snapshots' allocations left out), largest first."""
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ]
    diffs = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    return sorted(diffs, key=lambda d: d.size_diff, reverse=True)


def describe(diffs: list[tracemalloc.StatisticDiff], limit: int = 10) -> str:
    return "\n".join(
        f"  {d.size_diff:+,} B in {d.count_diff:+,} blocks: {d.traceback[0].filename}:{d.traceback[0].lineno}"
        for d in diffs[:limit]
    )


@pytest.mark.slow
def test_every_plugin_runs_in_flat_memory(tmp_path: Path, quick: bool, traced: None) -> None:
    updates = 10_000 if quick else 200_000
    every = updates // 40  # 40 evaluations, 20 checkpoints
    warm, middle = updates // 5, updates * 3 // 5
    raw = every_plugin(updates, every, log_every=50)
    raw["callbacks"].append({"kind": "test_flat_memory:HeapProbe", "at": [warm, middle, updates]})
    counter = CountingTracker()
    trainer = make_trainer(tmp_path, raw, trackers=[counter])
    assert trainer.fit() == "completed"
    assert sorted(SNAPSHOTS) == [warm, middle, updates]

    # every plugin fired many times between the snapshots
    assert counter.records >= updates // 50
    checkpoints = sorted(p.name for p in trainer.paths.checkpoints.iterdir())
    assert any("_ema=0.9_cp=latest" in name for name in checkpoints), checkpoints
    assert any("best_model" in name for name in checkpoints), checkpoints

    for start, end in ((warm, middle), (middle, updates), (warm, updates)):
        diffs = growth(SNAPSHOTS[start], SNAPSHOTS[end])
        grown = [d for d in diffs if d.size_diff > SITE_SLACK]
        total = sum(d.size_diff for d in diffs)
        message = (
            f"the Python heap grew by {total:+,} B from update {start} to {end}; sites that grew most:\n"
            + describe(diffs)
        )
        assert not grown, message
        assert total <= TOTAL_SLACK, message


def peak_to_start(tmp_path: Path, max_updates: int, run_id: str) -> int:
    """Bytes of Python heap at the peak of building a run of every plugin and training its first
    updates (a FixedEarlyStopper ends it at update 3)."""
    raw = every_plugin(max_updates, every=2, log_every=2)
    raw["callbacks"].append({"kind": "FixedEarlyStopper", "name": "stop_soon", "stop_at_update": 3})
    gc.collect()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    trainer = make_trainer(tmp_path, raw, run_id)
    assert trainer.fit() == "stopped"
    _, peak = tracemalloc.get_traced_memory()
    return peak - base


def test_a_billion_updates_with_every_periodic_plugin_start_like_a_short_run(
    tmp_path: Path, traced: None
) -> None:
    """Schedules are arithmetic: no plugin plans a list of due updates, so a run of 10**9 updates with
    every periodic plugin builds and starts in the memory a 100-update run takes (a list of an entry
    per due update would be gigabytes here)."""
    peak_to_start(tmp_path, 100, "warm")  # imports and first-use caches, out of the comparison
    short = peak_to_start(tmp_path, 100, "short")
    long = peak_to_start(tmp_path, 10**9, "long")
    assert long - short < 256 * 1024, (short, long)
