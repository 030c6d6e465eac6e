"""The Python API: ``noether_core.train`` and ``noether_core.evaluate`` run what the commands run, take
configs as files, mappings or ``RunConfig``s, and models and datasets as objects; every finished run
leaves its ``last`` weights."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml
from tiny_runs import UPE, tiny_config, write_config
from torch import nn
from torch.utils.data import TensorDataset

import noether_core
from noether_core.cli import main
from noether_core.config.loader import structure_config
from noether_core.io.checkpoints import load_checkpoint
from noether_core.plugins.registry import PluginRegistry

DOCS = Path(__file__).resolve().parent.parent / "docs"


def docs_example(page: str, path: str) -> str:
    """The code block of ``docs/{page}`` that starts with the comment ``# {path}``."""
    text = (DOCS / page).read_text()
    start = text.index(f"```python\n# {path}\n") + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_notebook_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(docs_example("python-api.md", "notebook.py"), "notebook.py", "exec"), namespace)
    result, best = namespace["result"], namespace["best"]
    assert result.status == "completed"
    assert result.run_dir == Path("runs") / "notebook"
    assert result.position == {"epoch": 3, "update": 42, "sample": 42 * 32}
    assert best.run_dir.name.startswith("best_model.loss.val.total")
    assert best.metrics["loss/val/total"] == pytest.approx(min_val_loss(result.run_dir))
    # the object trained, and its weights are the run's last
    last = load_checkpoint(result.run_dir / "checkpoints" / "model_cp=last_model.th")["state_dict"]
    model = namespace["model"]
    assert all(torch.equal(last[k], v) for k, v in model.state_dict().items())
    resolved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert resolved["model"]["kind"] == "object"
    loader_defaults = {
        "num_workers": 0,
        "persistent_workers": None,
        "prefetch_factor": None,
        "pin_memory": None,
        "batched_fetch": True,
    }
    assert resolved["datasets"] == {
        "train": {"kind": "object", "kwargs": {}, **loader_defaults},
        "val": {"kind": "object", "kwargs": {}, **loader_defaults},
    }


def min_val_loss(run_dir: Path) -> float:
    summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
    return float(summary["metrics"]["loss/val/total"]["min"])


def test_a_config_is_a_file_a_mapping_or_a_run_config(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=3, max_epochs=None)
    from_file = noether_core.train(write_config(tmp_path / "c.yaml", raw), output_dir=tmp_path, run_id="f")
    from_mapping = noether_core.train(raw, output_dir=tmp_path, run_id="m")
    config = structure_config(raw, PluginRegistry.from_environment())
    from_config = noether_core.train(
        config, output_dir=tmp_path, run_id="c", overrides=["trainer.max_updates=2"]
    )
    assert (from_file.status, from_mapping.status, from_config.status) == ("completed",) * 3
    assert from_file.position["update"] == from_mapping.position["update"] == 3
    assert from_config.position["update"] == 2
    weights = [
        load_checkpoint(tmp_path / r / "checkpoints" / "model_cp=last_model.th")["state_dict"] for r in "fm"
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same run, twice
    assert raw == tiny_config(max_updates=3, max_epochs=None)  # the mapping given was not changed


def test_failures_raise_what_the_command_exits_with(tmp_path: Path) -> None:
    with pytest.raises(noether_core.ConfigError, match=r"trainer\.max_epoch: unknown field") as info:
        noether_core.train({**tiny_config(), "trainer": {"max_epoch": 2}}, output_dir=tmp_path)
    assert info.value.exit_status == 2
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["callbacks"] = [{"kind": "sample_plugins:Crash", "update": 2}]
    with pytest.raises(noether_core.TrainingError, match="crash at update 2"):
        noether_core.train(raw, output_dir=tmp_path, run_id="crash")


def ramp_objects() -> tuple[nn.Module, dict[str, TensorDataset]]:
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    y = (x[:, 0] > 0).long()
    return nn.Linear(2, 2), {"train": TensorDataset(x, y)}


def test_a_run_trained_with_objects_resumes_with_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config()
    del raw["model"], raw["datasets"]
    raw["callbacks"] = [{"kind": "sample_plugins:SignalAt", "update": UPE + 5}]
    model, datasets = ramp_objects()
    first = noether_core.train(raw, output_dir=tmp_path, run_id="r", model=model, datasets=datasets)
    assert (first.status, first.position["update"]) == ("interrupted", UPE + 5)
    # the command line has no object to build: it says so
    assert main(["train", "--resume", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "model.kind: kind 'object' stands for a model given as a Python object" in err
    assert "datasets.train.kind: kind 'object' stands for a dataset given as a Python object" in err
    resumed = noether_core.train(
        resume=tmp_path / "r", overrides=["callbacks[0].update=0"], model=model, datasets=datasets
    )
    assert (resumed.status, resumed.position["update"]) == ("completed", 2 * UPE)

    again_model, again_datasets = ramp_objects()
    uninterrupted = noether_core.train(
        {**raw, "callbacks": []}, output_dir=tmp_path, run_id="u", model=again_model, datasets=again_datasets
    )
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again_model.parameters(), strict=True))
    assert uninterrupted.metrics == {}  # no entries, nothing logged


# ------------------------------------------------------------------------------------ last weights


@pytest.mark.parametrize("save_last", [True, False])
def test_every_finished_run_leaves_its_last_weights(tmp_path: Path, save_last: bool) -> None:
    raw = tiny_config(max_updates=3, max_epochs=None, save_last=save_last)
    noether_core.train(raw, output_dir=tmp_path, run_id="r")
    last = tmp_path / "r" / "checkpoints" / "model_cp=last_model.th"
    assert last.exists() == save_last
    if save_last:
        assert load_checkpoint(last)["training_iteration"]["update"] == 3
        assert os.listdir(tmp_path / "r" / "checkpoints") == ["model_cp=last_model.th"]  # weights only
        evaluation = noether_core.evaluate(tmp_path / "r")
        assert evaluation.run_dir == tmp_path / "r" / "eval" / "last"
        assert evaluation.status == "completed"


class RememberTheRun:
    """Keeps a weak reference to the run it is given, and to its optimizer."""

    Config = noether_core.CallbackConfig
    refs: ClassVar[list[weakref.ref[Any]]] = []

    def __init__(self, config: noether_core.CallbackConfig) -> None:
        pass

    @noether_core.hookimpl
    def before_training(self, trainer: noether_core.Run) -> None:
        RememberTheRun.refs = [weakref.ref(trainer), weakref.ref(trainer.optimizer)]


def test_train_frees_the_run_before_it_returns(tmp_path: Path) -> None:
    # under torchrun the trainer holds the process group (DistributedDataParallel's reducer); freed only
    # at the interpreter's finalization, destroying it aborted a rank now and then after a finished run
    raw = tiny_config(max_updates=2, max_epochs=None)
    raw["callbacks"] = [{"kind": "test_python_api:RememberTheRun"}]
    gc.disable()  # what train() frees, it frees itself, not a collection that happens to run meanwhile
    try:
        result = noether_core.train(raw, output_dir=tmp_path, run_id="r")
        assert result.status == "completed"
        assert [ref() for ref in RememberTheRun.refs] == [None, None]
    finally:
        gc.enable()
