from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_runs import MemoryTracker

# A dispatch mode records every aten op that runs: a real view of which syncs a flush performs.
from torch.utils._python_dispatch import TorchDispatchMode

from noether_core.errors import DuplicateMetricError, NoetherError
from noether_core.io.log_writer import LogWriter
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import DiskTracker, Tracker, read_metrics
from noether_core.run.counter import Counter, RunEnd, advance, seek


class FailingTracker(MemoryTracker):
    def log(self, record: Mapping[str, float | int]) -> None:
        raise OSError("tracker backend is down")


class RecordOps(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counter() -> Counter:
    return Counter(end=RunEnd("epoch", 10), updates_per_epoch=4, effective_batch_size=8)


@pytest.fixture
def sink() -> MemoryTracker:
    return MemoryTracker()


@pytest.fixture
def writer(counter: Counter, sink: MemoryTracker) -> LogWriter:
    return LogWriter(counter, [sink])


def test_list_tracker_is_a_tracker() -> None:
    assert isinstance(MemoryTracker(), Tracker)


def test_flush_builds_one_record_from_counter_at_flush_time(
    writer: LogWriter, counter: Counter, sink: MemoryTracker
) -> None:
    seek(counter, 3)
    writer.add_scalar("loss/online/total/U1", torch.tensor(0.5))
    writer.add_scalar("optim/lr/model", 1e-3)
    writer.add_scalar("count", 7)
    advance(counter)  # the epoch ends before the flush: the record carries the flush-time position
    record = writer.flush()
    expected = {
        "epoch": 1,
        "update": 4,
        "sample": 32,
        "loss/online/total/U1": 0.5,
        "optim/lr/model": 1e-3,
        "count": 7,
    }
    assert record == expected
    assert list(record) == list(expected)
    assert sink.records == [expected]
    assert isinstance(sink.records[0]["count"], int)
    assert writer.keys() == []
    assert writer.flush() is None
    assert len(sink.records) == 1


def test_flush_with_nothing_pending_does_not_call_sinks(writer: LogWriter, sink: MemoryTracker) -> None:
    assert writer.flush() is None
    assert sink.records == []


def test_flush_twice_at_same_update(writer: LogWriter, counter: Counter, sink: MemoryTracker) -> None:
    seek(counter, 40)
    writer.add_scalar("loss/online/total/U1", 1.0)
    writer.flush()
    writer.add_scalar("loss/online/total/U1", 2.0)  # e.g. logged in after_training after the last flush
    writer.flush()
    assert [r["update"] for r in sink.records] == [40, 40]
    assert [r["loss/online/total/U1"] for r in sink.records] == [1.0, 2.0]


def test_one_trailing_slash_is_stripped(writer: LogWriter, sink: MemoryTracker) -> None:
    writer.add_scalar("a/b/", 1.0)
    writer.add_scalar("c//", 2.0)
    assert writer.keys() == ["a/b", "c/"]
    assert "a/b/" in writer
    assert "a/b" in writer
    assert writer.get("a/b/") == 1.0
    with pytest.raises(DuplicateMetricError):
        writer.add_scalar("a/b", 3.0)


def test_tensors_are_not_synced_when_added(writer: LogWriter) -> None:
    value = torch.tensor([0.75])
    with RecordOps() as recorded:
        writer.add_scalar("deferred", value)
    assert "_local_scalar_dense" not in recorded.ops  # what .item() / float() would run
    assert recorded.ops  # the recorder saw the add's own ops, so it was really listening
    assert "deferred" in writer


def test_flush_syncs_all_tensors_at_once(writer: LogWriter, sink: MemoryTracker) -> None:
    for i in range(5):
        writer.add_scalar(f"f{i}", torch.tensor(float(i)))
    writer.add_scalar("i0", torch.tensor(3))
    writer.add_scalar("i1", torch.tensor([4]))
    writer.add_scalar("flag", torch.tensor(True))
    writer.add_scalar("plain", 2.5)
    with RecordOps() as recorded:
        writer.flush()
    # One stacked transfer per dtype, and no per-value .item() (aten::_local_scalar_dense).
    assert sorted(recorded.ops) == ["stack", "stack", "stack"]
    record = sink.records[0]
    assert [record[f"f{i}"] for i in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert record["i0"] == 3
    assert isinstance(record["i0"], int)
    assert record["i1"] == 4
    assert record["flag"] == 1
    assert type(record["flag"]) is int
    assert record["plain"] == 2.5


def test_logged_tensor_is_a_snapshot(writer: LogWriter, sink: MemoryTracker) -> None:
    running = torch.tensor(5.0, requires_grad=True) * 1
    writer.add_scalar("x", running)
    with torch.no_grad():
        running.zero_()
    writer.flush()
    assert sink.records[0]["x"] == 5.0


def test_get_materialises_one_value(writer: LogWriter, sink: MemoryTracker) -> None:
    writer.add_scalar("a", torch.tensor(1.5))
    writer.add_scalar("b", torch.tensor(2.5))
    writer.add_scalar("n", 3)
    with RecordOps() as recorded:
        assert writer.get("a") == 1.5
    assert recorded.ops == ["_local_scalar_dense"]
    assert writer.get("n") == 3.0
    assert isinstance(writer.get("n"), float)
    assert writer.get("missing") is None
    assert writer.get("missing", 0.25) == 0.25
    with RecordOps() as recorded:
        writer.flush()
    assert recorded.ops == ["stack"]  # only "b" is still on the device
    assert sink.records[0]["a"] == 1.5
    assert sink.records[0]["b"] == 2.5


def test_contains_and_keys(writer: LogWriter) -> None:
    writer.add_scalar("z", 1)
    writer.add_scalar("a", 2)
    assert writer.keys() == ["z", "a"]
    assert "z" in writer
    assert "y" not in writer
    assert "" not in writer
    assert 3 not in writer
    assert len(writer) == 2


def test_duplicate_key_names_key_update_and_owners(writer: LogWriter, counter: Counter) -> None:
    seek(counter, 12)
    with writer.owned_by("BestMetricCallback"):
        writer.add_scalar("val/loss/at_best", 1.0)
    with writer.owned_by("my_metric"), pytest.raises(DuplicateMetricError) as info:
        writer.add_scalar("val/loss/at_best", 2.0)
    error = info.value
    assert isinstance(error, NoetherError)
    assert (error.key, error.update, error.first_owner, error.second_owner) == (
        "val/loss/at_best",
        12,
        "BestMetricCallback",
        "my_metric",
    )
    for part in ("'val/loss/at_best'", "update 12", "'BestMetricCallback'", "'my_metric'"):
        assert part in str(error)
    assert writer.get("val/loss/at_best") == 1.0


def test_duplicate_between_two_defaults_keeps_first(writer: LogWriter, sink: MemoryTracker) -> None:
    # The two default OnlineLoss entries on the same interval (the reference's B5).
    with writer.owned_by("OnlineLossCallback[log]", default=True):
        writer.add_scalar("loss/online/total/U1", 1.0)
    with writer.owned_by("OnlineLossCallback[track]", default=True):
        writer.add_scalar("loss/online/total/U1", 1.0001)
    writer.flush()
    assert sink.records[0]["loss/online/total/U1"] == 1.0


def test_duplicate_default_and_user_raises(writer: LogWriter) -> None:
    with writer.owned_by("OnlineLossCallback", default=True):
        writer.add_scalar("loss/online/total/U1", 1.0)
    with pytest.raises(DuplicateMetricError, match="logged by 'OnlineLossCallback' and again by 'trainer'"):
        writer.add_scalar("loss/online/total/U1", 1.0)


def test_same_owner_twice_raises(writer: LogWriter) -> None:
    writer.owner = "p"
    writer.add_scalar("k", 1.0)
    with pytest.raises(DuplicateMetricError, match="twice by 'p'"):
        writer.add_scalar("k", 1.0)


def test_owned_by_restores_previous_owner(writer: LogWriter) -> None:
    assert (writer.owner, writer.owner_is_default) == ("trainer", False)
    inside = None
    try:
        with writer.owned_by("plugin", default=True):
            inside = (writer.owner, writer.owner_is_default)
            raise RuntimeError("a plugin failed")
    except RuntimeError:
        pass
    assert inside == ("plugin", True)
    assert (writer.owner, writer.owner_is_default) == ("trainer", False)


def test_a_key_may_be_logged_again_after_a_flush(writer: LogWriter, sink: MemoryTracker) -> None:
    writer.owner = "p"
    writer.add_scalar("k", 1.0)
    writer.flush()
    writer.add_scalar("k", 2.0)
    writer.flush()
    assert [r["k"] for r in sink.records] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (torch.ones(2), ValueError),
        (torch.tensor(1 + 2j), ValueError),
        ("1.0", TypeError),
        (None, TypeError),
        (np.complex64(1), TypeError),
    ],
)
def test_invalid_values(writer: LogWriter, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="'k'"):
        writer.add_scalar("k", value)
    assert "k" not in writer


@pytest.mark.parametrize("key", ["epoch", "update", "sample/"])
def test_position_keys_are_reserved(writer: LogWriter, key: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        writer.add_scalar(key, 1)


def test_invalid_keys(writer: LogWriter) -> None:
    with pytest.raises(ValueError, match="empty"):
        writer.add_scalar("/", 1)
    with pytest.raises(TypeError, match="string"):
        writer.add_scalar(3, 1)  # type: ignore[arg-type]


def test_numpy_and_bool_values(writer: LogWriter, sink: MemoryTracker) -> None:
    writer.add_scalar("np_float", np.float32(0.5))
    writer.add_scalar("np_int", np.int64(3))
    writer.add_scalar("np_bool", np.bool_(True))
    writer.add_scalar("bool", True)
    writer.flush()
    record = sink.records[0]
    assert record["np_float"] == 0.5
    assert type(record["np_float"]) is float
    assert type(record["np_int"]) is int
    assert (record["np_bool"], type(record["np_bool"])) == (1, int)
    assert (record["bool"], type(record["bool"])) == (1, int)


def test_failing_sink_does_not_replay_values(counter: Counter, sink: MemoryTracker) -> None:
    writer = LogWriter(counter, [FailingTracker(), sink])
    writer.add_scalar("k", 1.0)
    with pytest.raises(OSError, match="down"):
        writer.flush()
    assert writer.keys() == []
    writer.add_scalar("k", 2.0)  # the failed step's key does not count as a duplicate
    assert writer.get("k") == 2.0


def test_add_summary_forwards_to_every_sink(counter: Counter) -> None:
    first, second = MemoryTracker(), MemoryTracker()
    writer = LogWriter(counter, [first, second])
    writer.add_summary("param_count/model/", torch.tensor(123))
    writer.add_summary("ds_stats/train/len", np.int64(50))
    writer.add_summary("note", "hello")
    for sink in (first, second):
        assert sink.summary == {"param_count/model": 123, "ds_stats/train/len": 50, "note": "hello"}
        assert type(sink.summary["param_count/model"]) is int
    assert writer.keys() == []


def test_without_sinks_values_are_readable_and_dropped(counter: Counter) -> None:
    writer = LogWriter(counter, [])
    writer.add_scalar("k", torch.tensor(2.0))
    assert writer.get("k") == 2.0
    assert writer.flush() == {"epoch": 0, "update": 0, "sample": 0, "k": 2.0}
    assert writer.keys() == []


def test_writer_with_disk_tracker(tmp_path: Path, counter: Counter) -> None:
    paths = RunPaths.create(tmp_path, "run")
    disk = DiskTracker(MetricProperties())
    disk.start(paths, {})
    writer = LogWriter(counter, [disk])
    for update, loss in ((1, 2.0), (2, float("nan")), (3, 1.0)):
        seek(counter, update)
        writer.add_scalar("loss/online/total/U1", torch.tensor(loss))
        writer.flush()
    disk.close("completed")
    lines = paths.metrics_jsonl.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[1]) == {"epoch": 0, "update": 2, "sample": 16, "loss/online/total/U1": "NaN"}
    records = read_metrics(paths.metrics_jsonl)
    assert math.isnan(records[1]["loss/online/total/U1"])
    assert [r["update"] for r in records] == [1, 2, 3]
