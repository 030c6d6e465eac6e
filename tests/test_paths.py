from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noether_core.errors import UsageError
from noether_core.io.paths import (
    RunPaths,
    find_checkpoint_tags,
    generate_run_id,
    parse_position_tag,
    tag_for_metric,
)


def test_generate_run_id_shape_and_uniqueness() -> None:
    ids = {generate_run_id() for _ in range(200)}
    today = datetime.date.today().isoformat()
    for run_id in ids:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_[a-z0-9]{5}", run_id), run_id
        assert run_id.startswith(today + "_")
    assert len(ids) > 190  # 36**5 suffixes; a constant or low-entropy suffix would collide


def test_create_makes_root_under_output_dir(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path / "out", "my-run")
    assert paths.root == tmp_path / "out" / "my-run"
    assert paths.root.is_dir()
    assert paths.run_id == "my-run"
    assert paths.config_yaml == paths.root / "config.yaml"
    assert paths.metrics_jsonl == paths.root / "metrics.jsonl"
    assert paths.summary_yaml == paths.root / "summary.yaml"
    assert paths.log_txt == paths.root / "log.txt"
    # Only the directory itself exists; files are made by their writers.
    assert list(paths.root.iterdir()) == []


def test_create_generates_run_id_and_reuses_existing_dir(tmp_path: Path) -> None:
    paths = RunPaths.create(str(tmp_path))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_[a-z0-9]{5}", paths.run_id)
    assert paths.root == tmp_path / paths.run_id
    (paths.root / "keep.txt").write_text("x")
    again = RunPaths.create(tmp_path, paths.run_id)
    assert again == paths
    assert (again.root / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "x_cp=y"])
def test_create_rejects_run_ids_that_are_not_file_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        RunPaths.create(tmp_path, bad)


def test_checkpoints_dir_created_on_access(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path, "r")
    assert not (paths.root / "checkpoints").exists()
    assert paths.checkpoints == paths.root / "checkpoints"
    assert paths.checkpoints.is_dir()


def test_existing_requires_a_directory(tmp_path: Path) -> None:
    made = RunPaths.create(tmp_path, "run1")
    assert RunPaths.existing(made.root) == made
    with pytest.raises(UsageError, match="does not exist"):
        RunPaths.existing(tmp_path / "missing")


def test_checkpoint_file_names(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path, "r")
    cp = paths.root / "checkpoints"
    assert paths.checkpoint_file("model", "E1_U10_S320", "model") == cp / "model_cp=E1_U10_S320_model.th"
    assert paths.checkpoint_file("model", "latest", "optim") == cp / "model_cp=latest_optim.th"
    assert (
        paths.checkpoint_file("model.encoder", "last", "trainer") == cp / "model.encoder_cp=last_trainer.th"
    )
    assert (
        paths.checkpoint_file("model", "last", "model", ema=0.999) == cp / "model_ema=0.999_cp=last_model.th"
    )
    assert paths.checkpoint_file("m", "last", "model", ema=0.9999) == cp / "m_ema=0.9999_cp=last_model.th"


def test_checkpoint_file_rejects_bad_input(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path, "r")
    with pytest.raises(ValueError, match="EMA"):
        paths.checkpoint_file("model", "last", "optim", ema=0.99)
    with pytest.raises(ValueError, match="part"):
        paths.checkpoint_file("model", "last", "weights")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tag"):
        paths.checkpoint_file("model", "../escape", "model")
    with pytest.raises(ValueError, match="model name"):
        paths.checkpoint_file("", "last", "model")
    with pytest.raises(ValueError, match="finite"):
        paths.checkpoint_file("model", "last", "model", ema=float("nan"))


def test_tag_for_metric() -> None:
    assert tag_for_metric("loss/val/total") == "best_model.loss.val.total"
    assert tag_for_metric("loss/val/total", 3) == "best_model.loss.val.total.tolerance=3"
    assert tag_for_metric("accuracy") == "best_model.accuracy"
    assert tag_for_metric("ema=0.999/loss/val/") == "best_model.ema=0.999.loss.val"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="tolerance"):
            tag_for_metric("loss", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        tag_for_metric("/")


@given(st.text(alphabet="abcxyz019_/-=", min_size=1).filter(lambda k: k.strip("/")))
def test_tag_for_metric_is_a_file_name(key: str) -> None:
    tag = tag_for_metric(key)
    assert "/" not in tag
    assert tag.startswith("best_model.")


def test_parse_position_tag() -> None:
    assert parse_position_tag("E1_U10_S320") == (1, 10, 320)
    assert parse_position_tag("E0_U0_S0") == (0, 0, 0)
    for tag in ("latest", "last", "best_model.loss", "E1_U10", "E1_U10_S320x", "xE1_U10_S3"):
        assert parse_position_tag(tag) is None


def test_find_checkpoint_tags(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path, "r")
    files = [
        "model_cp=E10_U100_S3200_model.th",
        "model_cp=E10_U100_S3200_optim.th",
        "model_cp=E9_U90_S2880_model.th",
        "model_cp=E1_U10_S320_trainer.th",
        "model_cp=latest_model.th",
        "model_cp=best_model.loss.val.tolerance=2_model.th",
        "model_ema=0.99_cp=last_model.th",
        "model.encoder_cp=E2_U20_S640_model.th",
        "other_cp=last_model.th",
        "model_cp=stray.txt",
        ".model_cp=E11_U110_S3520_model.th.123.abcd.tmp",
    ]
    for name in files:
        (paths.checkpoints / name).write_bytes(b"")
    assert find_checkpoint_tags(paths.checkpoints, "model") == [
        "E1_U10_S320",
        "E9_U90_S2880",
        "E10_U100_S3200",  # numerically after E9, not as a string
        "best_model.loss.val.tolerance=2",
        "latest",
    ]
    assert find_checkpoint_tags(paths.checkpoints, "model", ema=0.99) == ["last"]
    assert paths.checkpoint_tags("model.encoder") == ["E2_U20_S640"]
    assert find_checkpoint_tags(tmp_path / "nowhere", "model") == []
