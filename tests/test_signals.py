"""Signals and exit statuses, with real ``noether train`` processes and real signals sent at chosen
points: a second signal during the stop's checkpoint write, signals after it and after the run, plugins
that never return, and every way a run can end, each with the exit status its ``summary.yaml`` says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny_runs import composite_model, run_noether, tiny_config, train, write_config

from noether_core.cli import main
from noether_core.io.checkpoints import load_checkpoint

TESTS = Path(__file__).parent


def status_of(run: Path) -> str:
    return str(yaml.safe_load((run / "summary.yaml").read_text())["status"])


def weights(run: Path, tag: str = "last", model: str = "model") -> dict[str, dict[str, torch.Tensor]]:
    """The weights of every model file of ``tag`` in ``run``, by file name."""
    files = sorted((run / "checkpoints").glob(f"{model}*_cp={tag}_model.th"))
    assert files, f"no weights of {tag!r} in {run}"
    return {f.name: load_checkpoint(f)["state_dict"] for f in files}


def assert_same_weights(a: Path, b: Path, tag: str = "last", model: str = "model") -> None:
    wa, wb = weights(a, tag, model), weights(b, tag, model)
    assert wa.keys() == wb.keys()
    for name in wa:
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), (name, key)


def noether_train(
    tmp_path: Path, raw: dict[str, Any], run_id: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``noether train`` of ``raw`` in a real subprocess (``sample_plugins`` importable)."""
    cfg = write_config(tmp_path / f"{run_id}.yaml", raw)
    return run_noether(
        ["train", cfg, "--output-dir", tmp_path, "--run-id", run_id, *args], pythonpath=str(TESTS)
    )


def resume(run: Path, *sets: str) -> int:
    """``noether train --resume RUN`` in this process (nothing in it signals or hangs any more)."""
    args: list[str] = ["train", "--resume", str(run)]
    for item in sets:
        args += ["--set", item]
    return main(args)


def checkpointing(every: int = 2) -> dict[str, Any]:
    """A CheckpointCallback that keeps a resumable ``latest`` every ``every`` updates."""
    return {"kind": "CheckpointCallback", "every_n_updates": every, "save_weights": False}


# ------------------------------------------------------------------------------ a second signal


def composite_with_signalling_head() -> dict[str, Any]:
    """The composite ``clf`` of :func:`tiny_runs.composite_model`, so the stop's ``latest`` is several
    files; the head sends the armed signals when its file is about to be written, after the encoder's."""
    model = composite_model()
    model["parts"]["head"] = {
        "kind": "sample_plugins:SignallingLinear",
        "kwargs": {"in_features": 8, "out_features": 4},
    }
    return model


def test_a_second_signal_during_the_stops_checkpoint_write_waits_for_it(tmp_path: Path) -> None:
    """SIGTERM at update 3, then SIGINT while ``latest`` is being written, between the encoder's file and
    the head's: the write completes, the run ends interrupted (130), and ``latest`` resumes to the
    uninterrupted run's weights. (Before, the SIGINT left the encoder at update 3 and the rest at 2.)"""
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["model"] = composite_with_signalling_head()
    raw["callbacks"] = [checkpointing(2)]
    assert train(tmp_path, raw, "a") == 0

    raw["callbacks"] = [
        checkpointing(2),
        {"kind": "sample_plugins:SignalOnSave", "update": 3, "signals": ["SIGTERM"], "on_save": ["SIGINT"]},
    ]
    done = noether_train(tmp_path, raw, "b")
    assert done.returncode == 130, done.stdout + done.stderr
    assert "received SIGINT: the resumable checkpoint is being saved" in done.stdout
    assert status_of(tmp_path / "b") == "interrupted"
    checkpoints = tmp_path / "b" / "checkpoints"
    for part in ("clf.encoder_cp=latest_model.th", "clf.head_cp=latest_model.th", "clf_cp=latest_trainer.th"):
        assert load_checkpoint(checkpoints / part)["training_iteration"]["update"] == 3, part

    assert resume(tmp_path / "b", "callbacks[1].update=0") == 0
    assert status_of(tmp_path / "b") == "completed"
    assert_same_weights(tmp_path / "a", tmp_path / "b", model="clf")


def test_signals_after_the_stops_save_change_nothing(tmp_path: Path) -> None:
    """SIGTERM at update 3; SIGTERM and SIGINT again in ``after_training``, after ``latest`` was saved:
    still interrupted with 130, and ``latest`` resumes exactly."""
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [checkpointing(2)]
    assert train(tmp_path, raw, "a") == 0

    raw["callbacks"] = [
        checkpointing(2),
        {"kind": "sample_plugins:SignalIn", "hook": "after_update", "update": 3, "signals": ["SIGTERM"]},
        {
            "kind": "sample_plugins:SignalIn",
            "hook": "after_training",
            "signals": ["SIGTERM", "SIGINT", "SIGINT"],
        },
    ]
    done = noether_train(tmp_path, raw, "b")
    assert done.returncode == 130, done.stdout + done.stderr
    assert "the run is ending already; it changes nothing" in done.stdout
    assert status_of(tmp_path / "b") == "interrupted"
    assert resume(tmp_path / "b", "callbacks[1].update=0", "callbacks[2].hook=none") == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(("end", "expected"), [({}, 0), ({"signal_at": 3}, 130)])
def test_a_signal_after_the_run_keeps_its_exit_status(
    tmp_path: Path, end: dict[str, int], expected: int
) -> None:
    """The ``noether`` command, then SIGTERM to the process after the run, before it exits: the exit
    status is the run's (no 143)."""
    raw = tiny_config(max_updates=4, max_epochs=None)
    if "signal_at" in end:
        raw["callbacks"] = [{"kind": "sample_plugins:SignalAt", "update": end["signal_at"]}]
    cfg = write_config(tmp_path / "c.yaml", raw)
    script = (
        "import os, signal, sys\n"
        "from noether_core.cli import main\n"
        f"sys.argv = ['noether', 'train', {str(cfg)!r}, '--output-dir', {str(tmp_path)!r}, '--run-id', 'r']\n"
        "status = main()\n"
        # ignored, not handled in Python: the interpreter's finalization keeps an ignored signal ignored
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.exit(status)\n"
    )
    env = {"PYTHONPATH": str(TESTS)}
    import os

    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    assert done.returncode == expected, done.stdout + done.stderr
    assert status_of(tmp_path / "r") == ("completed" if expected == 0 else "interrupted")


# ------------------------------------------------------------------------------ hung plugins


@pytest.mark.parametrize("hook", ["at_eval", "after_update"])  # the general dispatch and the compiled one
def test_a_hung_plugin_is_named_and_the_process_ends(tmp_path: Path, hook: str) -> None:
    """A plugin that never returns after SIGTERM: after ``trainer.stop_timeout`` it is named, with its
    event and where it is stuck, and the process ends. No resumable checkpoint: failed, exit 1."""
    raw = tiny_config(max_updates=6, max_epochs=None, stop_timeout=0.5)
    raw["callbacks"] = [
        {"kind": "sample_plugins:Hang", "name": "stuck", "hook": hook, "update": 3, "signal": "SIGTERM"}
    ]
    done = noether_train(tmp_path, raw, "r")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"noether: error: plugin 'stuck' (sample_plugins:Hang) did not return from {hook} within "
        "trainer.stop_timeout=0.5s after SIGTERM (at " in done.stderr
    )
    assert "sample_plugins.py:" in done.stderr
    assert "no resumable checkpoint was saved" in done.stderr
    assert status_of(tmp_path / "r") == "failed"
    assert "did not return from" in (tmp_path / "r" / "log.txt").read_text()


def test_a_plugin_blocked_where_the_handler_never_runs_is_named_too(tmp_path: Path) -> None:
    """The main thread never gets to run the Python signal handler (as in a CUDA or NCCL wait): the
    watchdog still starts, from the signal's byte on the wakeup fd, and names the plugin."""
    raw = tiny_config(max_updates=6, max_epochs=None, stop_timeout=0.5)
    raw["callbacks"] = [
        {"kind": "sample_plugins:Hang", "name": "stuck", "update": 3, "signal": "SIGTERM", "in_c": True}
    ]
    done = noether_train(tmp_path, raw, "r")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "plugin 'stuck' (sample_plugins:Hang) did not return from at_eval" in done.stderr
    assert "received SIGTERM" not in done.stdout  # the handler never ran
    assert status_of(tmp_path / "r") == "failed"


def test_a_hung_plugin_with_an_earlier_checkpoint_ends_interrupted_and_resumes(tmp_path: Path) -> None:
    """The same hang at update 3 with ``latest`` saved at update 2: interrupted (130), and the resume from
    that ``latest`` ends with the uninterrupted run's weights."""
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [checkpointing(2)]
    assert train(tmp_path, raw, "a") == 0

    raw = tiny_config(max_updates=6, max_epochs=None, stop_timeout=0.5)
    raw["callbacks"] = [
        checkpointing(2),
        {
            "kind": "sample_plugins:Hang",
            "name": "stuck",
            "update": 3,
            "signal": "SIGTERM",
            "every_n_updates": 3,
        },
    ]
    done = noether_train(tmp_path, raw, "b")
    assert done.returncode == 130, done.stdout + done.stderr
    assert "plugin 'stuck' (sample_plugins:Hang) did not return from at_eval" in done.stderr
    assert "the resumable checkpoint 'latest' stays: noether train --resume" in done.stderr
    assert status_of(tmp_path / "b") == "interrupted"
    assert (
        load_checkpoint(tmp_path / "b" / "checkpoints" / "model_cp=latest_trainer.th")["counter"]["update"]
        == 2
    )

    assert resume(tmp_path / "b", "callbacks[1].update=0") == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_a_plugin_hung_after_the_stops_save_ends_interrupted(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None, stop_timeout=0.5)
    raw["callbacks"] = [
        {"kind": "sample_plugins:SignalAt", "update": 3},
        {"kind": "sample_plugins:Hang", "name": "stuck", "hook": "after_training", "update": None},
    ]
    done = noether_train(tmp_path, raw, "r")
    assert done.returncode == 130, done.stdout + done.stderr
    assert "plugin 'stuck' (sample_plugins:Hang) did not return from after_training" in done.stderr
    assert status_of(tmp_path / "r") == "interrupted"
    assert (
        load_checkpoint(tmp_path / "r" / "checkpoints" / "model_cp=latest_trainer.th")["counter"]["update"]
        == 3
    )


# ------------------------------------------------------------------------------ truthful endings


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ({"error": "SystemExit", "code": 0}, "it called sys.exit(0)"),
        ({"error": "SystemExit", "code": 3}, "it called sys.exit(3)"),
        ({"error": "KeyboardInterrupt"}, "it raised KeyboardInterrupt"),
    ],
)
def test_a_plugins_exit_or_interrupt_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], error: dict[str, Any], said: str
) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [{"kind": "sample_plugins:RaiseIn", "name": "quitter", "update": 2, **error}]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert f"plugin 'quitter' (sample_plugins:RaiseIn) failed in after_update: {said}" in err
    assert "Traceback" not in err
    assert status_of(tmp_path / "r") == "failed"


def test_sys_exit_0_in_a_plugin_exits_1_from_the_command(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [{"kind": "sample_plugins:RaiseIn", "name": "quitter", "update": 2}]
    done = noether_train(tmp_path, raw, "r")
    assert done.returncode == 1, done.stderr
    assert (
        "plugin 'quitter' (sample_plugins:RaiseIn) failed in after_update: it called sys.exit(0)"
        in done.stderr
    )
    assert status_of(tmp_path / "r") == "failed"


@pytest.mark.parametrize("signal_at", [None, 3])
def test_a_raise_in_after_training_fails_the_run_and_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signal_at: int | None
) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [
        {
            "kind": "sample_plugins:RaiseIn",
            "name": "late",
            "hook": "after_training",
            "error": "RuntimeError",
            "update": None,
        }
    ]
    if signal_at is not None:
        raw["callbacks"].append({"kind": "sample_plugins:SignalAt", "update": signal_at})
    assert train(tmp_path, raw, "r") == 1
    out, err = capsys.readouterr()
    assert "plugin 'late' (sample_plugins:RaiseIn) failed in after_training: RuntimeError" in err
    assert status_of(tmp_path / "r") == "failed"
    if signal_at is not None:
        assert "the resumable checkpoint 'latest' was saved before" in out


def test_a_raising_state_dict_is_blamed_on_its_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``state_dict()`` works after ``before_training`` (the early check) and raises when
    CheckpointCallback saves: the error names the entry whose state it is."""
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [checkpointing(2), {"kind": "sample_plugins:StateFails", "name": "cache"}]
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert "plugin 'cache' (sample_plugins:StateFails) failed in state_dict(): RuntimeError" in err
    assert "cannot serialize the cache" in err
    assert "CheckpointCallback" not in err
    assert status_of(tmp_path / "r") == "failed"


def test_a_state_dict_raising_at_the_early_check_is_blamed_on_its_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [{"kind": "sample_plugins:StateFails", "name": "cache", "after": 0}]
    assert train(tmp_path, raw, "r") == 1
    assert "plugin 'cache' (sample_plugins:StateFails) failed in state_dict()" in capsys.readouterr().err


def test_a_raising_load_state_dict_is_a_clear_error_that_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_updates=6, max_epochs=None)
    raw["callbacks"] = [
        {"kind": "sample_plugins:StateFails", "name": "cache", "which": "load_state_dict"},
        {"kind": "sample_plugins:SignalAt", "update": 3},
    ]
    assert train(tmp_path, raw, "r") == 130
    run = tmp_path / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 3
    err = capsys.readouterr().err
    assert "plugin 'sample_plugins:StateFails'" in err
    assert "entry 'cache' could not load its state from checkpoint 'latest'" in err
    assert "load_state_dict() raised KeyError" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ------------------------------------------------------------------------------ the handler itself


def test_a_second_sigint_inside_a_checkpoint_write_waits_for_its_end() -> None:
    """In this process, real signals: the first asks for a stop, a second SIGINT inside ``writing()``
    is held until the write ends, then stops at once; once the ending is decided, signals change
    nothing."""
    import os
    import signal

    from noether_core.errors import ImmediateStop
    from noether_core.run.signals import Phase, Signals

    previous = signal.getsignal(signal.SIGINT)
    with Signals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert (signals.received, signals.phase) == ("SIGTERM", Phase.STOPPING)
        written: list[str] = []

        def write() -> None:
            with signals.writing():
                os.kill(os.getpid(), signal.SIGINT)
                written.append("all of it")

        with pytest.raises(ImmediateStop):
            write()
        assert written == ["all of it"]
        with pytest.raises(ImmediateStop):
            os.kill(os.getpid(), signal.SIGINT)
        signals.ending()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_metric_logged_twice_in_after_training_fails_the_summary_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_config(max_updates=4, max_epochs=None)
    raw["callbacks"] = [
        {"kind": "sample_plugins:LogAtEnd", "name": "a"},
        {"kind": "sample_plugins:LogAtEnd", "name": "b"},
    ]
    assert train(tmp_path, raw, "r") == 1
    assert "metric 'end/value' was logged by 'a' and again by 'b'" in capsys.readouterr().err
    assert status_of(tmp_path / "r") == "failed"
