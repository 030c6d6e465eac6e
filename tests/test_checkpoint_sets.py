"""Checkpoint sets: a tag's files become visible together or not at all, resume picks the newest whole
set, every position tag is resumable by default, and metrics and accumulating plugins survive a kill.

The kills are real: ``noether train`` subprocesses that SIGKILL themselves at a known point (inside a
commit, between two renames: :mod:`commit_faults`; right after a checkpoint: ``SignalAt``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_runs import run_noether, tiny_config, train, write_config

from noether_core import (
    CheckpointLoadError,
    CheckpointWriteError,
    CheckpointWriter,
    RunPaths,
    load_checkpoint,
)
from noether_core.cli import main
from noether_core.io.checkpoint_journal import JOURNAL_PREFIX

TESTS = Path(__file__).parent
POSITION = {"epoch": 0, "update": 1, "sample": 16}


def dead_pid() -> int:
    """The pid of a process that has ended (its temporary files and journals are orphans)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def names(run: Path) -> set[str]:
    return {p.name for p in (run / "checkpoints").iterdir()}


def updates_of(run: Path, tag: str) -> dict[str, int]:
    """``{file name: update}`` of every file of ``tag``, read as they are on disk (no recovery)."""
    out = {}
    for file in (run / "checkpoints").iterdir():
        if f"_cp={tag}_" in file.name and not file.name.startswith("."):
            payload = torch.load(file, map_location="cpu", weights_only=True)
            out[file.name] = payload["training_iteration"]["update"]
    return out


def noether(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_noether(list(args), pythonpath=str(TESTS), env={"OMP_NUM_THREADS": "1"})


def metric_records(run: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` without the timing keys (they differ between any two runs)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("train_time/")} for r in records]


# ------------------------------------------------------------------------------------ the writer


@pytest.fixture
def writer(tmp_path: Path) -> CheckpointWriter:
    return CheckpointWriter(RunPaths.create(tmp_path, "run"))


def save_set(writer: CheckpointWriter, tag: str, value: float, *, optim: bool = True) -> list[Path]:
    position = {"epoch": 0, "update": int(value), "sample": 16 * int(value)}
    with writer.checkpoint_set(tag) as parts:
        parts.save_model("model", {"w": torch.full((3,), value)}, position=position)
        if optim:
            parts.save_optim("model", {"state": {}, "param_groups": []}, position=position)
        parts.save_trainer("model", {"counter": {"update": int(value)}}, position=position)
        return parts.paths


def test_a_set_becomes_visible_only_when_its_block_ends(writer: CheckpointWriter) -> None:
    directory = writer.paths.checkpoints
    with writer.checkpoint_set("latest") as parts:
        parts.save_model("model", {"w": torch.zeros(2)}, position=POSITION)
        parts.save_trainer("model", {"counter": {"update": 1}}, position=POSITION)
        assert [p.name for p in directory.iterdir() if not p.name.startswith(".")] == []
        assert writer.committing
    assert sorted(p.name for p in directory.iterdir()) == [
        "model_cp=latest_model.th",
        "model_cp=latest_trainer.th",
    ]
    assert not writer.committing


def test_a_sets_parts_are_synced_off_the_caller_and_before_the_journal(
    writer: CheckpointWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the parts' syncs run in threads while the caller writes the next part, and the commit waits for
    # all of them: the journal, the commit point, is never written before the data it commits
    events: list[tuple[str, str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        events.append(("synced", name, threading.current_thread().name))

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("renamed", Path(src).name, Path(dst).name))
        real_replace(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name the synced files")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_set(writer, "latest", 1)
    monkeypatch.undo()

    parts = [e for e in events if e[0] == "synced" and "_cp=latest_" in e[1]]
    assert sorted(name.split("_cp=latest_")[1].split(".th")[0] for _, name, _ in parts) == [
        "model",
        "optim",
        "trainer",
    ]
    assert all(thread.startswith("noether-fsync") for _, _, thread in parts)
    # and none of them outlives the commit (a fork afterwards forks a single-threaded process)
    assert not [t for t in threading.enumerate() if t.name.startswith("noether-fsync")]
    journal = next(i for i, e in enumerate(events) if e[0] == "renamed" and e[2].startswith(JOURNAL_PREFIX))
    assert max(events.index(e) for e in parts) < journal
    assert updates_of(writer.paths.root, "latest") == {
        "model_cp=latest_model.th": 1,
        "model_cp=latest_optim.th": 1,
        "model_cp=latest_trainer.th": 1,
    }


def test_a_part_saved_twice_in_one_set_keeps_the_later_one(writer: CheckpointWriter) -> None:
    with writer.checkpoint_set("latest") as parts:
        parts.save_model("model", {"w": torch.zeros(3)}, position=POSITION)
        parts.save_model("model", {"w": torch.ones(3)}, position=POSITION)
        parts.save_trainer("model", {"counter": {"update": 1}}, position=POSITION)
    directory = writer.paths.checkpoints
    # no temporary file of the first save is left behind, and the later weights are the tag's
    assert sorted(p.name for p in directory.iterdir()) == [
        "model_cp=latest_model.th",
        "model_cp=latest_trainer.th",
    ]
    assert torch.equal(
        load_checkpoint(directory / "model_cp=latest_model.th")["state_dict"]["w"], torch.ones(3)
    )


def test_a_part_that_cannot_be_synced_fails_the_whole_set(
    writer: CheckpointWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_set(writer, "latest", 1)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if "_cp=latest_optim" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name the synced files")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError) as info:
        save_set(writer, "latest", 2)
    monkeypatch.undo()

    # the failure surfaces at the commit, names the part, and nothing of the new set became visible
    assert "model_cp=latest_optim.th" in str(info.value)
    assert os.strerror(errno.EIO) in str(info.value)
    assert not writer.committing
    assert names(writer.paths.root) == {
        "model_cp=latest_model.th",
        "model_cp=latest_optim.th",
        "model_cp=latest_trainer.th",
    }
    assert set(updates_of(writer.paths.root, "latest").values()) == {1}


def test_a_set_with_fewer_parts_removes_the_stale_ones(writer: CheckpointWriter) -> None:
    save_set(writer, "latest", 1)
    writer.save_model("model", "latest", {"w": torch.ones(2)}, position=POSITION, ema=0.9)
    save_set(writer, "latest", 2, optim=False)
    # the optimizer file of update 1 is gone, not mixed into the set of update 2; EMA weights stay
    assert updates_of(writer.paths.root, "latest") == {
        "model_cp=latest_model.th": 2,
        "model_cp=latest_trainer.th": 2,
        "model_ema=0.9_cp=latest_model.th": 1,
    }


def test_an_exception_in_a_set_commits_nothing(writer: CheckpointWriter) -> None:
    save_set(writer, "latest", 1)
    failing = pytest.raises(CheckpointWriteError, match="numpy")
    with failing, writer.checkpoint_set("latest") as parts:
        parts.save_model("model", {"w": torch.zeros(3)}, position={**POSITION, "update": 2})
        parts.save_trainer("model", {"counter": np.int64(2)}, position={**POSITION, "update": 2})
    assert set(updates_of(writer.paths.root, "latest").values()) == {1}
    assert not [p for p in writer.paths.checkpoints.iterdir() if p.name.startswith(".")]


def test_deferred_commit_joins_the_sets_of_a_tag_and_prunes_with_them(writer: CheckpointWriter) -> None:
    for update in (1, 2):
        with writer.deferred_commit():
            save_set(writer, f"E0_U{update}_S{16 * update}", update)
    with writer.deferred_commit():
        save_set(writer, "E0_U3_S48", 3)
        with writer.checkpoint_set("latest") as parts:  # an EMA entry, earlier in the step
            parts.save_model("model", {"w": torch.ones(3)}, position={**POSITION, "update": 3}, ema=0.9)
        save_set(writer, "latest", 3)  # joins the EMA weights' set: one set of latest
        deleted = writer.prune("model", 2)  # counts E0_U3_S48, not on disk yet
        assert {p.name for p in deleted} == {
            f"model_cp=E0_U1_S16_{p}.th" for p in ("model", "optim", "trainer")
        }
        assert "model_cp=E0_U1_S16_model.th" in names(writer.paths.root)  # deleted with the commit
        assert not any("latest" in n or "U3" in n for n in names(writer.paths.root) if not n.startswith("."))
    assert writer.tags("model") == ["E0_U2_S32", "E0_U3_S48", "latest"]
    assert set(updates_of(writer.paths.root, "latest").values()) == {3}
    assert len(updates_of(writer.paths.root, "latest")) == 4


def test_an_exception_in_a_deferred_commit_commits_none_of_its_sets(writer: CheckpointWriter) -> None:
    with pytest.raises(RuntimeError), writer.deferred_commit():  # noqa: PT012 (a failure after a set)
        save_set(writer, "latest", 1)
        raise RuntimeError("a plugin failed later in the step")
    assert names(writer.paths.root) == set()


def write_journal_by_hand(writer: CheckpointWriter, *, committed: bool) -> None:
    """What a writer killed between two renames leaves: the new set's temporary files (one already
    renamed), and, if it reached the commit point, the journal."""
    save_set(writer, "latest", 1)
    directory = writer.paths.checkpoints
    pid = dead_pid()
    renames = []
    for part in ("model", "optim", "trainer"):
        target = directory / f"model_cp=latest_{part}.th"
        temp = directory / f".{target.name}.{pid}.0a0b0c0d.tmp"
        payload = {"training_iteration": {"epoch": 0, "update": 2, "sample": 32}, "state_dict": {}}
        torch.save(payload, temp)
        renames.append([temp.name, target.name])
    if committed:
        journal = {"version": 1, "renames": renames, "delete": []}
        (directory / f"{JOURNAL_PREFIX}{1:020d}-{pid}.json").write_text(json.dumps(journal))
        os.replace(directory / renames[0][0], directory / renames[0][1])  # the first rename landed


@pytest.mark.parametrize("committed", [True, False])
def test_opening_a_run_finishes_or_discards_a_killed_commit(
    writer: CheckpointWriter, committed: bool
) -> None:
    write_journal_by_hand(writer, committed=committed)
    run = writer.paths.root
    if committed:
        assert set(updates_of(run, "latest").values()) == {1, 2}  # mixed on disk: the kill's moment
    recovered = CheckpointWriter(RunPaths.existing(run)).recover()
    assert set(updates_of(run, "latest").values()) == {2 if committed else 1}
    assert len(updates_of(run, "latest")) == 3
    assert {p.name.startswith(".") for p in (run / "checkpoints").iterdir()} == {False}
    assert len(recovered) == (0 if committed else 3)


def test_a_journal_naming_a_file_elsewhere_is_refused(writer: CheckpointWriter) -> None:
    journal = writer.paths.checkpoints / f"{JOURNAL_PREFIX}{1:020d}-{dead_pid()}.json"
    journal.write_text(json.dumps({"version": 1, "renames": [], "delete": ["../config.yaml"]}))
    with pytest.raises(CheckpointLoadError, match="not a file of checkpoints/"):
        writer.recover()


# ------------------------------------------------------------------------------------ killed runs

KILL_RUN = {
    **tiny_config(max_epochs=None, max_updates=24),
    "callbacks": [
        {"kind": "OnlineLossCallback", "every_n_updates": 3, "verbose": False},
        {"kind": "TrainTimeCallback", "every_n_updates": 3},
        {"kind": "OfflineLossCallback", "every_n_updates": 4, "dataset_key": "val"},
        {"kind": "EmaCallback", "every_n_updates": 4, "target_factors": [0.9], "save_latest_weights": True},
        {"kind": "CheckpointCallback", "every_n_updates": 4},
    ],
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert train(out, KILL_RUN, "whole") == 0
    return out / "whole"


def assert_same_tree(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple), where
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_end(run: Path, uninterrupted: Path) -> None:
    """Bit-identical weights, EMA weights and optimizer state, and the same metrics (timing aside)."""
    for name in ("model_cp=last_model.th", "model_cp=latest_optim.th", "model_ema=0.9_cp=latest_model.th"):
        a = load_checkpoint(run / "checkpoints" / name)["state_dict"]
        assert_same_tree(a, load_checkpoint(uninterrupted / "checkpoints" / name)["state_dict"], name)
    assert metric_records(run) == metric_records(uninterrupted)


def test_a_kill_between_the_renames_of_latest_leaves_one_whole_set(
    tmp_path: Path, uninterrupted: Path
) -> None:
    raw = {
        **KILL_RUN,
        "callbacks": [
            *KILL_RUN["callbacks"],
            {"kind": "commit_faults:KillInCommit", "commit": 3, "after_renames": 5},
        ],
    }
    cfg = write_config(tmp_path / "c.yaml", raw)
    killed = noether("train", cfg, "--output-dir", tmp_path, "--run-id", "r")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "r"
    # the third step's commit (update 12: E0_U12 and latest, each with EMA weights) died after five
    # renames: E0_U12's four files and the EMA weights of latest
    assert any(n.startswith(JOURNAL_PREFIX) for n in names(run))
    assert len(set(updates_of(run, "latest").values())) == 2
    resumed = noether("train", "--resume", run, "--set", "callbacks[5].commit=0")
    assert resumed.returncode == 0, resumed.stderr
    assert "(tag latest) at E0_U12_S192" in resumed.stdout  # rolled forward: the new set, whole
    assert not any(n.startswith(".") for n in names(run))
    assert_same_end(run, uninterrupted)


def test_sigkill_right_after_a_checkpoint_loses_no_record(tmp_path: Path, uninterrupted: Path) -> None:
    # the checkpoint at update 8 commits; update 9 is trained and the process killed before its tick: the
    # record of update 8 must be on disk, the online loss's window (updates 7 and 8) in the checkpoint
    raw = {
        **KILL_RUN,
        "callbacks": [
            *KILL_RUN["callbacks"],
            {"kind": "sample_plugins:SignalAt", "update": 9, "signal": "SIGKILL"},
        ],
    }
    cfg = write_config(tmp_path / "c.yaml", raw)
    killed = noether("train", cfg, "--output-dir", tmp_path, "--run-id", "r")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "r"
    assert metric_records(run)[-1]["update"] == 8
    resumed = noether("train", "--resume", run, "--set", "callbacks[5].update=0")
    assert resumed.returncode == 0, resumed.stderr
    assert "(tag latest) at E0_U8_S128" in resumed.stdout
    # the first online loss after the resume (update 9) averages updates 7-9, as the uninterrupted run's
    assert_same_end(run, uninterrupted)


# ------------------------------------------------------------------------------------ what is resumable


def test_every_position_tag_is_resumable_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_epochs=None, max_updates=8)
    raw["callbacks"] = [{"kind": "CheckpointCallback", "every_n_updates": 4}]
    assert train(tmp_path, raw, "r") == 0
    for tag in ("E0_U4_S64", "E0_U8_S128"):
        assert {f"model_cp={tag}_{p}.th" for p in ("model", "optim", "trainer")} <= names(tmp_path / "r")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--checkpoint", "E0_U4_S64"]) == 0
    assert "(tag E0_U4_S64) at E0_U4_S64" in capsys.readouterr().out


def test_resume_picks_the_newest_whole_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # latest every 8 updates, positions every 4: killed at update 13, the newest set is E0_U12, not latest
    raw = tiny_config(max_epochs=None, max_updates=16)
    raw["callbacks"] = [
        {"kind": "CheckpointCallback", "every_n_updates": 8, "save_weights": False, "save_optim": False},
        {
            "kind": "CheckpointCallback",
            "every_n_updates": 4,
            "save_latest_weights": False,
            "save_latest_optim": False,
        },
        {"kind": "sample_plugins:SignalAt", "update": 13, "signal": "SIGKILL"},
    ]
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert noether("train", cfg, "--output-dir", tmp_path, "--run-id", "r").returncode == -signal.SIGKILL
    # E0_U12's set lacks nothing; an incomplete newer tag (its trainer file lost) does not count
    incomplete = tmp_path / "r" / "checkpoints" / "model_cp=E0_U14_S224_model.th"
    incomplete.write_bytes((tmp_path / "r" / "checkpoints" / "model_cp=E0_U12_S192_model.th").read_bytes())
    resumed = noether("train", "--resume", tmp_path / "r", "--set", "callbacks[2].update=0")
    assert resumed.returncode == 0, resumed.stderr
    assert "(tag E0_U12_S192) at E0_U12_S192" in resumed.stdout


@pytest.mark.parametrize("latest_optim", [False, True])
def test_without_saved_optimizer_state_resume_names_the_resumable_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], latest_optim: bool
) -> None:
    raw = tiny_config(max_epochs=None, max_updates=8)
    raw["callbacks"] = [
        {
            "kind": "CheckpointCallback",
            "every_n_updates": 4,
            "save_optim": False,
            "save_latest_optim": latest_optim,
        }
    ]
    assert train(tmp_path, raw, "r") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--checkpoint", "E0_U4_S64"]) == 2
    err = capsys.readouterr().err
    assert "model_cp=E0_U4_S64_optim.th" in err
    assert "Traceback" not in err
    if latest_optim:
        assert "resumable tags, newest first: latest" in err
    else:
        assert "no tag is resumable" in err
        assert "save_optim: false" in err
        assert main(["train", "--resume", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert "has no checkpoint to resume from; tags present: E0_U4_S64, E0_U8_S128, last, latest" in err
        assert "no tag is resumable" in err
