"""BestCheckpointCallback's ``save_top_k``: the k best evaluations kept as their own checkpoint tags, an
index that agrees with the files, and a list that survives resume, on real tiny runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from tiny_runs import tiny_config, train

from noether_core.cli import main
from noether_core.io.checkpoints import CheckpointWriter, load_checkpoint
from noether_core.io.paths import RunPaths

INDEX = "best_model.loss.val.total.top_k.yaml"


def _config(k: int, epochs: int = 5) -> dict[str, Any]:
    raw = tiny_config(max_epochs=epochs)
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "every_n_epochs": 1, "dataset_key": "val"},
        {
            "kind": "BestCheckpointCallback",
            "every_n_epochs": 1,
            "metric_key": "loss/val/total",
            "save_top_k": k,
        },
        {"kind": "CheckpointCallback", "every_n_epochs": 2},
    ]
    return raw


def _values(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["update"]: r["loss/val/total"] for r in records if "loss/val/total" in r}


def _top_files(run: Path) -> set[str]:
    return {p.name for p in (run / "checkpoints").iterdir() if ".top=" in p.name}


def _index(run: Path) -> dict[str, Any]:
    index = yaml.safe_load((run / "checkpoints" / INDEX).read_text())
    assert isinstance(index, dict)
    return index


def _check_agrees(run: Path) -> list[dict[str, Any]]:
    """The index lists exactly the top-k files on disk, each holding the weights of its update."""
    listed = _index(run)["checkpoints"]
    assert _top_files(run) == {f for entry in listed for f in entry["files"]}
    for entry in listed:
        for name in entry["files"]:
            payload = load_checkpoint(run / "checkpoints" / name)
            assert payload["training_iteration"]["update"] == entry["update"]
            assert payload["checkpoint_tag"] == entry["tag"]
    return listed


def test_keeps_the_k_lowest_values_and_deletes_the_evicted(tmp_path: Path) -> None:
    assert train(tmp_path, _config(3)) == 0
    run = tmp_path / "r"
    values = _values(run)
    assert len(values) == 5
    listed = _check_agrees(run)
    best3 = sorted(values.items(), key=lambda item: item[1])[:3]
    assert [(e["update"], e["value"]) for e in listed] == best3  # best first: lower is better for a loss
    assert [e["rank"] for e in listed] == [1, 2, 3]
    assert listed[0]["tag"] == f"best_model.loss.val.total.top={best3[0][1]:.6g}_U{best3[0][0]}"
    assert _index(run)["higher_is_better"] is False
    # best_model.{key} is still the single best, as with k = 1
    best = load_checkpoint(run / "checkpoints" / "model_cp=best_model.loss.val.total_model.th")
    assert best["training_iteration"]["update"] == best3[0][0]
    # each top-k checkpoint loads in an evaluation, and --checkpoint best still means best_model.{key}
    assert main(["eval", str(run), "--checkpoint", listed[2]["tag"]]) == 0
    evaluated = json.loads((run / "eval" / listed[2]["tag"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert evaluated["loss/val/total"] == listed[2]["value"]
    assert main(["eval", str(run), "--checkpoint", "best"]) == 0


def test_k_1_writes_no_top_k_tags_and_no_index(tmp_path: Path) -> None:
    assert train(tmp_path, _config(1, epochs=2)) == 0
    run = tmp_path / "r"
    assert _top_files(run) == set()
    assert not (run / "checkpoints" / INDEX).exists()
    assert (run / "checkpoints" / "model_cp=best_model.loss.val.total_model.th").exists()


def test_the_list_survives_resume_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    raw = _config(3, epochs=4)  # the top 3 of 4 spans both halves: the first half's entries must be kept
    del raw["optimizer"]["lr_schedule"]  # a constant rate: the first half of a longer run is the same
    assert train(tmp_path, raw, "whole") == 0
    assert train(tmp_path, raw, "split", "--set", "trainer.max_epochs=2") == 0
    # the second half continues from the first's latest checkpoint
    assert main(["train", "--resume", str(tmp_path / "split"), "--set", "trainer.max_epochs=4"]) == 0
    whole, split = _check_agrees(tmp_path / "whole"), _check_agrees(tmp_path / "split")
    assert len(split) == 3
    assert [(e["tag"], e["update"]) for e in split] == [(e["tag"], e["update"]) for e in whole]


def test_resume_from_an_older_checkpoint_drops_what_came_after_it(tmp_path: Path) -> None:
    """Files of evaluations after the resumed checkpoint (as a kill leaves them) are deleted, entries
    whose files were evicted later are dropped, and the index is rewritten to agree with the files."""
    assert train(tmp_path, _config(2, epochs=4)) == 0
    run = tmp_path / "r"
    before = _check_agrees(run)
    assert max(e["update"] for e in before) > 32
    (run / "checkpoints" / INDEX).write_text("not: [the index")  # torn by hand: rewritten on resume
    status = main(
        ["train", "--resume", str(run), "--checkpoint", "E2_U32_S512", "--set", "trainer.max_epochs=2"]
    )
    assert status == 0
    after = _check_agrees(run)
    assert all(e["update"] <= 32 for e in after)


def test_delete_tag_removes_every_file_of_the_tag_with_the_commit(tmp_path: Path) -> None:
    writer = CheckpointWriter(RunPaths.create(tmp_path, "r"))
    position = {"epoch": 1, "update": 2, "sample": 3}
    weights = {"w": torch.ones(2)}
    for tag in ("keep", "gone"):
        with writer.checkpoint_set(tag) as parts:
            parts.save_model("model", weights, position=position)
            parts.save_model("model", weights, position=position, ema=0.9)
            parts.save_optim("model", weights, position=position)
    directory = writer.paths.checkpoints
    with writer.deferred_commit():
        doomed = writer.delete_tag("model", "gone")
        assert all(path.exists() for path in doomed)  # deleted with the batch's commit, not before
        with writer.checkpoint_set("new") as parts:
            parts.save_model("model", weights, position=position)
    assert sorted(p.name for p in doomed) == [
        "model_cp=gone_model.th",
        "model_cp=gone_optim.th",
        "model_ema=0.9_cp=gone_model.th",
    ]
    assert writer.tags("model") == ["keep", "new"]
    assert not any("gone" in p.name for p in directory.iterdir())
    assert writer.delete_tag("model", "never") == []
