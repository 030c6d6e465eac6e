"""CheckpointCallback and BestCheckpointCallback, end to end: files, tags, retention, resume, tolerances,
a SIGKILL in the middle of a save."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from tiny_runs import UPE, composite_model, noether_script, tiny_config, train, write_config

from noether_core import CallbackConfig, hookimpl
from noether_core.cli import main
from noether_core.io.checkpoints import load_checkpoint
from noether_plugins.best_checkpoint import BestCheckpointCallback


class ValLoss:
    """Logs ``loss/{dataset_key}/total`` of the model on a whole dataset (a stand-in for OfflineLoss)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        dataset_key: str = "val"

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, trainer: Any, model: torch.nn.Module, config: Config) -> None:
        data = trainer.data[config.dataset_key]
        x = torch.stack([data[i][0] for i in range(len(data))])
        y = torch.stack([data[i][1] for i in range(len(data))])
        trainer.writer.add_scalar(
            f"loss/{config.dataset_key}/total", torch.nn.functional.cross_entropy(model(x), y)
        )


class Scripted:
    """Logs ``values[k]`` under ``key`` at its k-th due update (from the counter, so resumes agree)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        metric: str = "loss/val/total"
        values: list[float] = attrs.Factory(list)

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, trainer: Any, counter: Any, config: Config) -> None:
        assert config.every_n_updates is not None
        trainer.writer.add_scalar(config.metric, config.values[counter.update // config.every_n_updates - 1])


def checkpoint_names(run: Path) -> set[str]:
    return {p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")}


def weights(file: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(file)["state_dict"]  # type: ignore[no-any-return]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), (a.name, b.name, key)


# ---------------------------------------------------------------------------------------- CheckpointCallback


def test_default_entry_writes_positions_latest_and_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config()  # 2 epochs of 16 updates
    raw["callbacks"] = [{"kind": "CheckpointCallback", "every_n_epochs": 1}]
    assert train(tmp_path, raw, "r") == 0
    run = tmp_path / "r"
    # every tag a CheckpointCallback writes is a whole resumable set by default
    assert checkpoint_names(run) == {
        f"model_cp={tag}_{part}.th"
        for tag in ("E1_U16_S256", "E2_U32_S512", "latest", "last")
        for part in ("model", "optim", "trainer")
    }
    for part in ("model", "optim", "trainer"):
        payload = load_checkpoint(run / "checkpoints" / f"model_cp=latest_{part}.th")
        assert payload["training_iteration"] == {"epoch": 2, "update": 32, "sample": 512}
    # mlp 2-16-16-4: 388 float32 parameters; AdamW keeps two moments of each
    out = capsys.readouterr().out
    assert "checkpoint sizes (estimated): weights 1.6 kB, optimizer 3.1 kB; latest 4.7 kB" in out
    assert "each E*_U*_S* checkpoint 4.7 kB, 2 to come: 9.3 kB written" in out


def test_save_optim_adds_optimizer_files_to_positions_and_last(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=1)
    raw["callbacks"] = [
        {
            "kind": "CheckpointCallback",
            "every_n_epochs": 1,
            "save_optim": True,
            "save_latest_weights": False,
            "save_latest_optim": False,
        }
    ]
    assert train(tmp_path, raw, "r") == 0
    assert checkpoint_names(tmp_path / "r") == {
        f"model_cp={tag}_{part}.th"
        for tag in ("E1_U16_S256", "last")
        for part in ("model", "optim", "trainer")
    }


def test_all_four_flags_false_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config()
    raw["callbacks"] = [
        {
            "kind": "CheckpointCallback",
            "every_n_epochs": 1,
            "save_weights": False,
            "save_optim": False,
            "save_latest_weights": False,
            "save_latest_optim": False,
        }
    ]
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "callbacks[0]" in err
    assert (
        "At least one of save_weights, save_latest_weights, save_optim, save_latest_optim must be True."
        in err
    )


def test_keep_last_n_prunes_old_position_tags(tmp_path: Path) -> None:
    raw = tiny_config()
    raw["callbacks"] = [
        {"kind": "CheckpointCallback", "every_n_updates": 4, "keep_last_n": 2, "save_optim": True}
    ]
    assert train(tmp_path, raw, "r") == 0
    names = checkpoint_names(tmp_path / "r")
    positions = sorted({n.split("_cp=")[1].rsplit("_", 1)[0] for n in names if "_cp=E" in n})
    assert positions == ["E1_U28_S448", "E2_U32_S512"]
    assert {"model_cp=latest_model.th", "model_cp=last_model.th"} <= names


def test_model_names_restrict_positions_but_latest_keeps_every_part(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=1)
    raw["model"] = composite_model()
    raw["callbacks"] = [{"kind": "CheckpointCallback", "every_n_epochs": 1, "model_names": ["head"]}]
    assert train(tmp_path, raw, "r") == 0
    names = checkpoint_names(tmp_path / "r")
    assert "clf.head_cp=E1_U16_S256_model.th" in names
    assert "clf.encoder_cp=E1_U16_S256_model.th" not in names
    assert "clf.head_cp=last_model.th" in names
    assert "clf.encoder_cp=last_model.th" not in names
    assert {
        "clf.encoder_cp=latest_model.th",
        "clf.head_cp=latest_model.th",
        "clf_cp=latest_optim.th",
    } <= names


def test_unknown_model_name_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config(max_epochs=1)
    raw["model"] = composite_model()
    raw["callbacks"] = [{"kind": "CheckpointCallback", "every_n_epochs": 1, "model_names": ["decoder"]}]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert "model_names ['decoder'] match no model part; the parts are clf.encoder, clf.head" in err


def test_evaluation_only_runs_save_nothing(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=1)
    raw["callbacks"] = [{"kind": "CheckpointCallback", "every_n_epochs": 1}]
    assert train(tmp_path, raw, "r") == 0
    run = tmp_path / "r"
    before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    assert main(["eval", str(run)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == before


def test_failed_run_saves_no_last_and_default_resume_continues_exactly(tmp_path: Path) -> None:
    """Only a default CheckpointCallback entry: after a crash at update 20 the run resumes from its
    ``latest`` (update 16: weights, optimizer and trainer state) and ends bit-identical."""
    raw = tiny_config()
    entry = {"kind": "CheckpointCallback", "every_n_epochs": 1}
    raw["callbacks"] = [entry, {"kind": "sample_plugins:Crash", "update": 0}]
    assert train(tmp_path, raw, "a") == 0
    raw["callbacks"] = [entry, {"kind": "sample_plugins:Crash", "update": UPE + 4}]
    assert train(tmp_path, raw, "b") == 1
    b = tmp_path / "b"
    assert not any("_cp=last_" in n for n in checkpoint_names(b))
    assert load_checkpoint(b / "checkpoints" / "model_cp=latest_trainer.th")["counter"]["update"] == UPE
    assert main(["train", "--resume", str(b), "--set", "callbacks[1].update=0"]) == 0
    assert_same_weights(
        tmp_path / "a" / "checkpoints" / "model_cp=last_model.th",
        b / "checkpoints" / "model_cp=last_model.th",
    )


def test_interrupted_run_saves_last(tmp_path: Path) -> None:
    raw = tiny_config()
    raw["callbacks"] = [
        {"kind": "CheckpointCallback", "every_n_epochs": 1},
        {"kind": "sample_plugins:SignalAt", "update": 5},
    ]
    assert train(tmp_path, raw, "r") == 130
    last = load_checkpoint(tmp_path / "r" / "checkpoints" / "model_cp=last_model.th")
    assert last["training_iteration"]["update"] == 5
    latest = load_checkpoint(tmp_path / "r" / "checkpoints" / "model_cp=latest_trainer.th")
    assert latest["counter"]["update"] == 5


KILL_CONFIG = """\
trainer: {max_updates: 400, batch_size: 16, seed: 0, num_threads: 1, add_default_callbacks: false}
model: {kind: mlp, kwargs: {in_features: 2, out_features: 4, hidden: 1024, depth: 3}}
optimizer: {kind: adamw, lr: 0.0001}
datasets:
  train: {kind: blobs, kwargs: {size: 256, seed: 0}}
callbacks:
  - {kind: CheckpointCallback, every_n_updates: 1, save_weights: false}
"""


@pytest.mark.parametrize("part", ["model", "optim"])
def test_sigkill_while_saving_leaves_the_previous_latest_loadable(tmp_path: Path, part: str) -> None:
    """A real process killed with SIGKILL while it writes ``latest`` (the temporary file of ``part`` on
    disk): ``latest`` is one whole set, all its files from one update, and the run resumes from it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(KILL_CONFIG)
    checkpoints = tmp_path / "r" / "checkpoints"
    proc = subprocess.Popen(
        [str(noether_script()), "train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "r"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        killed = False

        def writing(names: list[str]) -> bool:
            return "model_cp=latest_trainer.th" in names and any(
                n.startswith(f".model_cp=latest_{part}.th.") for n in names
            )

        while time.monotonic() < deadline and proc.poll() is None:
            try:
                names = os.listdir(checkpoints)
            except FileNotFoundError:
                continue
            if writing(names):
                # freeze it, then look again: still writing that file means the kill lands inside its write
                proc.send_signal(signal.SIGSTOP)
                os.waitpid(proc.pid, os.WUNTRACED)
                if writing(os.listdir(checkpoints)):
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                proc.send_signal(signal.SIGCONT)
        assert killed, "never saw a save of latest in progress"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # the partial file is beside the target, never on it
    assert any(n.endswith(".tmp") for n in os.listdir(checkpoints))
    positions = {
        p: load_checkpoint(checkpoints / f"model_cp=latest_{p}.th")["training_iteration"]["update"]
        for p in ("model", "optim", "trainer")
    }
    resumed = subprocess.run(
        [
            str(noether_script()),
            "train",
            "--resume",
            str(tmp_path / "r"),
            "--set",
            "trainer.max_updates=" + str(positions["trainer"] + 2),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert len(set(positions.values())) == 1, positions
    assert resumed.returncode == 0, resumed.stderr
    assert f"at E0_U{positions['trainer']}_S" in resumed.stdout
    assert not any(n.endswith(".tmp") for n in os.listdir(checkpoints))  # swept at start


# ------------------------------------------------------------------------------------ BestCheckpointCallback

# lower is better: bests at evaluations 1, 2, 5, 9; patience 1 runs out at 3, patience 2 at 4, patience 3 at 8
SCRIPT = [5.0, 4.0, 4.5, 4.2, 3.0, 3.5, 3.6, 3.7, 2.0, 2.5]


def tolerance_config(**trainer: Any) -> dict[str, Any]:
    raw = tiny_config(max_updates=len(SCRIPT), max_epochs=None, **trainer)
    raw["callbacks"] = [
        {"kind": "test_checkpoint_plugins:Scripted", "every_n_updates": 1, "values": SCRIPT},
        {"kind": "CheckpointCallback", "every_n_updates": 1},
        {
            "kind": "BestCheckpointCallback",
            "every_n_updates": 1,
            "metric_key": "loss/val/total",
            "tolerances": [1, 2, 3, 4],
        },
    ]
    return raw


def best_file(run: Path, tag: str) -> Path:
    return run / "checkpoints" / f"model_cp={tag}_model.th"


def position_file(run: Path, update: int) -> Path:
    return run / "checkpoints" / f"model_cp=E0_U{update}_S{16 * update}_model.th"


def test_tolerance_files_hold_the_best_as_of_when_patience_ran_out(tmp_path: Path) -> None:
    assert train(tmp_path, tolerance_config(), "r") == 0
    run = tmp_path / "r"
    expected = {
        "best_model.loss.val.total": 9,
        "best_model.loss.val.total.tolerance=1": 2,  # ran out at evaluation 3; not replaced by later bests
        "best_model.loss.val.total.tolerance=2": 2,  # ran out at 4
        "best_model.loss.val.total.tolerance=3": 5,  # ran out at 8, after the best of evaluation 5
        "best_model.loss.val.total.tolerance=4": 9,  # never ran out: the final best, as early stopping keeps
    }
    for tag, update in expected.items():
        assert load_checkpoint(best_file(run, tag))["training_iteration"]["update"] == update, tag
        assert_same_weights(best_file(run, tag), position_file(run, update))
    assert not (run / "checkpoints" / "model_cp=best_model.loss.val.total_trainer.th").exists()


@pytest.mark.parametrize(
    ("stopper", "status"),
    [
        ({"kind": "sample_plugins:SignalAt", "update": 3}, 130),
        ({"kind": "sample_plugins:Crash", "update": 4}, 1),
    ],
    ids=["sigterm", "crash"],
)
def test_tolerances_continue_across_a_resume(tmp_path: Path, stopper: dict[str, Any], status: int) -> None:
    """Interrupted after evaluation 3 (patience 1 just ran out): by SIGTERM (the trainer saves ``latest``
    after the step), or by a crash in update 4 (``latest`` is CheckpointCallback's of update 3, listed
    before BestCheckpointCallback, and still holds its state after evaluation 3)."""
    assert train(tmp_path, tolerance_config(), "a") == 0
    raw = tolerance_config()
    raw["callbacks"].append(stopper)
    assert train(tmp_path, raw, "b") == status
    b = tmp_path / "b"
    state = load_checkpoint(b / "checkpoints" / "model_cp=latest_trainer.th")["plugins"][
        "BestCheckpointCallback"
    ]
    assert state == {"tracks": {"": {"best": 4.0, "best_at": "E0_U2_S32", "stale": 1, "exhausted": {1: 4.0}}}}
    tolerance1 = best_file(b, "best_model.loss.val.total.tolerance=1")
    written = tolerance1.stat().st_mtime_ns
    assert main(["train", "--resume", str(b), "--set", "callbacks[3].update=0"]) == 0
    assert tolerance1.stat().st_mtime_ns == written  # never overwritten after patience 1 ran out
    for tag in (
        "best_model.loss.val.total",
        *(f"best_model.loss.val.total.tolerance={t}" for t in (1, 2, 3, 4)),
    ):
        assert_same_weights(best_file(tmp_path / "a", tag), best_file(b, tag))
        assert (
            load_checkpoint(best_file(b, tag))["training_iteration"]
            == load_checkpoint(best_file(tmp_path / "a", tag))["training_iteration"]
        )


def test_higher_is_better_comes_from_the_metric_properties(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["callbacks"] = [
        {
            "kind": "test_checkpoint_plugins:Scripted",
            "every_n_updates": 1,
            "metric": "val/accuracy",
            "values": [0.5, 0.9, 0.7, 0.8],
        },
        {"kind": "BestCheckpointCallback", "every_n_updates": 1, "metric_key": "val/accuracy"},
    ]
    assert train(tmp_path, raw, "r") == 0
    best = load_checkpoint(best_file(tmp_path / "r", "best_model.val.accuracy"))
    assert best["training_iteration"]["update"] == 2


def test_missing_metric_names_what_was_logged_and_the_producer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_epochs=1)
    raw["callbacks"] = [
        {"kind": "test_checkpoint_plugins:ValLoss", "every_n_epochs": 1, "dataset_key": "train"},
        {"kind": "BestCheckpointCallback", "every_n_epochs": 1, "metric_key": "loss/val/total"},
    ]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert (
        "metric 'loss/val/total' was not logged at update 16 (E1_U16_S256); "
        "logged this step: loss/train/total" in err
    )
    assert "An OfflineLossCallback entry with dataset_key: val must run at this update" in err


def test_a_metric_nobody_logs_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config(max_epochs=1)
    raw["callbacks"] = [
        {"kind": "BestCheckpointCallback", "every_n_epochs": 1, "metric_key": "loss/val/total"}
    ]
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "callbacks[0]: BestCheckpointCallback (every_n_epochs=1) reads 'loss/val/total'" in err
    assert "OfflineLossCallback, dataset_key: val" in err


def test_metric_without_a_direction_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_updates=2, max_epochs=None)
    raw["callbacks"] = [
        {
            "kind": "test_checkpoint_plugins:Scripted",
            "every_n_updates": 1,
            "metric": "val/psnr",
            "values": [1.0, 2.0],
        },
        {"kind": "BestCheckpointCallback", "every_n_updates": 1, "metric_key": "val/psnr"},
    ]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert "before_training" in err
    assert "val/psnr" in err


@pytest.mark.parametrize("save_frozen", [True, False])
def test_save_frozen_weights_is_honoured(tmp_path: Path, save_frozen: bool) -> None:
    raw = tiny_config(max_updates=2, max_epochs=None)
    raw["model"] = composite_model(frozen_encoder=True)
    raw["callbacks"] = [
        {"kind": "test_checkpoint_plugins:Scripted", "every_n_updates": 1, "values": [2.0, 1.0]},
        {
            "kind": "BestCheckpointCallback",
            "every_n_updates": 1,
            "metric_key": "loss/val/total",
            "save_frozen_weights": save_frozen,
            "tolerances": [1],
        },
    ]
    assert train(tmp_path, raw, "r") == 0
    names = checkpoint_names(tmp_path / "r")
    assert "clf.head_cp=best_model.loss.val.total_model.th" in names
    assert ("clf.encoder_cp=best_model.loss.val.total_model.th" in names) is save_frozen
    assert ("clf.encoder_cp=best_model.loss.val.total.tolerance=1_model.th" in names) is save_frozen


def test_consumes_declares_the_metric_key() -> None:
    config = BestCheckpointCallback.Config(
        kind="BestCheckpointCallback", every_n_epochs=1, metric_key="loss/val/total"
    )
    assert BestCheckpointCallback.consumes(config) == ["loss/val/total"]


def test_bad_tolerances_are_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config()
    raw["callbacks"] = [
        {
            "kind": "BestCheckpointCallback",
            "every_n_epochs": 1,
            "metric_key": "loss/val/total",
            "tolerances": [0],
        },
        {
            "kind": "BestCheckpointCallback",
            "every_n_epochs": 1,
            "metric_key": "loss/val/total",
            "name": "b",
            "tolerances": [2, 2],
        },
    ]
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "callbacks[0].tolerances" in err
    assert "callbacks[1].tolerances: tolerances must be distinct" in err


# ------------------------------------------------------------------------------------ the seeds' examples

BASE_YAML = """\
trainer: {max_epochs: 2, batch_size: 16}
model:
  kind: composite
  name: model
  parts:
    encoder: {kind: mlp, kwargs: {in_features: 2, out_features: 8}}
    head: {kind: mlp, kwargs: {in_features: 8, out_features: 4}}
datasets:
  train: {kind: blobs}
  val: {kind: blobs, kwargs: {seed: 1}}
"""

SEED_BEST_CHECKPOINT = """\
callbacks:
  - kind: noether.core.callbacks.BestCheckpointCallback
    name: BestCheckpointCallback
    every_n_epochs: 1
    metric_key: loss/val/total
    model_names:  # only applies when training a CompositeModel
      - encoder
"""

SEED_CHECKPOINT = """\
- kind: noether.core.callbacks.CheckpointCallback
  name: CheckpointCallback
  every_n_epochs: 1
  save_weights: true
  save_optim: true
"""


#: the seeds' examples are fragments; a producer of the metric their consumer reads comes first
PRODUCER = "callbacks:\n  - {kind: OfflineLossCallback, dataset_key: val, every_n_epochs: 1}\n"


@pytest.mark.parametrize(
    "callbacks",
    [PRODUCER + SEED_BEST_CHECKPOINT.removeprefix("callbacks:\n"), "callbacks:\n" + SEED_CHECKPOINT],
    ids=["best", "checkpoint"],
)
def test_seed_examples_validate_unchanged(
    tmp_path: Path, callbacks: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE_YAML + callbacks)
    assert main(["config", "validate", str(cfg)]) == 0, capsys.readouterr().err
