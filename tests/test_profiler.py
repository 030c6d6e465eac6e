"""``ProfilerCallback`` (issue #14) on real tiny runs: where its windows fall (the interval's due points,
``start_update``, at most ``windows`` of them, also across a resume), and what it writes: a Chrome trace
that is valid JSON with one ``ProfilerStep`` per active update, and a key-averages table of aten ops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_runs import run_noether, tiny_config, train, write_config

from noether_core.cli import main


def _config(max_updates: int = 12, **profiler: Any) -> dict[str, Any]:
    raw = tiny_config(max_updates=max_updates, max_epochs=None)
    raw["callbacks"] = [{"kind": "ProfilerCallback", **profiler}]
    return raw


def _files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "profiler").iterdir())


def _profiler_steps(trace: Path) -> list[str]:
    """The names of the trace's ``ProfilerStep#n`` events, one per recorded update."""
    events = json.loads(trace.read_text())["traceEvents"]
    return sorted(e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#"))


def test_profiler_writes_a_trace_and_a_table_in_a_real_run(tmp_path: Path) -> None:
    raw = _config(every_n_updates=4, wait=1, warmup=1, active=3)
    cfg = write_config(tmp_path / "c.yaml", raw)
    done = run_noether(["train", cfg, "--output-dir", tmp_path, "--run-id", "r"])
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "r"
    # due at update 4: update 5 waits, 6 warms up, 7..9 are recorded
    assert _files(run_dir) == ["key_averages_U9.txt", "trace_U9.json"]
    trace = json.loads((run_dir / "profiler" / "trace_U9.json").read_text())
    assert trace["traceEvents"]
    assert len(_profiler_steps(run_dir / "profiler" / "trace_U9.json")) == 3
    table = (run_dir / "profiler" / "key_averages_U9.txt").read_text()
    assert "Self CPU" in table
    assert "aten::addmm" in table  # the MLP's linear layers
    assert "aten::mm" in table  # their backward
    assert "profiler: wrote" in done.stdout + done.stderr


@pytest.mark.parametrize(("wait", "warmup", "active"), [(0, 0, 1), (2, 0, 2), (0, 2, 4)])
def test_the_window_records_exactly_the_active_updates(
    tmp_path: Path, wait: int, warmup: int, active: int
) -> None:
    raw = _config(every_n_updates=3, wait=wait, warmup=warmup, active=active)
    assert train(tmp_path, raw) == 0
    last = 3 + wait + warmup + active
    profiler = tmp_path / "r" / "profiler"
    assert _files(tmp_path / "r") == [f"key_averages_U{last}.txt", f"trace_U{last}.json"]
    assert len(_profiler_steps(profiler / f"trace_U{last}.json")) == active


def test_windows_start_at_every_due_point_until_the_limit(tmp_path: Path) -> None:
    raw = _config(max_updates=20, every_n_updates=5, warmup=0, active=2, windows=None)
    assert train(tmp_path, raw) == 0
    # due at 5, 10, 15 (20 is the last update): windows 6..7, 11..12, 16..17
    assert [n for n in _files(tmp_path / "r") if n.startswith("trace")] == [
        "trace_U12.json",
        "trace_U17.json",
        "trace_U7.json",
    ]
    raw = _config(max_updates=20, every_n_updates=5, warmup=0, active=2, windows=2)
    assert train(tmp_path, raw, "two") == 0
    assert [n for n in _files(tmp_path / "two") if n.startswith("trace")] == [
        "trace_U12.json",
        "trace_U7.json",
    ]


def test_start_update_0_profiles_from_the_first_update(tmp_path: Path) -> None:
    raw = _config(every_n_updates=100, start_update=0, warmup=1, active=2)
    assert train(tmp_path, raw) == 0
    assert _files(tmp_path / "r") == ["key_averages_U3.txt", "trace_U3.json"]
    assert len(_profiler_steps(tmp_path / "r" / "profiler" / "trace_U3.json")) == 2


def test_a_window_cut_short_by_the_end_is_written_at_the_last_update(tmp_path: Path) -> None:
    raw = _config(max_updates=6, every_n_updates=3, warmup=0, active=10)
    assert train(tmp_path, raw) == 0
    assert _files(tmp_path / "r") == ["key_averages_U6.txt", "trace_U6.json"]
    assert json.loads((tmp_path / "r" / "profiler" / "trace_U6.json").read_text())["traceEvents"]


def test_a_window_still_waiting_at_the_end_writes_nothing(tmp_path: Path) -> None:
    raw = _config(max_updates=6, every_n_updates=5, wait=3, active=1)
    assert train(tmp_path, raw) == 0
    assert not (tmp_path / "r" / "profiler").exists()


def test_a_resumed_run_does_not_profile_past_its_windows(tmp_path: Path) -> None:
    raw = _config(max_updates=16, every_n_updates=2, warmup=0, active=1, windows=2)
    raw["callbacks"].append({"kind": "CheckpointCallback", "every_n_updates": 8})
    assert train(tmp_path, raw) == 0
    run_dir = tmp_path / "r"
    assert [n for n in _files(run_dir) if n.startswith("trace")] == ["trace_U3.json", "trace_U5.json"]
    for path in (run_dir / "profiler").iterdir():
        path.unlink()
    tag = next(p.name for p in (run_dir / "checkpoints").glob("model_cp=E*_U8_*_trainer.th"))
    tag = tag.removeprefix("model_cp=").removesuffix("_trainer.th")
    assert main(["train", "--resume", str(run_dir), "--checkpoint", tag]) == 0
    assert _files(run_dir) == []  # both windows were written before the checkpoint


@pytest.mark.parametrize(
    ("field", "value"), [("active", 0), ("wait", -1), ("windows", 0), ("sort_by", "cpu_time_avg")]
)
def test_bad_profiler_settings_are_refused(tmp_path: Path, field: str, value: Any) -> None:
    raw = _config(every_n_updates=3, **{field: value})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["config", "validate", str(cfg)]) == 2
