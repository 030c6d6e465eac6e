"""A wall-clock limit (``trainer.max_time``, ``TimerCallback``) ends a real run as ``stopped`` with exit
status 0 and a resumable ``latest``, which ``--resume`` continues to the very run an uninterrupted one
is; two gloo ranks stop at the same update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_distributed import _free_port
from tiny_runs import fit, run_noether, tiny_config, train, write_config

from noether_core.cli import main
from noether_core.config.durations import format_duration, parse_duration
from noether_core.io.checkpoints import load_checkpoint

TESTS = Path(__file__).parent
#: Updates of the runs below: each takes at least 20 ms (``control_plugins:slow_step``), so the run
#: outlasts its one-second limit several times over.
UPDATES = 120


def slow_run(**trainer: Any) -> dict[str, Any]:
    raw = tiny_config(max_epochs=None, max_updates=UPDATES, train_step="control_plugins:slow_step", **trainer)
    raw["trainer"].pop("max_epochs")
    raw["callbacks"] = [{"kind": "OnlineLossCallback", "every_n_updates": 1, "verbose": False}]
    return raw


def summary(run: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((run / "summary.yaml").read_text())
    return document


def trainer_state(run: Path, tag: str = "latest") -> dict[str, Any]:
    state: dict[str, Any] = load_checkpoint(run / "checkpoints" / f"model_cp={tag}_trainer.th")
    return state


def test_durations() -> None:
    assert parse_duration("02:30:00") == 9000
    assert parse_duration("1:00:00:00") == 86400  # DD:HH:MM:SS
    assert parse_duration("72:00:00") == 3 * 86400
    assert parse_duration("00:00:01.5") == 1.5
    for bad in ("2:30", "01:60:00", "1h", "", "00:00:00", "-1:00:00"):
        with pytest.raises(ValueError, match=r"HH:MM:SS|longer than zero"):
            parse_duration(bad)
    assert format_duration(9000) == "2:30:00"


def test_max_time_stops_a_real_run_resumably(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "slow.yaml", slow_run(max_time="00:00:01"))
    env = {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    proc = run_noether(["train", cfg, "--output-dir", out, "--run-id", "r"], pythonpath=str(TESTS), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = out / "r"
    ended = summary(run)
    assert ended["status"] == "stopped"
    reason = ended["summary"]["stop_reason"]
    assert reason.startswith("time limit: trainer.max_time=00:00:01 (0:00:01) reached at update ")
    stopped_at = int(reason.rsplit(" ", 1)[-1])
    assert 0 < stopped_at < UPDATES
    assert trainer_state(run)["counter"]["update"] == stopped_at
    assert trainer_state(run)["stop_reason"] is None  # a pause: a resume goes on training
    assert f"noether train --resume {run}" in proc.stdout + proc.stderr
    # a paused run is not finished: no last weights (its resume saves them)
    assert not (run / "checkpoints" / "model_cp=last_model.th").exists()

    # the next job: the same run, a new process with its own time
    proc = run_noether(
        ["train", "--resume", run, "--set", "trainer.max_time=01:00:00"], pythonpath=str(TESTS), env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resumed from {run} (tag latest) at " in proc.stdout + proc.stderr
    ended = summary(run)
    assert ended["status"] == "completed"
    assert "stop_reason" not in ended["summary"]
    updates = [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert updates == list(range(1, UPDATES + 1))

    # and it is the run an uninterrupted one is
    sys.path.insert(0, str(TESTS))
    try:
        assert train(tmp_path, slow_run(), "whole") == 0
    finally:
        sys.path.remove(str(TESTS))
    resumed = load_checkpoint(run / "checkpoints" / "model_cp=last_model.th")["state_dict"]
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "model_cp=last_model.th")["state_dict"]
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_a_bad_max_time_fails_validation_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_time="2h")
    assert main(["config", "validate", str(write_config(tmp_path / "c.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert 'trainer.max_time: expected "HH:MM:SS" or "DD:HH:MM:SS" (e.g. "02:30:00"), got \'2h\'' in err
    # YAML 1.1 reads an unquoted 2:30:00 as the number 9000: said so, not taken as seconds
    cfg = write_config(tmp_path / "unquoted.yaml", tiny_config())
    cfg.write_text(cfg.read_text().replace("  max_epochs: 2\n", "  max_epochs: 2\n  max_time: 2:30:00\n"))
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert (
        'trainer.max_time: expected a string "HH:MM:SS", got 9000 (int); YAML reads an unquoted 2:30:00 as '
        "the number 9000: write it in quotes, '2:30:00'"
    ) in err
    cfg.write_text(cfg.read_text().replace("2:30:00", "00:00:01.5"))
    assert main(["config", "validate", str(cfg)]) == 2
    assert "got 1.5 (float); YAML reads an unquoted 0:00:01.5 as the number 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("resumable", [True, False])
def test_timer_callback(tmp_path: Path, resumable: bool) -> None:
    raw = slow_run()
    raw["callbacks"].append({"kind": "TimerCallback", "duration": "00:00:00.5", "resumable": resumable})
    sys.path.insert(0, str(TESTS))
    try:
        trainer, records = fit(tmp_path, raw, expect="stopped")
    finally:
        sys.path.remove(str(TESTS))
    update = trainer.counter.update
    assert 0 < update < UPDATES
    reason = records.summary["stop_reason"]
    assert reason == f"TimerCallback: duration=00:00:00.5 (0:00:00) reached at update {update}"
    latest = tmp_path / "run" / "checkpoints" / "model_cp=latest_trainer.th"
    # a pause leaves a resumable latest; a budget (resumable: false) ends the run like early stopping
    assert latest.exists() == resumable
    if resumable:
        assert load_checkpoint(latest)["counter"]["update"] == update


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_gloo_ranks_stop_at_the_same_update(tmp_path: Path) -> None:
    """Rank 1 sleeps after every update, so it reads its clock later and its limit passes first: the
    ranks agree, and both stop after the same update (else they would wait on each other)."""
    raw = tiny_config(max_epochs=None, max_updates=400, max_time="00:00:02")
    raw["trainer"].pop("max_epochs")
    raw["model"]["kwargs"].pop("dropout")
    del raw["datasets"]["val"]
    raw["callbacks"] = [
        {"kind": "control_plugins:SlowRank", "rank": 1, "seconds": 0.05},
        {"kind": "control_plugins:RecordEnd"},
    ]
    cfg = write_config(tmp_path / "c.yaml", raw)
    ends = tmp_path / "ends"
    ends.mkdir()
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath, NOETHER_TEST_ENDS=str(ends))
    port = str(_free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", port, "-m", "noether_core", "train", str(cfg)]
    cmd += ["--output-dir", str(tmp_path), "--run-id", "ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rank0, rank1 = (json.loads((ends / f"{rank}.json").read_text()) for rank in (0, 1))
    assert rank0 == rank1
    assert rank0["status"] == "stopped"
    assert 0 < rank0["update"] < 400
    run = tmp_path / "ddp"
    assert trainer_state(run)["counter"]["update"] == rank0["update"]
    ended = summary(run)
    assert ended["status"] == "stopped"
    assert ended["summary"]["stop_reason"].startswith("time limit: trainer.max_time=00:00:02")
