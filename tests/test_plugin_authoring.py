"""What a plugin author gets: modules of functions with settings and state, pluggy's wrappers and
``specname``, refused ordering options, metric directions without Python, and errors that point at the
plugin's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sample_plugins
import torch
import yaml
from tiny_runs import UPE, tiny_config, train, write_config

from noether_core.cli import main
from noether_core.io.checkpoints import load_checkpoint
from noether_core.io.trackers import read_metrics

COUNTER = "sample_counting_plugin:"


def counted(run: Path, key: str) -> dict[int, float]:
    return {r["update"]: r[key] for r in read_metrics(run / "metrics.jsonl") if key in r}


# ------------------------------------------------------------------------------ settings and state


def test_a_module_of_functions_has_settings_and_keeps_state_across_a_resume(tmp_path: Path) -> None:
    """SIGTERM part-way through epoch 2, then resume: the function plugin's count (kept in ``state``)
    goes on exactly as in an uninterrupted run."""
    raw = tiny_config()
    raw["callbacks"] = [{"kind": COUNTER, "every_n_updates": 4, "label": "seen", "step": 2}]
    assert train(tmp_path, raw, "a") == 0
    interrupted = dict(
        raw, callbacks=[*raw["callbacks"], {"kind": "sample_plugins:SignalAt", "update": UPE + 5}]
    )
    assert train(tmp_path, interrupted, "b") == 130
    saved = load_checkpoint(tmp_path / "b" / "checkpoints" / "model_cp=latest_trainer.th")
    assert saved["entry_state"] == {"sample_counting_plugin:": {"n": 2 * (UPE + 5)}}
    assert main(["train", "--resume", str(tmp_path / "b"), "--set", "callbacks[1].update=0"]) == 0
    expected = {u: 2 * u for u in range(4, 2 * UPE + 1, 4)}
    assert counted(tmp_path / "a", "seen/U4") == expected
    assert counted(tmp_path / "b", "seen/U4") == expected


def test_a_module_config_is_validated_like_a_class_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config()
    raw["callbacks"] = [
        {"kind": COUNTER, "every_n_updates": 4, "lable": "x"},
        {"kind": COUNTER, "name": "second", "every_n_updates": 4, "step": 0},
    ]
    assert main(["config", "validate", str(write_config(tmp_path / "c.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert "callbacks[0].lable: unknown field; did you mean 'label'?" in err
    assert "callbacks[1].step: must be >= 1, got 0" in err
    assert main(["plugins", "show", COUNTER]) == 0
    out = capsys.readouterr().out
    assert "label: str (default 'updates')" in out
    assert "step: int (default 1)" in out


@pytest.mark.parametrize(
    ("where", "blamed"),
    [("state", "state.best: numpy.float64"), ("state_dict", "state_dict().seen: numpy.int64")],
)
def test_state_a_checkpoint_cannot_hold_is_refused_at_the_start_naming_entry_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, blamed: str
) -> None:
    raw = tiny_config()
    raw["callbacks"] = [
        {"kind": "CheckpointCallback", "every_n_updates": 4},
        {"kind": "sample_plugins:BadState", "name": "bad", "where": where},
    ]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    blame = "plugin 'bad' (sample_plugins:BadState) failed in before_training: TypeError: "
    assert f"{blame}a checkpoint cannot hold {blamed}" in err
    # before the first update: no checkpoint was ever begun
    assert not any((tmp_path / "r" / "checkpoints").iterdir())


# ------------------------------------------------------------------------------ pluggy's idioms


def test_a_wrapper_sees_every_event_in_order_and_an_entry_failing(tmp_path: Path) -> None:
    sample_plugins.TRACE.clear()
    raw = tiny_config(max_updates=4, max_epochs=None, accumulation_steps=2)
    raw["datasets"]["train"]["kwargs"]["size"] = 32  # 2 updates per epoch of batch 16
    raw["callbacks"] = [
        {"kind": "sample_plugins:Tracer"},
        {"kind": "sample_plugins:Recorder", "every_n_updates": 2},
        {"kind": "sample_plugins:Crash", "update": 3},
    ]
    assert train(tmp_path, raw, "r") == 1
    trace = sample_plugins.TRACE
    entered = [(event, update) for what, event, update in trace if what == "enter"]
    assert entered == [
        ("before_training", 0),
        ("after_accumulation", 0),
        ("after_accumulation", 0),
        ("after_update", 1),
        ("after_accumulation", 1),
        ("after_accumulation", 1),
        ("after_update", 2),
        ("after_epoch", 2),
        ("at_eval", 2),
        ("after_accumulation", 2),
        ("after_accumulation", 2),
        ("after_update", 3),  # Crash raises here
        ("after_training", 3),
    ]
    # every dispatch closed before the next began; the failing one raised through the wrapper
    closes = [(what, event) for what, event, _ in trace if what != "enter"]
    assert closes.count(("raised", "after_update")) == 1
    assert len(closes) == len(entered)
    # what the wrapper was handed is the entry's failure, naming it; what it raised instead ends the run
    failed = "failed in after_update: RuntimeError: "
    log = (tmp_path / "r" / "log.txt").read_text()
    assert f"plugin 'sample_plugins:Tracer' (sample_plugins:Tracer) {failed}traced: " in log
    assert f"plugin 'sample_plugins:Crash' (sample_plugins:Crash) {failed}crash at update 3" in log


def test_ordering_options_are_refused_when_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_config()
    raw["callbacks"] = [{"kind": "sample_plugins:Eager"}]
    assert main(["config", "validate", str(write_config(tmp_path / "c.yaml", raw))]) == 3
    err = capsys.readouterr().err
    assert "@hookimpl(tryfirst=True) on 'after_update'" in err
    assert "order of the config's callbacks list" in err


# ------------------------------------------------------------------------------ metric directions


def norm_run(**norm: Any) -> dict[str, Any]:
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["callbacks"] = [
        {"kind": "sample_plugins:Norm", "every_n_updates": 1, "values": [1.0, 3.0, 2.0, 2.5], **norm},
        {"kind": "BestCheckpointCallback", "every_n_updates": 1, "metric_key": "embedding_norm"},
    ]
    return raw


def best_update(run: Path) -> int:
    saved = load_checkpoint(run / "checkpoints" / "model_cp=best_model.embedding_norm_model.th")
    return int(saved["training_iteration"]["update"])


def test_a_direction_in_yaml_drives_the_best_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tmp_path, norm_run(), "unknown") == 1  # nobody says which way is better
    assert (
        "cannot tell whether higher or lower is better for metric 'embedding_norm'" in capsys.readouterr().err
    )
    assert train(tmp_path, {**norm_run(), "metrics": {"embedding_norm": "higher"}}, "yaml") == 0
    assert best_update(tmp_path / "yaml") == 2  # the highest, 3.0
    summary = yaml.safe_load((tmp_path / "yaml" / "summary.yaml").read_text())
    assert summary["metrics"]["embedding_norm"]["best"] == 3.0
    # the plugin may say so itself; the config's word wins over the plugin's
    assert train(tmp_path, norm_run(declare=True), "plugin") == 0
    assert best_update(tmp_path / "plugin") == 2
    assert train(tmp_path, {**norm_run(declare=True), "metrics": {"embedding_norm": "lower"}}, "lower") == 0
    assert best_update(tmp_path / "lower") == 1  # the lowest, 1.0


def test_a_direction_must_be_higher_lower_or_neutral(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = {**norm_run(), "metrics": {"embedding_norm": "up"}}
    assert main(["config", "validate", str(write_config(tmp_path / "c.yaml", raw))]) == 2
    assert (
        "metrics.embedding_norm: expected one of 'higher', 'lower', 'neutral', got 'up'"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------ errors at the code


def test_a_constructor_that_raises_fails_validation_pointing_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config()
    raw["callbacks"] = [{"kind": "sample_plugins:Refuses", "name": "profiler"}]
    assert main(["config", "validate", str(write_config(tmp_path / "c.yaml", raw))]) == 3
    err = capsys.readouterr().err
    assert "creating it for entry 'profiler' failed: ValueError: no GPU to profile (at " in err
    assert "sample_plugins.py:" in err
    assert "Traceback" not in err
    assert main(["--debug", "config", "validate", str(tmp_path / "c.yaml")]) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_plugin_that_fails_to_import_points_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "noether_broken_authoring.py").write_text("import math\n\nVALUE = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tiny_config()
    raw["callbacks"] = [{"kind": "noether_broken_authoring:Thing"}]
    path = write_config(tmp_path / "c.yaml", raw)
    assert main(["config", "validate", str(path)]) == 3
    err = capsys.readouterr().err
    assert "ZeroDivisionError: division by zero (at " in err
    assert f"{tmp_path / 'noether_broken_authoring.py'}:3)" in err
    monkeypatch.setenv("NOETHER_DEBUG", "1")
    assert main(["config", "validate", str(path)]) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the docs' wrapper


def docs_example(path: str) -> str:
    """The code block of ``docs/writing-plugins.md`` that starts with the comment ``# {path}``."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "writing-plugins.md").read_text()
    start = page.index(f"```python\n# {path}\n") + len("```python\n")
    return page[start : page.index("```", start)]


def test_the_profiling_wrapper_of_the_docs_labels_every_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "docs_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "profile_events.py").write_text(docs_example("my_plugins/profile_events.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["datasets"]["train"]["kwargs"]["size"] = 32  # 2 updates per epoch
    raw["callbacks"] = [
        {"kind": "docs_plugins.profile_events:"},
        {"kind": "sample_plugins:Recorder", "every_n_updates": 2},
    ]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        assert train(tmp_path, raw, "r") == 0
    counts = {e.key: e.count for e in profiler.key_averages() if e.key.startswith("noether.")}
    assert counts == {
        "noether.before_training": 1,
        "noether.after_accumulation": 4,
        "noether.after_update": 4,
        "noether.after_epoch": 2,
        "noether.at_eval": 2,
        "noether.after_training": 1,
    }
