"""EmaCallback: the averaging formula, fused update, swapping for child evaluations, files, exact resume."""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from tiny_runs import UPE, composite_model, entry, make_trainer, tiny_config, train, write_config
from torch import nn

from noether_core import CallbackConfig, hookimpl
from noether_core.cli import main
from noether_core.errors import PluginFailure
from noether_core.io.checkpoints import load_checkpoint
from noether_core.run.counter import seek
from noether_core.run.trainer import Trainer
from noether_plugins.ema import EmaCallback


def bn_mlp() -> nn.Module:
    """A model with buffers (batch-norm statistics)."""
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))


class WeightProbe:
    """Records the parameters it sees at each evaluation, with the metric prefix, and logs their sum."""

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config
        self.seen: list[tuple[str, list[torch.Tensor]]] = []

    @hookimpl
    def at_eval(self, trainer: Any, model: nn.Module, config: CallbackConfig) -> None:
        self.seen.append((trainer.writer.prefix, [p.detach().clone() for p in model.parameters()]))
        assert config.interval is not None
        trainer.writer.add_scalar(f"probe/{config.interval.short}", sum(p.sum() for p in model.parameters()))


class Vandal:
    """Scribbles over the weights and buffers it is given, then (``fail``) raises."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        fail: bool = True

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, model: nn.Module, config: Config) -> None:
        for t in (*model.parameters(), *model.buffers()):
            t.add_(1)
        if config.fail:
            raise RuntimeError("child evaluation failed")


def ema_trainer(
    tmp_path: Path, ema: dict[str, Any], *, model: dict[str, Any] | None = None
) -> tuple[Trainer, EmaCallback]:
    raw = tiny_config()
    if model is not None:
        raw["model"] = model
    raw["callbacks"] = [{"kind": "EmaCallback", "every_n_epochs": 1, **ema}]
    trainer = make_trainer(tmp_path, raw)
    obj = entry(trainer, 0)
    assert isinstance(obj, EmaCallback)
    return trainer, obj


def call(trainer: Trainer, ema: EmaCallback, hook: str, **extra: Any) -> None:
    """Call one hook of the EMA entry the way the trainer does (core arguments plus the hook's own)."""
    method = getattr(ema, hook)
    arguments = {
        "trainer": trainer,
        "model": trainer.model,
        "counter": trainer.counter,
        "config": trainer.plugins.slots[0].config,
        **extra,
    }
    method(**{name: arguments[name] for name in inspect.signature(method).parameters})


def update(trainer: Trainer, ema: EmaCallback) -> None:
    ema.after_update(trainer=trainer, losses={}, times={}, grad_norm=None)


def averages(ema: EmaCallback) -> dict[float, list[torch.Tensor]]:
    return {a["factor"]: list(a["params"].values()) for a in ema.state_dict()["averages"]}


# ---------------------------------------------------------------------------------------- the average


@pytest.mark.parametrize(
    ("factor", "start", "live", "expected"),
    [(0.9, 2.0, 10.0, 2.8), (0.5, 2.0, 4.0, 3.0), (0.75, 4.0, 8.0, 5.0)],
)
def test_update_formula(tmp_path: Path, factor: float, start: float, live: float, expected: float) -> None:
    trainer, ema = ema_trainer(tmp_path, {"target_factors": [factor]}, model={"kind": "linear"})
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(start)
        call(trainer, ema, "before_training")
        shadows = averages(ema)[factor]
        for p in trainer.model.parameters():
            p.fill_(live)
        update(trainer, ema)
    after = averages(ema)[factor]
    assert all(a is b for a, b in zip(after, shadows, strict=True))  # updated in place
    for shadow in after:
        assert torch.allclose(shadow, torch.full_like(shadow, expected), rtol=0, atol=1e-6), shadow


def test_all_factors_move_in_one_fused_call_per_dtype(tmp_path: Path) -> None:
    trainer, ema = ema_trainer(tmp_path, {"target_factors": [0.9, 0.5]}, model={"kind": "linear"})
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(2.0)
        call(trainer, ema, "before_training")
        for p in trainer.model.parameters():
            p.fill_(10.0 if p.ndim == 2 else 4.0)  # weight 2 -> 10, bias 2 -> 4
        update(trainer, ema)
    assert len(ema._steps) == 1
    got = averages(ema)
    assert [float(t.flatten()[0]) for t in got[0.9]] == pytest.approx([2.8, 2.2])
    assert [float(t.flatten()[0]) for t in got[0.5]] == pytest.approx([6.0, 3.0])


def test_files_hold_the_averages_and_the_live_buffers(tmp_path: Path) -> None:
    trainer, ema = ema_trainer(tmp_path, {"target_factors": [0.9]}, model={"kind": "test_ema:bn_mlp"})
    with torch.no_grad():
        call(trainer, ema, "before_training")
        for t in (*trainer.model.parameters(), *trainer.model.buffers()):
            t.add_(1)
        update(trainer, ema)
    seek(trainer.counter, UPE)
    call(trainer, ema, "at_eval", interval="epoch")
    file = trainer.paths.checkpoint_file("model", "E1_U16_S256", "model", ema=0.9)
    payload = load_checkpoint(file)
    assert payload["ema"] == 0.9
    assert payload["training_iteration"]["update"] == UPE
    live = trainer.model.state_dict()
    assert payload["state_dict"].keys() == live.keys()
    assert torch.equal(payload["state_dict"]["1.running_mean"], live["1.running_mean"])
    assert torch.equal(payload["state_dict"]["0.weight"], averages(ema)[0.9][0])
    assert not torch.equal(payload["state_dict"]["0.weight"], live["0.weight"])


# ---------------------------------------------------------------------------------------- swapping


@pytest.mark.parametrize("fail", [True, False])
def test_children_see_the_averages_and_live_weights_come_back_bit_for_bit(tmp_path: Path, fail: bool) -> None:
    children = [
        {"kind": "test_ema:WeightProbe", "every_n_updates": 1},
        {"kind": "test_ema:Vandal", "every_n_updates": 1, "fail": fail},
    ]
    trainer, ema = ema_trainer(
        tmp_path,
        {"target_factors": [0.9, 0.5], "eval_callbacks": children},
        model={"kind": "test_ema:bn_mlp"},
    )
    model = trainer.model
    with torch.no_grad():
        call(trainer, ema, "before_training")
        for t in (*model.parameters(), *model.buffers()):
            t.copy_(torch.randn_like(t.float()).to(t.dtype))
        update(trainer, ema)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    seek(trainer.counter, 1)
    with torch.no_grad():
        if fail:
            with pytest.raises(PluginFailure, match="child evaluation failed"):
                call(trainer, ema, "at_eval", interval="epoch")
        else:
            call(trainer, ema, "at_eval", interval="epoch")
    for key, value in model.state_dict().items():
        assert torch.equal(value, live[key]), key
    probe = entry(trainer, 1)
    assert isinstance(probe, WeightProbe)
    expected = averages(ema)
    factors = [0.9] if fail else [0.9, 0.5]
    assert [prefix for prefix, _ in probe.seen] == [f"ema={f}/" for f in factors]
    for (_, seen), factor in zip(probe.seen, factors, strict=True):
        for a, b in zip(seen, expected[factor], strict=True):
            assert torch.equal(a, b)


def test_children_keys_are_prefixed_and_keep_their_own_intervals(tmp_path: Path) -> None:
    raw = tiny_config()  # 2 epochs of 16 updates
    raw["callbacks"] = [
        {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_epochs": 1},
        {
            "kind": "EmaCallback",
            "every_n_epochs": 2,
            "target_factors": [0.9, 0.99],
            "eval_callbacks": [
                {
                    "kind": "OfflineLossCallback",
                    "dataset_key": "val",
                    "every_n_updates": 8,
                    "name": "ema_val",
                },
                {
                    "kind": "BestCheckpointCallback",
                    "every_n_updates": 8,
                    "metric_key": "loss/val/total",
                    "name": "ema_best",
                },
            ],
        },
    ]
    assert train(tmp_path, raw, "r") == 0
    run = tmp_path / "r"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for factor in ("0.9", "0.99"):
        assert [r["update"] for r in records if f"ema={factor}/loss/val/total" in r] == [8, 16, 24, 32]
    assert [r["update"] for r in records if "loss/val/total" in r] == [16, 32]
    at16 = next(r for r in records if r["update"] == 16)
    assert at16["ema=0.99/loss/val/total"] != at16["loss/val/total"] != at16["ema=0.9/loss/val/total"]
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {
        "model_ema=0.9_cp=E2_U32_S512_model.th",
        "model_ema=0.99_cp=last_model.th",
        "model_cp=best_model.ema=0.9.loss.val.total_model.th",
        "model_cp=best_model.ema=0.99.loss.val.total_model.th",
    } <= names
    assert "model_ema=0.9_cp=E1_U16_S256_model.th" not in names  # the entry's own interval is 2 epochs


def test_children_that_watch_micro_batches_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_updates=2, max_epochs=None)
    raw["callbacks"] = [
        {
            "kind": "EmaCallback",
            "every_n_epochs": 1,
            "target_factors": [0.9],
            "eval_callbacks": [{"kind": "sample_plugins:Recorder", "every_n_updates": 1}],
        }
    ]
    assert train(tmp_path, raw, "r") == 1
    assert "watches micro-batches (after_accumulation)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- resume


def ema_run_config(**ema: Any) -> dict[str, Any]:
    raw = tiny_config(max_epochs=2)
    raw["callbacks"] = [{"kind": "EmaCallback", "every_n_epochs": 1, "target_factors": [0.9, 0.99], **ema}]
    return raw


def ema_file(run: Path, factor: float, tag: str) -> Path:
    return run / "checkpoints" / f"model_ema={factor}_cp={tag}_model.th"


def assert_same_averages(
    a: Path, b: Path, tags: tuple[str, ...] = ("E1_U16_S256", "E2_U32_S512", "last")
) -> None:
    for factor in (0.9, 0.99):
        for tag in tags:
            wa = load_checkpoint(ema_file(a, factor, tag))["state_dict"]
            wb = load_checkpoint(ema_file(b, factor, tag))["state_dict"]
            for key in wa:
                assert torch.equal(wa[key], wb[key]), (factor, tag, key)


def resume_renamed(run: Path) -> int:
    """Resume ``run`` with the EMA entry renamed, so the trainer checkpoint holds no state for it."""
    overrides = ["--set", "callbacks[0].name=renamed", "--set", "callbacks[1].update=0"]
    return main(["train", "--resume", str(run), *overrides])


def interrupted(tmp_path: Path, run_id: str, raw: dict[str, Any], at: int = UPE + 5) -> Path:
    raw = dict(raw, callbacks=[*raw["callbacks"], {"kind": "sample_plugins:SignalAt", "update": at}])
    assert train(tmp_path, raw, run_id) == 130
    return tmp_path / run_id


def uninterrupted(tmp_path: Path, raw: dict[str, Any]) -> Path:
    assert train(tmp_path, raw, "a") == 0
    return tmp_path / "a"


def test_resumed_run_continues_the_same_average(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM part-way through epoch 2: the resumed run's averages equal an uninterrupted run's, bit
    for bit."""
    a = uninterrupted(tmp_path, ema_run_config())
    b = interrupted(tmp_path, "b", ema_run_config())
    assert load_checkpoint(ema_file(b, 0.9, "last"))["training_iteration"]["update"] == UPE + 5
    capsys.readouterr()
    assert main(["train", "--resume", str(b), "--set", "callbacks[1].update=0"]) == 0
    assert (
        "averages from model 0.9: the trainer checkpoint; model 0.99: the trainer checkpoint"
        in capsys.readouterr().out
    )
    assert_same_averages(a, b)


def test_without_saved_state_the_average_resumes_from_latest_or_last_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trainer checkpoint holds no state for a renamed entry: the files are used, ``cp=last``
    (saved at the interrupt, so at the resumed update) over an older ``cp=latest``."""
    a = uninterrupted(tmp_path, ema_run_config())
    b = interrupted(tmp_path, "b", ema_run_config(save_latest_weights=True))
    capsys.readouterr()
    assert resume_renamed(b) == 0
    out = capsys.readouterr().out
    assert "model 0.9: model_ema=0.9_cp=last_model.th" in out
    assert_same_averages(a, b, tags=("E2_U32_S512", "last"))


def test_an_older_latest_file_is_used_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = interrupted(tmp_path, "b", ema_run_config(save_latest_weights=True, save_last_weights=False))
    capsys.readouterr()
    assert resume_renamed(b) == 0
    out = capsys.readouterr().out
    assert "model 0.9: model_ema=0.9_cp=latest_model.th" in out
    assert "was saved at update 16, not at the resumed update 21" in out


# ---------------------------------------------------------------------------------------- model paths


def test_model_paths_average_one_part_into_its_own_file(tmp_path: Path) -> None:
    raw = tiny_config(max_epochs=1, save_last=False)  # only the EMA entry's files
    raw["model"] = composite_model()
    raw["callbacks"] = [
        {"kind": "EmaCallback", "every_n_epochs": 1, "target_factors": [0.9], "model_paths": ["encoder"]}
    ]
    assert train(tmp_path, raw, "r") == 0
    files = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert files == ["clf.encoder_ema=0.9_cp=E1_U16_S256_model.th", "clf.encoder_ema=0.9_cp=last_model.th"]
    saved = load_checkpoint(tmp_path / "r" / "checkpoints" / files[1])["state_dict"]
    from noether_core.run.models import MLP

    MLP(in_features=2, out_features=8, hidden=8, depth=1).load_state_dict(saved)  # fits the part exactly


def test_a_model_path_that_resolves_to_nothing_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_epochs=1)
    raw["model"] = composite_model()
    raw["callbacks"] = [
        {"kind": "EmaCallback", "every_n_epochs": 1, "target_factors": [0.9], "model_paths": ["decoder"]}
    ]
    assert train(tmp_path, raw, "r") == 1
    assert (
        "model_paths: 'decoder' did not resolve to a torch.nn.Module of the model "
        "(its top-level modules: parts)" in capsys.readouterr().err
    )


def test_evaluation_only_runs_leave_ema_files_alone(tmp_path: Path) -> None:
    raw = ema_run_config()
    raw["trainer"]["max_epochs"] = 1
    raw["callbacks"].append({"kind": "CheckpointCallback", "every_n_epochs": 1})
    run = uninterrupted(tmp_path, raw)
    before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    assert main(["eval", str(run)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == before


# ---------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("ema", "message"),
    [
        ({"target_factors": [1.5]}, "callbacks[0].target_factors: each factor must be in [0, 1], got 1.5"),
        ({"target_factors": [0.9, 0.9]}, "callbacks[0].target_factors: target_factors must be distinct"),
        ({"target_factors": []}, "callbacks[0].target_factors"),
        (
            {"target_factors": [0.9], "model_paths": ["a", "a"]},
            "callbacks[0].model_paths: model_paths must be distinct",
        ),
    ],
)
def test_bad_ema_configs(
    tmp_path: Path, ema: dict[str, Any], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config()
    raw["callbacks"] = [{"kind": "EmaCallback", "every_n_epochs": 1, **ema}]
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["config", "validate", str(cfg)]) == 2
    assert message in capsys.readouterr().err


BASE_YAML = """\
trainer: {max_epochs: 20, batch_size: 16}
model: {kind: mlp}
datasets:
  train: {kind: blobs}
  val: {kind: blobs, kwargs: {seed: 1}}
callbacks:
"""

SEED_EMA = """\
- kind: noether.core.callbacks.EmaCallback
  every_n_epochs: 10
  save_weights: false
  save_last_weights: false
  save_latest_weights: true
  target_factors:
    - 0.9999
  name: EmaCallback
"""

# the seed's second example: the first one with evaluation entries
SEED_EMA_EVAL = (
    SEED_EMA
    + """\
  eval_callbacks:
    - kind: noether.training.callbacks.OfflineLossCallback
      every_n_epochs: 1
      dataset_key: val
"""
)


def test_seed_example_validates_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE_YAML + SEED_EMA)
    assert main(["config", "validate", str(cfg)]) == 0, capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("noether_plugins.offline_loss") is None,
    reason="the seed's eval_callbacks example names OfflineLossCallback, from noether_plugins.offline_loss",
)
def test_seed_example_with_eval_callbacks_validates_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE_YAML + SEED_EMA_EVAL)
    assert main(["config", "validate", str(cfg)]) == 0, capsys.readouterr().err


def test_seed_example_with_eval_callbacks_shape_validates_with_any_child(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        BASE_YAML
        + SEED_EMA_EVAL.replace(
            "noether.training.callbacks.OfflineLossCallback", "test_ema:WeightProbe"
        ).replace("      dataset_key: val\n", "")
    )
    assert main(["config", "validate", str(cfg)]) == 0
