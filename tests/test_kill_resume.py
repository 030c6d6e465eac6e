"""The kill-and-resume harness (:mod:`kill_resume`): its comparison finds and names every kind of loss
in real run files, and real ``noether train`` processes, SIGKILLed at random moments (inside checkpoint
commits and resumes too) and resumed until done, end as an uninterrupted run does.

The harness run is marked ``slow``: 100 kills in full, about 10 under ``NOETHER_QUICK=1``.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kill_resume import CONFIG, Report, compare_runs, run_harness
from tiny_runs import train

QUICK_KILLS = 10
FULL_KILLS = 100


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the harness's config, trained in this process."""
    root = tmp_path_factory.mktemp("reference")
    assert train(root, CONFIG, "run") == 0
    return root / "run"


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def kinds(found: list[tuple[str, str, str]]) -> set[str]:
    return {kind for kind, _, _ in found}


def test_a_copy_compares_equal_and_hidden_files_are_ignored(reference: Path, tmp_path: Path) -> None:
    run = copy_of(reference, tmp_path)
    (run / "checkpoints" / ".model_cp=latest_model.th.123.tmp").write_bytes(b"partial")
    assert compare_runs(reference, run) == ([], 0, 0)


# ------------------------------------------------------------------------------------------ damage


def edit_checkpoint(run: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    path = run / "checkpoints" / name
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def first_tensor(state: dict[str, Any]) -> torch.Tensor:
    return next(iter(state.values()))  # type: ignore[no-any-return]


def nudge_weight(payload: dict[str, Any]) -> None:
    first_tensor(payload["state_dict"]).view(-1)[0] += 1e-6


def nudge_moment(payload: dict[str, Any]) -> None:
    payload["state_dict"]["state"][0]["exp_avg"].view(-1)[0] += 1e-6


def count_a_stagnant_evaluation(payload: dict[str, Any]) -> None:
    payload["plugins"]["MetricEarlyStopper"]["stagnant"] += 1


def edit_records(run: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    path = run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(records)))


def at(records: list[dict[str, Any]], key: str) -> int:
    """The index of the first record holding ``key``."""
    return next(i for i, r in enumerate(records) if key in r)


def drop_record(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["update"] != 50]


def repeat_record(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    i = next(i for i, r in enumerate(records) if r["update"] == 50)
    return [*records[: i + 1], records[i], *records[i + 1 :]]


def change_online_loss(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records[at(records, "loss/online/total/U7")]["loss/online/total/U7"] += 1e-9
    return records


def change_train_time(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    key = next(k for r in records for k in r if k.startswith("train_time/"))
    records[at(records, key)][key] *= 2
    return records


DAMAGE: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "a weight": (
        lambda run: edit_checkpoint(run, "model_cp=E0_U10_S160_model.th", nudge_weight),
        "weights",
        "model_cp=E0_U10_S160_model.th",
    ),
    "an EMA weight": (
        lambda run: edit_checkpoint(run, "model_ema=0.9_cp=last_model.th", nudge_weight),
        "ema weights",
        "model_ema=0.9_cp=last_model.th",
    ),
    "an optimizer moment": (
        lambda run: edit_checkpoint(run, "model_cp=latest_optim.th", nudge_moment),
        "optimizer state",
        "model_cp=latest_optim.th",
    ),
    "a plugin's state": (
        lambda run: edit_checkpoint(run, "model_cp=E2_U40_S640_trainer.th", count_a_stagnant_evaluation),
        "trainer state",
        "model_cp=E2_U40_S640_trainer.th",
    ),
    "a missing file": (
        lambda run: (run / "checkpoints" / "model_cp=E1_U20_S320_optim.th").unlink(),
        "checkpoint missing",
        "model_cp=E1_U20_S320_optim.th",
    ),
    "a cut file": (
        lambda run: (run / "checkpoints" / "model_cp=last_model.th").write_bytes(b"PK\x03\x04"),
        "checkpoint unloadable",
        "model_cp=last_model.th",
    ),
    "a lost record": (lambda run: edit_records(run, drop_record), "metric record missing", "update 50"),
    "a record twice": (
        lambda run: edit_records(run, repeat_record),
        "metric record duplicated",
        "update 50",
    ),
    "an online loss": (
        lambda run: edit_records(run, change_online_loss),
        "metric value",
        "loss/online/total/U7 @ update 7",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_loss_is_found_and_named(reference: Path, tmp_path: Path, damage: str) -> None:
    apply, kind, what = DAMAGE[damage]
    run = copy_of(reference, tmp_path)
    apply(run)
    found, missing, duplicated = compare_runs(reference, run)
    assert [(k, w) for k, w, _ in found] == [(kind, what)], found
    assert (missing, duplicated) == (
        int(kind == "metric record missing"),
        int(kind == "metric record duplicated"),
    )


def test_timing_keys_are_left_out(reference: Path, tmp_path: Path) -> None:
    run = copy_of(reference, tmp_path)
    edit_records(run, change_train_time)
    assert compare_runs(reference, run) == ([], 0, 0)


def test_a_trial_that_did_not_complete_is_compared_on_the_position_tags(
    reference: Path, tmp_path: Path
) -> None:
    run = copy_of(reference, tmp_path)
    edit_checkpoint(run, "model_cp=last_model.th", nudge_weight)  # not a position tag
    edit_records(run, drop_record)
    assert compare_runs(reference, run, complete=False) == ([], 0, 0)
    edit_checkpoint(run, "model_cp=E0_U10_S160_model.th", nudge_weight)
    assert kinds(compare_runs(reference, run, complete=False)[0]) == {"weights"}


# ------------------------------------------------------------------------------------------ the harness


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> Report:
    """One harness run shared by the tests below: real processes, real SIGKILLs."""
    kills = QUICK_KILLS if quick else FULL_KILLS
    # the control is the in-process reference (one process fewer)
    result = run_harness(kills, seed=0, workdir=tmp_path_factory.mktemp("kill-resume"), control=False)
    print(result.table())
    return result


@pytest.mark.slow
def test_faults_land_inside_commits_and_resumes(report: Report, reference: Path) -> None:
    """The harness does what it says: the kills land (exit status -9), some inside a checkpoint
    commit and some inside a resume, and two uninterrupted runs (the harness's reference, a process
    of its own, and this module's, trained in the test process) compare equal."""
    assert report.kills >= report.kills_wanted
    assert report.kills_in_commit >= 1, report.table()
    assert report.kills_in_resume >= 1, report.table()
    assert report.resumes >= 1
    assert all(p.returncode == -signal.SIGKILL for p in report.processes if p.signalled)
    assert compare_runs(reference, report.reference) == ([], 0, 0)
    assert report.reference_status == "stopped"  # the stopper ended it, after enough updates
    assert report.reference_updates == 160


@pytest.mark.slow
def test_nothing_is_lost_under_kills(report: Report) -> None:
    """Every run, killed and resumed any number of times, ends with the uninterrupted run's weights,
    EMA weights, optimizer state, trainer and plugin states in every checkpoint tag, and its
    ``metrics.jsonl`` (timing keys aside), each record exactly once; every resume that ends exits 0."""
    assert report.unexpected_exits() == [], report.table()
    assert report.all_identical, report.table()
