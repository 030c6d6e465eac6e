"""The trainer end to end: event order, ends, stops, failures, precision, accumulation, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pytest
import sample_plugins
import torch
import yaml
from tiny_runs import UPE, entry, fit, make_trainer, tiny_config, train, write_config

from noether_core import CallbackConfig, Counter, Run, hookimpl
from noether_core.cli import main
from noether_core.io.checkpoints import load_checkpoint
from noether_core.io.trackers import DiskTracker, read_metrics
from noether_core.run.datasets import Blobs
from noether_core.run.device import to_device
from noether_core.run.trainer import Trainer


def recorder(trainer: Trainer, index: int = 0) -> sample_plugins.Recorder:
    obj = entry(trainer, index)
    assert isinstance(obj, sample_plugins.Recorder)
    return obj


def test_events_fire_in_lifecycle_order(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None, accumulation_steps=2, clip_grad_norm=1.0)
    raw["datasets"]["train"]["kwargs"]["size"] = 64  # 4 updates per epoch
    raw["callbacks"] = [{"kind": "sample_plugins:Recorder", "every_n_updates": 3}]
    trainer = make_trainer(tmp_path, raw)
    assert trainer.fit() == "completed"
    events = recorder(trainer).events
    assert events[0] == ("before_training", 0, None)
    assert events[-1] == ("after_training", 6, "completed")
    # update 1: two micro-batches before the counter advances, then after_update with it advanced
    assert events[1:4] == [
        ("after_accumulation", 0, (0, 2)),
        ("after_accumulation", 0, (1, 2)),
        ("after_update", 1, True),
    ]
    ticks = [(e, u, x) for e, u, x in events if e in ("after_epoch", "at_eval")]
    assert ticks == [("at_eval", 3, "update"), ("after_epoch", 4, 1), ("at_eval", 6, "update")]
    assert sum(1 for e in events if e[0] == "after_update") == 6


class AsksBeforeTraining:
    """Asks, in ``before_training``, for an action after this step; records when the action ran."""

    Config = CallbackConfig
    runs: ClassVar[list[tuple[int, list[str]]]] = []

    def __init__(self, config: CallbackConfig) -> None:
        self.events: list[str] = []

    @hookimpl
    def before_training(self, trainer: Run, counter: Counter) -> None:
        def action() -> None:
            AsksBeforeTraining.runs.append((counter.update, list(self.events)))
            trainer.writer.add_scalar("asked/before_training", counter.update)

        trainer.after_this_step(action)

    @hookimpl
    def after_update(self, counter: Counter) -> None:
        self.events.append(f"after_update {counter.update}")


def test_an_action_asked_for_in_before_training_runs_after_the_first_update(tmp_path: Path) -> None:
    AsksBeforeTraining.runs = []
    raw = tiny_config(max_updates=3, max_epochs=None)
    raw["callbacks"] = [{"kind": "test_trainer:AsksBeforeTraining"}]
    _, records = fit(tmp_path, raw, expect="completed")
    # once, after update 1's events, and what it logs is in update 1's record
    assert AsksBeforeTraining.runs == [(1, ["after_update 1"])]
    asked = [r for r in records.records if "asked/before_training" in r]
    assert [(r["update"], r["asked/before_training"]) for r in asked] == [(1, 1)]


def test_end_part_way_through_an_epoch_finishes_cleanly(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=UPE + 5, max_epochs=None)
    raw["callbacks"] = [{"kind": "sample_plugins:Recorder", "every_n_epochs": 1}]
    trainer = make_trainer(tmp_path, raw)
    assert trainer.fit() == "completed"
    events = recorder(trainer).events
    assert trainer.counter.update == UPE + 5
    assert [e for e in events if e[0] == "after_epoch"] == [("after_epoch", UPE, 1)]
    assert events[-1] == ("after_training", UPE + 5, "completed")


def test_sample_end_rounds_up_to_whole_updates(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, tiny_config(max_samples=100, max_epochs=None))
    trainer.fit()
    assert trainer.counter.update == 7  # 7 * 16 = 112 >= 100
    assert trainer.counter.sample == 112


def test_stop_request_ends_the_run_with_status_stopped(tmp_path: Path) -> None:
    raw = tiny_config()
    raw["callbacks"] = [
        {"kind": "sample_plugins:Recorder", "every_n_updates": 1},
        {"kind": "sample_plugins:StopAt", "update": 5},
    ]
    trainer = make_trainer(tmp_path, raw)
    assert trainer.fit() == "stopped"
    assert trainer.counter.update == 5
    assert recorder(trainer).events[-1] == ("after_training", 5, "stopped")


def test_plugin_failure_runs_after_training_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config()
    raw["callbacks"] = [{"kind": "sample_plugins:Crash", "update": 4, "name": "crasher"}]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert "plugin 'crasher'" in err
    assert "after_update" in err
    assert "crash at update 4" in err
    assert "Traceback" not in err
    summary = yaml.safe_load((tmp_path / "r" / "summary.yaml").read_text())
    assert summary["status"] == "failed"
    assert "Traceback" in (tmp_path / "r" / "log.txt").read_text()


def test_metrics_and_summary_are_written(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=1)
    raw["callbacks"] = [
        {"kind": "sample_function_plugin:", "every_n_updates": 4},
        {"kind": "sample_plugins:Recorder", "every_n_epochs": 1},
    ]
    assert train(tmp_path, raw, "r") == 0
    run = tmp_path / "r"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records] == [4, 8, 12, 16]
    assert [r["heartbeat/U4"] for r in records] == [4, 8, 12, 16]
    assert records[-1]["rec/E1"] == 1.0
    assert records[-1]["epoch"] == 1
    assert records[-1]["sample"] == 256
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["status"] == "completed"
    assert summary["metrics"]["heartbeat/U4"]["last"] == 16
    plugins = {row["plugin"] for row in summary["summary"]["durations"]["plugins"]}
    assert plugins == {"sample_function_plugin:", "sample_plugins:Recorder"}
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["trainer"]["max_epochs"] == 1
    assert resolved["callbacks"][1]["label"] == "rec"


def test_same_key_from_two_entries_is_an_error_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_epochs=1)
    raw["callbacks"] = [
        {"kind": "sample_function_plugin:", "every_n_updates": 2, "name": "a"},
        {"kind": "sample_function_plugin:", "every_n_updates": 2, "name": "b"},
    ]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert "heartbeat/U2" in err
    assert "'a'" in err
    assert "'b'" in err


def test_slow_plugin_is_named_in_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config(max_updates=10, max_epochs=None, slow_plugin_share=0.2)
    raw["callbacks"] = [{"kind": "sample_plugins:Sleepy", "seconds": 0.02, "name": "sleepy"}]
    assert train(tmp_path, raw, "r") == 0
    out = capsys.readouterr().out
    assert "plugin time" in out
    assert "sleepy after_update (10 calls)" in out
    assert "plugin 'sleepy' took" in out


def test_grad_norm_reaches_plugins_only_when_clipping(tmp_path: Path) -> None:
    for clip, expected in ((None, False), (0.5, True)):
        raw = tiny_config(max_updates=2, max_epochs=None, clip_grad_norm=clip)
        raw["callbacks"] = [{"kind": "sample_plugins:Recorder", "every_n_updates": 1}]
        trainer = make_trainer(tmp_path, raw, run_id=f"clip{clip}")
        trainer.fit()
        assert [x for e, _, x in recorder(trainer).events if e == "after_update"] == [expected, expected]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_cpu(tmp_path: Path, precision: str) -> None:
    trainer = make_trainer(tmp_path, tiny_config(max_updates=20, max_epochs=None, precision=precision))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.fit() == "completed"
    after = list(trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert trainer.grad_scaler.is_enabled() == (precision == "fp16")


def test_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    weights = []
    for steps in (1, 4):
        raw = tiny_config(max_updates=8, max_epochs=None, accumulation_steps=steps)
        raw["model"]["kwargs"]["dropout"] = 0.0
        trainer = make_trainer(tmp_path, raw, run_id=f"acc{steps}")
        trainer.fit()
        weights.append(trainer.model.state_dict())
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-5)


def test_skip_nan_skips_the_update_and_gives_up_after_the_limit(tmp_path: Path) -> None:
    sample_plugins.NAN_UPDATES.clear()
    sample_plugins.NAN_UPDATES.update({3})
    sample_plugins.nan_at_updates.calls = 0  # type: ignore[attr-defined]
    raw = tiny_config(
        max_updates=5, max_epochs=None, skip_nan_loss=True, train_step="sample_plugins:nan_at_updates"
    )
    trainer = make_trainer(tmp_path, raw, run_id="skip")
    assert trainer.fit() == "completed"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    sample_plugins.NAN_UPDATES.update({1, 2, 3, 4})
    sample_plugins.nan_at_updates.calls = 0  # type: ignore[attr-defined]
    raw = tiny_config(
        max_updates=5,
        max_epochs=None,
        skip_nan_loss=True,
        skip_nan_loss_max_count=2,
        train_step="sample_plugins:nan_at_updates",
    )
    trainer = make_trainer(tmp_path, raw, run_id="limit")
    with pytest.raises(Exception, match="3 updates in a row"):
        trainer.fit()


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = make_trainer(tmp_path, tiny_config(max_updates=10, max_epochs=None), run_id="a")
    a.fit()
    b = make_trainer(tmp_path, tiny_config(max_updates=10, max_epochs=None), run_id="b")
    b.fit()
    for (ka, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


@pytest.mark.parametrize("interrupt_at", [UPE, UPE + 5])  # epoch-aligned and mid-epoch
def test_interrupted_and_resumed_run_is_bit_identical(
    tmp_path: Path, interrupt_at: int, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_epochs=3, accumulation_steps=2)
    raw["datasets"]["train"]["kwargs"]["size"] = 200  # 12 updates per epoch, 8 samples left over
    uninterrupted = dict(
        raw,
        callbacks=[
            {"kind": "sample_plugins:SaveAtEnd"},
            {"kind": "sample_plugins:Recorder", "every_n_updates": 4},
        ],
    )
    assert train(tmp_path, uninterrupted, "a") == 0

    interrupted = dict(
        raw,
        callbacks=[*uninterrupted["callbacks"], {"kind": "sample_plugins:SignalAt", "update": interrupt_at}],
    )
    assert train(tmp_path, interrupted, "b") == 130
    out = capsys.readouterr().out
    assert "resume with: noether train --resume" in out
    latest = load_checkpoint(tmp_path / "b" / "checkpoints" / "model_cp=latest_trainer.th")
    assert latest["counter"]["update"] == interrupt_at
    assert latest["plugins"]["sample_plugins:Recorder"] == {"evals": interrupt_at // 4}

    # the signal plugin would fire again at the same update only if the run restarted from 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--set", "callbacks[2].update=0"]) == 0
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "model_cp=final_model.th")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "model_cp=final_model.th")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records] == list(range(4, 3 * 12 + 1, 4))
    assert records[-1]["rec/U4"] == 9  # the evaluation count continued from the saved state


def test_resume_without_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tmp_path, tiny_config(max_updates=2, max_epochs=None), "r") == 0
    assert main(["train", "--resume", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint to resume from; tags present: last" in err
    assert "no tag is resumable" in err
    assert "Traceback" not in err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_from_corrupt_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [{"kind": "sample_plugins:SignalAt", "update": 3}]
    assert train(tmp_path, raw, "r") == 130
    trainer_file = tmp_path / "r" / "checkpoints" / "model_cp=latest_trainer.th"
    trainer_file.write_bytes(trainer_file.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "model_cp=latest_trainer.th" in err
    assert "Traceback" not in err


def test_dataset_smaller_than_one_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config()
    raw["datasets"]["train"]["kwargs"]["size"] = 10
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["train", str(cfg), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trainer.batch_size: the train dataset has 10 samples, fewer than one batch (16)" in err


def test_model_that_cannot_be_built(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config()
    raw["model"]["kwargs"]["hidden"] = -3
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["train", str(cfg), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model: building model 'mlp' failed" in err
    assert "Traceback" not in err


def test_resume_refuses_a_checkpoint_whose_parts_come_from_different_updates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for run, at in (("r3", 3), ("r5", 5)):
        raw = tiny_config(max_updates=8, max_epochs=None)
        raw["callbacks"] = [{"kind": "sample_plugins:SignalAt", "update": at}]
        assert train(tmp_path, raw, run) == 130
    name = "model_cp=latest_model.th"
    (tmp_path / "r3" / "checkpoints" / name).write_bytes(
        (tmp_path / "r5" / "checkpoints" / name).read_bytes()
    )
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err
    assert "is from update 5, the trainer state from update 3" in err


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=8, max_epochs=None)
    raw["callbacks"] = [
        {"kind": "sample_function_plugin:", "every_n_updates": 1},
        {"kind": "sample_plugins:SignalAt", "update": 5},
    ]
    assert train(tmp_path, raw, "r") == 130
    metrics = tmp_path / "r" / "metrics.jsonl"
    with metrics.open("a") as f:  # what a run killed after logging update 6 leaves behind
        f.write(json.dumps({"epoch": 0, "update": 6, "sample": 96, "heartbeat/U1": 6}) + "\n")
    assert main(["train", "--resume", str(tmp_path / "r"), "--set", "callbacks[1].update=0"]) == 0
    updates = [json.loads(line)["update"] for line in metrics.read_text().splitlines()]
    assert updates == [1, 2, 3, 4, 5, 6, 7, 8]


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import noether_core.io.checkpoints as writer

    raw = tiny_config(max_updates=8, max_epochs=None)
    raw["callbacks"] = [{"kind": "sample_plugins:SignalAt", "update": 3}]
    assert train(tmp_path, raw, "r") == 130
    latest = tmp_path / "r" / "checkpoints" / "model_cp=latest_model.th"
    before = latest.read_bytes()

    def disk_full(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.torch, "save", disk_full)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--set", "callbacks[0].update=5"]) == 1
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err
    assert "No space left on device" in err
    assert "Traceback" not in err
    assert latest.read_bytes() == before
    assert sorted(p.name for p in latest.parent.iterdir()) == [
        "model_cp=latest_model.th",
        "model_cp=latest_optim.th",
        "model_cp=latest_trainer.th",
    ]


def test_a_refused_resume_changes_nothing_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config(max_updates=8, max_epochs=None)
    raw["callbacks"] = [
        {"kind": "sample_function_plugin:", "every_n_updates": 1},
        {"kind": "sample_plugins:SignalAt", "update": 5},
    ]
    assert train(tmp_path, raw, "r") == 130
    run = tmp_path / "r"
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 0, "update": 6, "sample": 96, "heartbeat/U1": 6}) + "\n")
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "trainer.batch_size=8"]) == 2
    assert "batch geometry unchanged" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--set", "trainer.max_updates=3"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint 'latest' is at update 5, past this run's end (3 updates" in err
    assert "Traceback" not in err
    assert {name: (run / name).read_bytes() for name in before} == before


def test_an_existing_run_directory_is_not_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path, tiny_config(max_updates=2, max_epochs=None), "r") == 0
    assert train(tmp_path, tiny_config(max_updates=2, max_epochs=None), "r") == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err


def test_a_second_sigint_stops_at_once_without_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_updates=8, max_epochs=None)
    raw["callbacks"] = [
        {"kind": "sample_plugins:Recorder", "every_n_updates": 1},
        {"kind": "sample_plugins:SignalAt", "update": 3, "signal": "SIGINT", "times": 2},
    ]
    assert train(tmp_path, raw, "r") == 1
    assert "stopped at once by a second SIGINT; no checkpoint was saved" in capsys.readouterr().err
    assert not list((tmp_path / "r" / "checkpoints").glob("*latest*"))
    assert yaml.safe_load((tmp_path / "r" / "summary.yaml").read_text())["status"] == "failed"


def test_the_model_stays_in_train_mode_when_only_entries_that_never_run_it_are_called(
    tmp_path: Path,
) -> None:
    raw = tiny_config(max_updates=8, max_epochs=None)
    raw["datasets"]["train"]["kwargs"]["size"] = 64  # 4 updates per epoch
    raw["callbacks"] = [
        {"kind": "sample_plugins:TrainModeProbe", "every_n_updates": 2, "name": "light"},
        {"kind": "sample_plugins:ModeProbe", "every_n_updates": 4, "name": "evaluator"},
    ]
    trainer = make_trainer(tmp_path, raw)
    assert trainer.fit() == "completed"
    light, evaluator = (slot.obj for slot in trainer.plugins.slots)
    # at updates 2 and 6 only the light entry is due; at 4 and 8 the evaluator is too, and epochs end
    assert light.seen == [
        ("at_eval", 2, True),
        ("after_epoch", 4, False),
        ("at_eval", 4, False),
        ("at_eval", 6, True),
        ("after_epoch", 8, False),
        ("at_eval", 8, False),
    ]
    assert evaluator.seen == [
        ("after_epoch", 4, False),
        ("at_eval", 4, False),
        ("after_epoch", 8, False),
        ("at_eval", 8, False),
    ]
    assert trainer.model.training is False  # after_training, as always


def test_an_epoch_end_with_only_light_listeners_keeps_train_mode(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=8, max_epochs=None)
    raw["datasets"]["train"]["kwargs"]["size"] = 64
    raw["callbacks"] = [{"kind": "sample_plugins:TrainModeProbe", "every_n_updates": 3}]
    trainer = make_trainer(tmp_path, raw)
    assert trainer.fit() == "completed"
    assert trainer.plugins.slots[0].obj.seen == [
        ("at_eval", 3, True),
        ("after_epoch", 4, True),
        ("at_eval", 6, True),
        ("after_epoch", 8, True),
    ]


def test_records_logged_before_a_checkpoint_reach_the_disk_before_it(tmp_path: Path) -> None:
    """The on-disk tracker buffers its records for up to a second; a checkpoint flushes them first, so a
    process killed after the checkpoint keeps every record a resume from it needs."""
    tracker = DiskTracker()
    trainer = make_trainer(tmp_path, tiny_config(), trackers=[tracker])
    tracker.start(trainer.paths, {})
    for update in (1, 2, 3):
        tracker.log({"epoch": 0, "update": update, "sample": 16 * update, "loss/online/total/U1": 1.0})
    trainer.save_checkpoint("latest")
    assert [r["update"] for r in read_metrics(trainer.paths.metrics_jsonl)] == [1, 2, 3]
    tracker.close("completed")


class Sample(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


class NamedTupleBlobs(torch.utils.data.Dataset[Sample]):
    """The bundled blobs, each sample a :class:`Sample` namedtuple (collated into one per batch)."""

    def __init__(self, size: int) -> None:
        self.data = Blobs(size=size, seed=0)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Sample:
        x, y = self.data[index]
        return Sample(x, y)


def test_a_namedtuple_batch_reaches_the_train_step_as_one(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=3, max_epochs=None)
    raw["datasets"] = {"train": {"kind": "test_trainer:NamedTupleBlobs", "kwargs": {"size": 64}}}
    trainer = make_trainer(tmp_path, raw)
    seen: list[type] = []
    step = trainer.train_step
    trainer.train_step = lambda model, batch: (seen.append(type(batch)), step(model, batch))[1]
    assert trainer.fit() == "completed"
    assert seen == [Sample] * 3


def test_a_namedtuple_batch_evaluates_like_it_trains(tmp_path: Path) -> None:
    """Training and evaluation move batches with one function: a batch type that trains also
    evaluates (the evaluation's own mover once rebuilt a namedtuple from a generator: TypeError)."""
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["datasets"] = {
        name: {"kind": "test_trainer:NamedTupleBlobs", "kwargs": {"size": 64}} for name in ("train", "val")
    }
    raw["callbacks"] = [{"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2}]
    _, records = fit(tmp_path, raw, expect="completed")
    assert sorted(records.values("loss/val/total")) == [2, 4]


def test_to_device_moves_every_tensor_and_keeps_every_container_type() -> None:
    meta = torch.device("meta")
    batch = {"pair": Sample(torch.zeros(2), torch.ones(2)), "list": [torch.zeros(1), "label"], "n": 3}
    moved = to_device(batch, meta)
    assert type(moved["pair"]) is Sample
    assert moved["pair"].x.device == meta
    assert moved["pair"].y.device == meta
    assert type(moved["list"]) is list
    assert moved["list"][0].device == meta
    assert moved["list"][1] == "label"
    assert moved["n"] == 3
    cpu = torch.zeros(1)
    assert to_device(cpu, torch.device("cpu")) is cpu  # nothing to move: the very tensor
