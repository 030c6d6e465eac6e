"""The trainer adds default plugins by kind name, producers first, on the log/track intervals.

Real default kinds are tested with their plugins; here test plugins stand in under the default names so
the mechanism is checked on its own.
"""

from __future__ import annotations

from typing import Any

from noether_core.config.loader import structure_config
from noether_core.plugins.registry import PluginRegistry, PluginSource
from noether_core.plugins.scheduling import Interval
from noether_core.run.launch import default_entries

STAND_INS = {
    "DatasetStatsCallback": "sample_plugins:SaveAtEnd",  # not periodic
    "ParamCountCallback": "sample_plugins:SaveAtEnd",
    "OnlineLossCallback": "sample_plugins:Recorder",
    "LrCallback": "sample_function_plugin:",
    "TrainTimeCallback": "sample_function_plugin:",
    "ProgressCallback": "sample_function_plugin:",
}


def registry(kinds: dict[str, str] = STAND_INS) -> PluginRegistry:
    return PluginRegistry([PluginSource(kind, value, "stand-ins", "0") for kind, value in kinds.items()])


def config(**trainer: Any) -> Any:
    raw = {
        "trainer": {"max_updates": 1000, **trainer},
        "model": {"kind": "mlp"},
        "datasets": {"train": {"kind": "blobs"}},
    }
    return structure_config(raw, registry())


def test_defaults_in_producer_first_order_on_their_intervals() -> None:
    entries = default_entries(config(log_every_n_epochs=1, track_every_n_updates=20), registry(), 1000)
    assert [(e.kind, e.interval) for e in entries] == [
        ("DatasetStatsCallback", None),
        ("ParamCountCallback", None),
        ("OnlineLossCallback", Interval("update", 20)),
        ("OnlineLossCallback", Interval("epoch", 1)),
        ("LrCallback", Interval("update", 20)),
        ("TrainTimeCallback", Interval("epoch", 1)),
        ("ProgressCallback", Interval("epoch", 1)),
    ]
    assert [e.name for e in entries if e.kind == "OnlineLossCallback"] == [
        "OnlineLossCallback/U20",
        "OnlineLossCallback/E1",
    ]


def test_unset_intervals_default_to_a_fraction_of_the_run() -> None:
    entries = default_entries(config(), registry(), 1000)
    intervals = {e.key: e.interval for e in entries}
    assert intervals["OnlineLossCallback/U2"] == Interval("update", 2)  # 1000 // 500
    assert intervals["OnlineLossCallback/U10"] == Interval("update", 10)  # 1000 // 100


def test_equal_log_and_track_intervals_give_one_online_loss_entry() -> None:
    entries = default_entries(config(log_every_n_updates=5, track_every_n_updates=5), registry(), 1000)
    assert [e.key for e in entries if e.kind == "OnlineLossCallback"] == ["OnlineLossCallback/U5"]


def test_opt_out_and_missing_kinds() -> None:
    assert default_entries(config(add_default_callbacks=False), registry(), 1000) == []
    only_lr = registry({"LrCallback": "sample_function_plugin:"})
    raw = {"trainer": {"max_updates": 10}, "model": {"kind": "mlp"}, "datasets": {"train": {"kind": "blobs"}}}
    entries = default_entries(structure_config(raw, only_lr), only_lr, 10)
    assert [e.kind for e in entries] == ["LrCallback"]
