"""Any ``torch.optim`` optimizer and ``torch.optim.lr_scheduler`` scheduler by name or import path,
parameter groups by name pattern and ``no_weight_decay_on``: what the trainer builds, how it trains and
resumes, and what ``noether config validate`` says about a config it cannot build."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from tiny_runs import (
    UPE,
    composite_model,
    fit,
    make_trainer,
    run_noether,
    tiny_config,
    train,
    write_config,
)
from torch import nn

from noether_core.cli import main
from noether_core.config.schema import OptimizerConfig, ParamGroupConfig, ScheduleConfig
from noether_core.io.checkpoints import load_checkpoint
from noether_core.run.param_groups import named_parameters


def normed() -> nn.Module:
    """2 -> 8 -> LayerNorm -> 4: a model with a normalization layer."""
    return nn.Sequential(nn.Linear(2, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 4))


def with_optimizer(
    optimizer: dict[str, Any], model: dict[str, Any] | None = None, **trainer: Any
) -> dict[str, Any]:
    raw = tiny_config(**trainer)
    raw["optimizer"] = optimizer
    if model is not None:
        raw["model"] = model
    return raw


def groups(trainer: Any) -> dict[str, dict[str, Any]]:
    """The optimizer's groups by name, with the names of their parameters."""
    names = {id(p.parameter): p.name for p in named_parameters(trainer.model, trainer.model_name)}
    return {
        g["name"]: {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [names[id(p)] for p in g["params"]],
        }
        for g in trainer.optimizer.param_groups
    }


# ------------------------------------------------------------------------------------- what is built


def test_adamw_and_sgd_configs_build_what_they_always_did(tmp_path: Path) -> None:
    adamw = make_trainer(tmp_path, with_optimizer({"kind": "adamw", "lr": 0.01, "weight_decay": 0.1}), "a")
    assert type(adamw.optimizer) is torch.optim.AdamW
    ((name, group),) = groups(adamw).items()
    assert name == "model"
    assert (group["lr"], group["weight_decay"], group["betas"]) == (0.01, 0.1, (0.9, 0.999))
    assert group["params"] == [n for n, _ in adamw.model.named_parameters()]

    sgd = make_trainer(
        tmp_path, with_optimizer({"kind": "sgd", "lr": 0.1, "momentum": 0.9}, composite_model()), "s"
    )
    assert type(sgd.optimizer) is torch.optim.SGD
    assert list(groups(sgd)) == ["clf.encoder", "clf.head"]  # one group per part, named after it
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in sgd.optimizer.param_groups)


def test_a_config_yaml_of_an_older_run_still_builds(tmp_path: Path) -> None:
    """Older runs' ``config.yaml`` record ``betas`` and ``momentum`` for every kind."""
    raw = with_optimizer(
        {"kind": "sgd", "lr": 0.1, "betas": [0.9, 0.999], "momentum": 0.0, "weight_decay": 0.0}
    )
    trainer = make_trainer(tmp_path, raw)
    assert type(trainer.optimizer) is torch.optim.SGD
    assert "betas" not in trainer.optimizer.param_groups[0]


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("radam", torch.optim.RAdam),
        ("RAdam", torch.optim.RAdam),
        ("torch.optim.Adagrad", torch.optim.Adagrad),
        ("torch.optim:NAdam", torch.optim.NAdam),
        ("test_optimizers.Sign", None),
    ],
)
def test_an_optimizer_by_name_or_import_path(tmp_path: Path, kind: str, cls: type | None) -> None:
    raw = with_optimizer(
        {"kind": kind, "lr": 0.01, "kwargs": {"eps": 1e-6}} if cls else {"kind": kind, "lr": 0.01}
    )
    trainer = make_trainer(tmp_path, raw)
    assert type(trainer.optimizer) is (cls or Sign)
    if cls is not None:
        assert trainer.optimizer is not None
        assert trainer.optimizer.param_groups[0]["eps"] == 1e-6


class Sign(torch.optim.Optimizer):
    """signSGD: a third-party optimizer named by its import path."""

    def __init__(self, params: Any, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(p.grad.sign(), alpha=-group["lr"])


def test_param_groups_by_pattern_and_no_weight_decay_on(tmp_path: Path) -> None:
    model = composite_model()
    model["parts"]["encoder"] = {"kind": "test_optimizers:normed"}
    optimizer = {
        "kind": "adamw",
        "lr": 0.01,
        "weight_decay": 0.1,
        "param_groups": [
            {"params": "encoder.0.*", "lr_scale": 0.5, "name": "first", "kwargs": {"betas": [0.8, 0.9]}},
            {"params": ["head.*.weight"], "weight_decay": 0.3},
        ],
        "no_weight_decay_on": ["bias", "norm"],
    }
    trainer = make_trainer(tmp_path, with_optimizer(optimizer, model))
    got = groups(trainer)
    assert list(got) == [
        "clf/first",
        "clf/first/no_decay",
        "clf/1",
        "clf.encoder",
        "clf.encoder/no_decay",
        "clf.head/no_decay",
    ]
    assert got["clf/first"]["params"] == ["encoder.0.weight"]
    assert got["clf/first/no_decay"]["params"] == ["encoder.0.bias"]
    assert got["clf/1"]["params"] == ["head.0.weight", "head.2.weight"]
    assert got["clf.encoder"]["params"] == ["encoder.3.weight"]
    assert got["clf.encoder/no_decay"]["params"] == ["encoder.1.weight", "encoder.1.bias", "encoder.3.bias"]
    assert got["clf.head/no_decay"]["params"] == ["head.0.bias", "head.2.bias"]
    expected = {
        "clf/first": (0.005, 0.1, (0.8, 0.9)),
        "clf/first/no_decay": (0.005, 0.0, (0.8, 0.9)),
        "clf/1": (0.01, 0.3, (0.9, 0.999)),
        "clf.encoder": (0.01, 0.1, (0.9, 0.999)),
        "clf.encoder/no_decay": (0.01, 0.0, (0.9, 0.999)),
        "clf.head/no_decay": (0.01, 0.0, (0.9, 0.999)),
    }
    assert {name: (g["lr"], g["weight_decay"], tuple(g["betas"])) for name, g in got.items()} == expected

    # the weight decay is applied as the groups say: with zero gradients, AdamW only decays
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for p in trainer.model.parameters():
        p.grad = torch.zeros_like(p)
    assert trainer.optimizer is not None
    trainer.optimizer.step()
    by_name = dict(trainer.model.named_parameters())
    for name, group in got.items():
        factor = 1 - group["lr"] * group["weight_decay"]
        for param in group["params"]:
            full = param.replace("encoder.", "parts.encoder.", 1).replace("head.", "parts.head.", 1)
            assert torch.equal(by_name[full].detach(), before[full] * factor), (name, param)


def test_1d_names_every_parameter_of_fewer_than_two_dims(tmp_path: Path) -> None:
    raw = with_optimizer(
        {"kind": "sgd", "weight_decay": 0.1, "no_weight_decay_on": ["1d"]}, {"kind": "test_optimizers:normed"}
    )
    got = groups(make_trainer(tmp_path, raw))
    assert got["model"]["params"] == ["0.weight", "3.weight"]
    assert got["model/no_decay"]["params"] == ["0.bias", "1.weight", "1.bias", "3.bias"]


def test_an_optimizer_without_weight_decay_trains_and_a_frozen_part_gets_no_group(tmp_path: Path) -> None:
    raw = with_optimizer(
        {"kind": "rprop", "lr": 0.001, "lr_schedule": {"kind": "cosine"}}, composite_model(True)
    )
    trainer, _ = fit(tmp_path, raw, expect="completed")
    assert type(trainer.optimizer) is torch.optim.Rprop
    assert list(groups(trainer)) == ["clf.head"]
    assert "weight_decay" not in trainer.optimizer.param_groups[0]


# ------------------------------------------------------------------------------------- training


def test_a_torch_scheduler_gives_the_usual_loops_learning_rates(tmp_path: Path) -> None:
    """``optim/lr`` of every update is the learning rate the plain ``step(); scheduler.step()`` loop
    uses at that update."""
    schedule = {"kind": "OneCycleLR", "kwargs": {"max_lr": 0.05, "total_steps": 2 * UPE, "pct_start": 0.25}}
    raw = with_optimizer({"kind": "adamw", "lr": 0.01, "lr_schedule": schedule})
    raw["callbacks"] = [{"kind": "LrCallback", "every_n_updates": 1}]
    _, records = fit(tmp_path, raw, expect="completed")
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, **schedule["kwargs"])  # type: ignore[arg-type]
    expected = {}
    for update in range(1, 2 * UPE + 1):
        expected[update] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    assert records.values("optim/lr/model") == expected


def test_an_epoch_interval_steps_once_per_epoch(tmp_path: Path) -> None:
    schedule = {
        "kind": "torch.optim.lr_scheduler.StepLR",
        "kwargs": {"step_size": 1, "gamma": 0.5},
        "interval": "epoch",
    }
    raw = with_optimizer({"kind": "sgd", "lr": 0.1, "lr_schedule": schedule}, max_epochs=3)
    raw["callbacks"] = [{"kind": "LrCallback", "every_n_updates": 1}]
    _, records = fit(tmp_path, raw, expect="completed")
    lrs = records.values("optim/lr/model")
    assert [lrs[u] for u in (1, UPE, UPE + 1, 2 * UPE, 2 * UPE + 1, 3 * UPE)] == [
        0.1,
        0.1,
        0.05,
        0.05,
        0.025,
        0.025,
    ]


@pytest.mark.parametrize(
    "optimizer",
    [
        {
            "kind": "radam",
            "lr": 0.01,
            "weight_decay": 0.01,
            "param_groups": [{"params": "0.*", "lr_scale": 0.5, "name": "first"}],
            "no_weight_decay_on": ["bias"],
        },
        {
            "kind": "radam",
            "lr": 0.01,
            "lr_schedule": {"kind": "onecyclelr", "kwargs": {"max_lr": 0.02, "total_steps": 3 * UPE}},
        },
        {
            "kind": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "lr_schedule": {"kind": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}, "interval": "epoch"},
            "wd_schedule": {"kind": "linear"},
            "weight_decay": 0.01,
        },
    ],
    ids=["radam", "radam-onecyclelr", "sgd-steplr-epoch"],
)
def test_a_resumed_run_ends_bit_identical(tmp_path: Path, optimizer: dict[str, Any]) -> None:
    """Interrupted mid-epoch and resumed: the same weights and EMA weights as without the interruption."""
    raw = with_optimizer(optimizer, max_epochs=3)
    raw["callbacks"] = [
        {"kind": "sample_plugins:SaveAtEnd"},
        {"kind": "EmaCallback", "target_factors": [0.9], "every_n_epochs": 1},
    ]
    assert train(tmp_path, raw, "a") == 0
    interrupted = copy.deepcopy(raw)
    interrupted["callbacks"].append({"kind": "sample_plugins:SignalAt", "update": UPE + 5})
    assert train(tmp_path, interrupted, "b") == 130
    state = load_checkpoint(tmp_path / "b" / "checkpoints" / "model_cp=latest_trainer.th")
    if "lr_schedule" in optimizer and optimizer["lr_schedule"]["kind"] == "onecyclelr":
        assert state["lr_scheduler"]["last_epoch"] == UPE + 4  # stepped before each update but the first
    assert main(["train", "--resume", str(tmp_path / "b"), "--set", "callbacks[2].update=0"]) == 0
    for name in ("model_cp=final_model.th", "model_ema=0.9_cp=last_model.th"):
        a = load_checkpoint(tmp_path / "a" / "checkpoints" / name)["state_dict"]
        b = load_checkpoint(tmp_path / "b" / "checkpoints" / name)["state_dict"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        assert all(math.isfinite(float(v.sum())) for v in a.values())


def test_a_resume_with_a_torch_scheduler_needs_its_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = with_optimizer({"kind": "adamw", "lr": 0.01}, max_epochs=1)
    raw["callbacks"] = [{"kind": "CheckpointCallback", "every_n_updates": 4}]
    assert train(tmp_path, raw, "r") == 0
    status = main(
        [
            "train",
            "--resume",
            str(tmp_path / "r"),
            "--checkpoint",
            "latest",
            "--set",
            "trainer.max_epochs=2",
            "--set",
            "optimizer.lr_schedule={kind: steplr, kwargs: {step_size: 4}}",
        ]
    )
    assert status == 2
    assert (
        "optimizer.lr_schedule: checkpoint 'latest' holds no state of a torch scheduler"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------- bad configs


BAD = [
    (
        {"kind": "radm"},
        "optimizer.kind: unknown optimizer 'radm'; did you mean 'radam' or 'adam' or 'nadam'?",
    ),
    (
        {"kind": "torch.optim.Adagard"},
        "optimizer.kind: cannot import 'torch.optim.Adagard': 'torch.optim' has no attribute 'Adagard'; "
        "did you mean 'torch.optim.Adagrad'?",
    ),
    (
        {"kind": "torch.nn.Linear"},
        "optimizer.kind: 'torch.nn.Linear' is not an optimizer class (a subclass of torch.optim.Optimizer)",
    ),
    ({"kind": "lbfgs"}, "optimizer.kind: torch.optim.LBFGS needs a closure"),
    (
        {"kind": "sgd", "kwargs": {"nesterow": True}},
        "optimizer.kwargs: torch.optim.SGD takes no argument 'nesterow'; did you mean 'nesterov'? "
        "it takes lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, differentiable, fused",
    ),
    (
        {"kind": "adam", "kwargs": {"lr": 0.1}},
        "optimizer.kwargs: 'lr' is not a kwargs entry: set optimizer.lr instead",
    ),
    (
        {"kind": "adam", "betas": [1.5, 0.9]},
        "optimizer.kwargs: torch.optim.Adam refuses these arguments: ValueError: "
        "Invalid beta parameter at index 0: 1.5",
    ),
    (
        {"kind": "rprop", "weight_decay": 0.1},
        "optimizer.weight_decay: torch.optim.Rprop has no weight decay (it takes lr, etas, step_sizes",
    ),
    (
        {"kind": "rprop", "wd_schedule": {"kind": "linear"}},
        "optimizer.wd_schedule: torch.optim.Rprop has no weight decay",
    ),
    ({"kind": "sgd", "betas": [0.8, 0.9]}, "optimizer.betas: torch.optim.SGD has no betas"),
    (
        {"lr_schedule": {"kind": "onecycle"}},
        "optimizer.lr_schedule.kind: unknown scheduler 'onecycle'; did you mean 'onecyclelr'",
    ),
    (
        {"lr_schedule": {"kind": "reducelronplateau"}},
        "optimizer.lr_schedule.kind: torch.optim.lr_scheduler.ReduceLROnPlateau needs a metric",
    ),
    (
        {"lr_schedule": {"kind": "steplr", "kwargs": {"stepsize": 3}}},
        "optimizer.lr_schedule.kwargs: torch.optim.lr_scheduler.StepLR takes no argument 'stepsize'; "
        "did you mean 'step_size'? it takes step_size, gamma\n",
    ),
    (
        {"lr_schedule": {"kind": "steplr"}},
        "optimizer.lr_schedule.kwargs: torch.optim.lr_scheduler.StepLR refuses these arguments: TypeError",
    ),
    (
        {"lr_schedule": {"kind": "steplr", "warmup_updates": 5, "kwargs": {"step_size": 3}}},
        "optimizer.lr_schedule.warmup_updates: applies to the built-in schedules only",
    ),
    (
        {"wd_schedule": {"kind": "steplr"}},
        "optimizer.wd_schedule.kind: expected 'constant', 'cosine' or 'linear', got 'steplr'",
    ),
    (
        {"lr_schedule": {"kind": "cosine", "interval": "epoch"}},
        "optimizer.lr_schedule.interval: the built-in 'cosine' schedule changes at every update",
    ),
    (
        {"param_groups": [{"params": "*.bais"}]},
        "optimizer.param_groups[0].params[0]: '*.bais' matches no parameter of the model; "
        "its parameters are 0.weight, 0.bias, 3.weight, 3.bias, 6.weight, 6.bias",
    ),
    (
        {"param_groups": [{"params": "*.bias", "name": "b"}, {"params": "*.weight", "name": "b"}]},
        "optimizer.param_groups[1].name: the group name 'b' is already used by param_groups[0]",
    ),
    (
        {"param_groups": [{"params": "*.bias", "kwargs": {"momentun": 0.5}}]},
        "optimizer.param_groups[0].kwargs: torch.optim.AdamW takes no argument 'momentun'",
    ),
    (
        {"no_weight_decay_on": ["biases"]},
        "optimizer.no_weight_decay_on[0]: expected one of 'bias', 'norm', '1d', got 'biases' (str); "
        "did you mean 'bias'?",
    ),
]


@pytest.mark.parametrize(("optimizer", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_optimizer_config_is_named_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], optimizer: dict[str, Any], message: str
) -> None:
    raw = tiny_config()
    raw["optimizer"] = optimizer
    assert main(["config", "validate", str(write_config(tmp_path / "c.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_noether_config_validate_refuses_bad_optimizers_before_training(tmp_path: Path) -> None:
    """The real command line: exit status 2, every problem with its path, no traceback, no run."""
    raw = tiny_config()
    raw["optimizer"] = {
        "kind": "radam",
        "kwargs": {"mommentum": 0.9},
        "param_groups": [{"params": ["encoder.*"]}],
        "lr_schedule": {"kind": "cosineannealing"},
    }
    config = write_config(tmp_path / "c.yaml", raw)
    result = run_noether(["config", "validate", config], pythonpath=str(Path(__file__).parent))
    assert result.returncode == 2, result.stderr
    assert (
        "optimizer.kwargs: torch.optim.RAdam takes no argument 'mommentum'; it takes lr, betas, eps"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
    raw["optimizer"]["kwargs"] = {}
    write_config(config, raw)
    result = run_noether(
        ["train", config, "--output-dir", tmp_path, "--run-id", "r"], pythonpath=str(Path(__file__).parent)
    )
    assert result.returncode == 2, result.stderr
    assert (
        "optimizer.lr_schedule.kind: unknown scheduler 'cosineannealing'; did you mean 'cosineannealinglr'"
        in result.stderr
    )
    assert (
        "optimizer.param_groups[0].params[0]: 'encoder.*' matches no parameter of the model" in result.stderr
    )
    assert not (tmp_path / "r").exists()


def test_lr_callback_logs_every_group_by_name(tmp_path: Path) -> None:
    optimizer = {
        "kind": "adamw",
        "lr": 0.01,
        "weight_decay": 0.1,
        "param_groups": [{"params": "encoder.*", "lr_scale": 0.1, "name": "enc"}],
        "no_weight_decay_on": ["bias"],
        "lr_schedule": {"kind": "steplr", "kwargs": {"step_size": 4}},
        "wd_schedule": {"kind": "linear"},
    }
    raw = with_optimizer(optimizer, composite_model(), max_updates=8, max_epochs=None)
    raw["callbacks"] = [{"kind": "LrCallback", "every_n_updates": 4}]
    _, records = fit(tmp_path, raw, expect="completed")
    for update, lr_factor in ((4, 1.0), (8, 0.1)):  # StepLR: gamma 0.1 from the 5th update on
        wd_factor = 1 - (update - 1) / 7  # linear to 0 over 8 updates
        record = records.record_at(update)
        assert {k: v for k, v in record.items() if k.startswith("optim/")} == {
            "optim/lr/clf/enc": pytest.approx(0.001 * lr_factor),
            "optim/wd/clf/enc": pytest.approx(0.1 * wd_factor),
            "optim/lr/clf/enc/no_decay": pytest.approx(0.001 * lr_factor),
            "optim/wd/clf/enc/no_decay": 0.0,
            "optim/lr/clf.head": pytest.approx(0.01 * lr_factor),
            "optim/wd/clf.head": pytest.approx(0.1 * wd_factor),
            "optim/lr/clf.head/no_decay": pytest.approx(0.01 * lr_factor),
            "optim/wd/clf.head/no_decay": 0.0,
        }


def test_the_configuration_page_lists_every_optimizer_field() -> None:
    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    section = page[page.index("## `optimizer`") : page.index("## `datasets`")]
    for cls in (OptimizerConfig, ScheduleConfig, ParamGroupConfig):
        for field in attrs.fields(cls):
            assert f"| `{field.name}` |" in section, (cls.__name__, field.name)
