"""The trainer adds default plugins by kind name, producers first, on the log/track intervals.

Real default kinds are tested with their plugins; here test plugins stand in under the default names so
the mechanism is checked on its own.
"""

from __future__ import annotations

from typing import Any

from noether_core.config.loader import structure_config
from noether_core.plugins.registry import PluginRegistry, PluginSource
from noether_core.plugins.scheduling import Interval
from noether_core.run.plan import PlannedEntry, RunPlan

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


def default_entries(stand_ins: PluginRegistry | None = None, **trainer: Any) -> list[PlannedEntry]:
    """The default entries of a 1000-update run (unless ``trainer`` says otherwise), with the kinds of
    ``stand_ins`` (default: all of :data:`STAND_INS`)."""
    registry_ = stand_ins or registry()
    raw = {
        "trainer": {"max_updates": 1000, **trainer},
        "model": {"kind": "mlp"},
        "datasets": {"train": {"kind": "blobs"}},
    }
    return list(RunPlan(structure_config(raw, registry_), registry_).default_entries)


def test_defaults_in_producer_first_order_on_their_intervals() -> None:
    entries = default_entries(log_every_n_epochs=1, track_every_n_updates=20)
    assert [(e.config.kind, e.interval) for e in entries] == [
        ("DatasetStatsCallback", None),
        ("ParamCountCallback", None),
        ("OnlineLossCallback", Interval("update", 20)),
        ("OnlineLossCallback", Interval("epoch", 1)),
        ("LrCallback", Interval("update", 20)),
        ("TrainTimeCallback", Interval("epoch", 1)),
        ("ProgressCallback", Interval("epoch", 1)),
    ]
    assert [e.config.name for e in entries if e.config.kind == "OnlineLossCallback"] == [
        "OnlineLossCallback/U20",
        "OnlineLossCallback/E1",
    ]


def test_unset_intervals_default_to_a_fraction_of_the_run() -> None:
    entries = default_entries()
    intervals = {e.key: e.interval for e in entries}
    assert intervals["OnlineLossCallback/U2"] == Interval("update", 2)  # 1000 // 500
    assert intervals["OnlineLossCallback/U10"] == Interval("update", 10)  # 1000 // 100


def test_equal_log_and_track_intervals_give_one_online_loss_entry() -> None:
    entries = default_entries(log_every_n_updates=5, track_every_n_updates=5)
    assert [e.key for e in entries if e.config.kind == "OnlineLossCallback"] == ["OnlineLossCallback/U5"]


def test_opt_out_and_missing_kinds() -> None:
    assert default_entries(add_default_callbacks=False) == []
    entries = default_entries(registry({"LrCallback": "sample_function_plugin:"}), max_updates=10)
    assert [e.config.kind for e in entries] == ["LrCallback"]
