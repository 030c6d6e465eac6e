"""The built-in monitoring plugins (issue #4) in real short runs: the exact keys and values they log,
their stdout lines, composite models, gradient accumulation, a run that ends part-way through an epoch,
and the trainer's defaults.

Most checks read one shared run of the bundled example's shape (a composite ``classifier`` with an
``encoder`` and a ``head``), trained through ``noether train`` with the default plugins; a recording
plugin of this module sees the same losses and times, so logged values are pinned against them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import multiprocessing
import re
import socket
import sys
import types
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_runs import fit, make_trainer, plan, train

from noether_core import CallbackConfig, hookimpl
from noether_core.config.loader import structure_config
from noether_core.errors import PluginFailure
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.distributed import DistInfo
from noether_core.run.launch import setup_logging
from noether_core.run.optim import schedule_factor
from noether_core.run.train_step import StepOutput
from noether_plugins import eta, online_loss, progress
from noether_plugins.eta import EtaCallback
from noether_plugins.lr import LrCallback
from noether_plugins.online_loss import OnlineLossCallback
from noether_plugins.peak_memory import PeakMemoryCallback
from noether_plugins.progress import ProgressCallback
from noether_plugins.train_time import TrainTimeCallback

PHASES = ("data_wait", "forward", "backward", "update")
TOTAL_UPDATES = 10


# ------------------------------------------------------------------------------------------ helpers


class Seen:
    """Records the losses of every micro-batch and the times of every update, as the plugins get them."""

    micro_losses: list[dict[str, float]] = []
    times: list[dict[str, float]] = []

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @hookimpl
    def after_accumulation(self, losses: Any) -> None:
        Seen.micro_losses.append({k: float(v) for k, v in losses.items()})

    @hookimpl
    def after_update(self, times: Any) -> None:
        Seen.times.append(dict(times))


def counting_step(model: torch.nn.Module, batch: Any) -> StepOutput:
    """A train step whose ``total`` loss is the number of the micro-batch (1, 2, ...), ``double`` twice
    that, and NaN for the micro-batches listed in ``counting_step.nan_at``."""
    counting_step.calls += 1  # type: ignore[attr-defined]
    k = float(counting_step.calls)  # type: ignore[attr-defined]
    if counting_step.calls in counting_step.nan_at:  # type: ignore[attr-defined]
        k = math.nan
    x, _ = batch
    zero = model(x).sum() * 0.0
    return StepOutput(total=zero + k, losses={"double": torch.tensor(2 * k)})


def reset_counting_step(nan_at: tuple[int, ...] = ()) -> None:
    counting_step.calls = 0  # type: ignore[attr-defined]
    counting_step.nan_at = nan_at  # type: ignore[attr-defined]


def mlp(i: int, o: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "mlp", "kwargs": {"in_features": i, "out_features": o, "hidden": 8, "depth": 1}, **extra}


def composite_config(**trainer: Any) -> dict[str, Any]:
    """The bundled example's shape, small: 64 samples, batch 16 (4 updates per epoch) in 2 micro-batches,
    10 updates (the run ends part-way through its third epoch), LR and weight-decay schedules."""
    return {
        "trainer": {
            "max_updates": TOTAL_UPDATES,
            "batch_size": 16,
            "accumulation_steps": 2,
            "seed": 0,
            "num_threads": 1,
            "log_every_n_updates": 4,
            "track_every_n_updates": 3,
            **trainer,
        },
        "model": {
            "kind": "composite",
            "name": "classifier",
            "parts": {"encoder": mlp(2, 8), "head": mlp(8, 4)},
        },
        "optimizer": {
            "kind": "adamw",
            "lr": 0.01,
            "weight_decay": 0.05,
            "lr_schedule": {"kind": "cosine", "warmup_updates": 3, "end_factor": 0.1},
            "wd_schedule": {"kind": "linear", "end_factor": 0.5},
        },
        "datasets": {
            "train": {"kind": "blobs", "kwargs": {"size": 64, "seed": 0}},
            "val": {"kind": "blobs", "kwargs": {"size": 24, "seed": 1}},
        },
        "callbacks": [],
    }


def plain_config(*callbacks: dict[str, Any], **trainer: Any) -> dict[str, Any]:
    """One MLP named ``model``, no default plugins, the given entries."""
    raw = composite_config(add_default_callbacks=False, **trainer)
    raw["model"] = mlp(2, 4)
    raw["callbacks"] = list(callbacks)
    return raw


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ------------------------------------------------------------------------- the shared default run


@attrs.frozen
class Run:
    status: int
    root: Path
    stdout: str
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    micro_losses: list[dict[str, float]]
    times: list[dict[str, float]]

    def record_at(self, update: int) -> dict[str, Any]:
        (record,) = [r for r in self.records if r["update"] == update]
        return record


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``noether train`` of :func:`composite_config` with the default plugins and :class:`Seen`."""
    tmp = tmp_path_factory.mktemp("example")
    raw = composite_config()
    raw["callbacks"] = [{"kind": "test_monitoring_plugins:Seen"}]
    Seen.micro_losses, Seen.times = [], []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = train(tmp, raw)
    root = tmp / "r"
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    summary = yaml.safe_load((root / "summary.yaml").read_text())
    return Run(status, root, out.getvalue(), records, summary, list(Seen.micro_losses), list(Seen.times))


def test_example_run_completes_part_way_through_an_epoch(example_run: Run) -> None:
    assert example_run.status == 0
    assert example_run.summary["status"] == "completed"
    assert len(example_run.micro_losses) == 2 * TOTAL_UPDATES  # accumulation: 2 micro-batches per update
    # LR at update 1 (off its interval), track interval U3, log interval U4; 10 is on neither
    assert [r["update"] for r in example_run.records] == [1, 3, 4, 6, 8, 9]
    assert example_run.records[-1]["epoch"] == 2


def test_dataset_stats(example_run: Run) -> None:
    summary = example_run.summary["summary"]
    assert summary["ds_stats/train/len"] == 64
    assert summary["ds_stats/val/len"] == 24
    assert "Dataset lengths: train=64, val=24\n" in example_run.stdout


def test_param_count_of_a_composite_model(example_run: Run) -> None:
    encoder = 2 * 8 + 8 + 8 * 8 + 8  # Linear(2, 8) and Linear(8, 8)
    head = 8 * 8 + 8 + 8 * 4 + 4
    summary = example_run.summary["summary"]
    expected = {"classifier": encoder + head, "classifier.encoder": encoder, "classifier.head": head}
    for name, count in expected.items():
        assert summary[f"param_count/{name}/trainable"] == count
        assert summary[f"param_count/{name}/frozen"] == 0
        assert summary[f"param_count/{name}"] == count
        assert f"Parameter count of {name}: trainable={count} frozen=0\n" in example_run.stdout
    assert not [key for key in summary if "None" in key]  # the reference wrote param_count/None.encoder


def test_lr_and_wd_per_part_at_update_one_and_on_the_track_interval(example_run: Run) -> None:
    raw = composite_config()["optimizer"]
    config = structure_config(composite_config(), PluginRegistry.from_environment()).optimizer
    for update in (1, 3, 6, 9):
        record = example_run.record_at(update)
        # the values the update that just finished used: its 0-based index is update - 1
        lr = raw["lr"] * schedule_factor(config.lr_schedule, update - 1, TOTAL_UPDATES)
        wd = raw["weight_decay"] * schedule_factor(config.wd_schedule, update - 1, TOTAL_UPDATES)
        for part in ("classifier.encoder", "classifier.head"):
            assert record[f"optim/lr/{part}"] == pytest.approx(lr, rel=1e-12)
            assert record[f"optim/wd/{part}"] == pytest.approx(wd, rel=1e-12)
    assert example_run.record_at(1)["optim/lr/classifier.encoder"] == pytest.approx(0.01 / 3)  # warmup 1/3
    assert set(example_run.record_at(1)) == {"epoch", "update", "sample"} | {
        f"optim/{v}/classifier.{p}" for v in ("lr", "wd") for p in ("encoder", "head")
    }
    assert not [k for r in example_run.records if r["update"] in (4, 8) for k in r if k.startswith("optim/")]


def test_online_loss_is_the_mean_of_the_micro_batches_since_the_last_log(example_run: Run) -> None:
    losses = [m["total"] for m in example_run.micro_losses]

    def mean(first_update: int, last_update: int) -> float:
        return sum(losses[2 * (first_update - 1) : 2 * last_update]) / (2 * (last_update - first_update + 1))

    assert example_run.record_at(3)["loss/online/total/U3"] == pytest.approx(mean(1, 3), rel=1e-6)
    assert example_run.record_at(6)["loss/online/total/U3"] == pytest.approx(mean(4, 6), rel=1e-6)
    assert example_run.record_at(9)["loss/online/total/U3"] == pytest.approx(mean(7, 9), rel=1e-6)
    assert example_run.record_at(4)["loss/online/total/U4"] == pytest.approx(mean(1, 4), rel=1e-6)
    assert example_run.record_at(8)["loss/online/total/U4"] == pytest.approx(mean(5, 8), rel=1e-6)
    # the log-interval entry echoes its values, the track-interval one does not
    value = example_run.record_at(8)["loss/online/total/U4"]
    assert f"loss/online/total/U4: {value:.6f}\n" in example_run.stdout
    assert "loss/online/total/U3:" not in example_run.stdout


def test_train_time_mean_and_max_per_phase(example_run: Run) -> None:
    for update, first in ((4, 1), (8, 5)):
        record = example_run.record_at(update)
        window = example_run.times[first - 1 : update]
        for phase in PHASES:
            values = [t[phase] for t in window]
            assert record[f"train_time/{phase}/mean/U4"] == pytest.approx(sum(values) / len(values), rel=1e-9)
            assert record[f"train_time/{phase}/max/U4"] == pytest.approx(max(values), rel=1e-12)
    assert not [k for k in example_run.record_at(3) if k.startswith("train_time/")]
    assert "train time by phase: data_wait=" in example_run.stdout


def test_peak_memory_on_cpu_is_the_peak_rss(example_run: Run) -> None:
    import resource

    now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    for update in (4, 8):
        record = example_run.record_at(update)
        assert 0.01 < record["peak_memory/rss_gib"] <= now
        assert "peak_memory/cuda_gib" not in record
    assert example_run.record_at(4)["peak_memory/rss_gib"] <= example_run.record_at(8)["peak_memory/rss_gib"]


PEAK_IN_ANOTHER_THREAD = """
import os, resource, threading
from noether_plugins.peak_memory import peak_rss_bytes

with open("/proc/self/statm") as statm:  # resident pages now, below any peak of the start-up
    resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def allocate():
    block = bytearray(512 * 2**20)  # zero-filled: every page touched
    del block

worker = threading.Thread(target=allocate)
worker.start()
worker.join()
print(resident, peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/statm")
def test_peak_rss_is_the_whole_process_s_peak_also_from_another_thread(tmp_path: Path) -> None:
    import subprocess

    # 512 MiB allocated and freed by a thread that has ended before the reading: the peak is the
    # process's (a per-thread figure would miss it), and the same as RUSAGE_SELF reports
    done = subprocess.run(
        [sys.executable, "-c", PEAK_IN_ANOTHER_THREAD], capture_output=True, text=True, check=True
    )
    resident, after, process_peak = map(int, done.stdout.split())
    assert after == process_peak, done.stdout
    assert after >= resident + 384 * 2**20, done.stdout


def test_progress_lines_without_a_terminal(example_run: Run) -> None:
    out = example_run.stdout
    assert "40.0% done. Epoch 1/3 (update 4/10, sample 64/160)\n" in out
    assert "80.0% done. Epoch 2/3 (update 8/10, sample 128/160)\n" in out
    ends = re.findall(
        r"estimated end \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(ETA \d+:\d\d:\d\d\), [\d.]+ [µm]?s per update", out
    )
    assert len(ends) == 2
    assert "\r" not in out
    assert "\x1b[" not in out


# ----------------------------------------------------------------------------------------- defaults


def test_defaults_in_producer_first_order_then_the_users_entries(tmp_path: Path) -> None:
    raw = composite_config()
    raw["callbacks"] = [{"kind": "LrCallback", "every_n_updates": 5, "name": "mine"}]
    trainer = make_trainer(tmp_path, raw)
    slots = [(s.key, s.is_default, s.interval.short if s.interval else None) for s in trainer.plugins.slots]
    assert slots == [
        ("DatasetStatsCallback", True, None),
        ("ParamCountCallback", True, None),
        ("OnlineLossCallback/U3", True, "U3"),
        ("OnlineLossCallback/U4", True, "U4"),
        # the config's LrCallback entry replaces the default one
        ("TrainTimeCallback", True, "U4"),
        ("PeakMemoryCallback", True, "U4"),
        ("ProgressCallback", True, "U4"),
        ("mine", False, "U5"),
    ]
    verbose = {
        s.key: s.config.verbose for s in trainer.plugins.slots if s.plugin.kind == "OnlineLossCallback"
    }
    assert verbose == {"OnlineLossCallback/U3": False, "OnlineLossCallback/U4": True}
    # the defaults read the losses in after_update: a run of them skips the per-micro-batch event
    assert not trainer.plugins.has_listeners("after_accumulation")


def test_eta_is_a_default_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "EtaCallback" not in [e.config.kind for e in plan(composite_config()).default_entries]
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    kinds = [e.config.kind for e in plan(composite_config()).default_entries]
    assert kinds[-1] == "EtaCallback"


def test_add_default_callbacks_false_opts_out(tmp_path: Path) -> None:
    trainer, sink = fit(tmp_path, composite_config(add_default_callbacks=False), expect="completed")
    assert trainer.plugins.slots == []
    assert sink.records == []
    assert list(sink.summary) == ["durations"]  # the trainer's own


def test_equal_log_and_track_intervals_give_one_online_loss_key(tmp_path: Path) -> None:
    trainer, sink = fit(
        tmp_path, composite_config(log_every_n_updates=2, track_every_n_updates=2), expect="completed"
    )
    assert [s.key for s in trainer.plugins.slots if s.plugin.kind == "OnlineLossCallback"] == [
        "OnlineLossCallback/U2"
    ]
    assert [r["update"] for r in sink.records] == [1, 2, 4, 6, 8, 10]
    assert all("loss/online/total/U2" in r for r in sink.records[1:])


# --------------------------------------------------------------------------------------- OnlineLoss


def test_online_loss_pinned_on_a_frozen_model_over_one_epoch(tmp_path: Path) -> None:
    """A frozen model's losses do not change, so the mean over one epoch's micro-batches (equal sizes)
    is the loss over the whole training set, whatever the order the sampler drew them in."""
    raw = plain_config(
        {"kind": "OnlineLossCallback", "every_n_epochs": 1, "verbose": False},
        {"kind": "LrCallback", "every_n_updates": 4},  # nothing to log: no optimizer
        max_updates=8,
    )
    raw["model"]["frozen"] = True
    trainer, sink = fit(tmp_path, raw, expect="completed")
    assert trainer.optimizer is None
    data = trainer.data["train"]
    x, y = data.x, data.y  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = F.cross_entropy(trainer.model(x.to(trainer.device)), y.to(trainer.device)).item()
    assert [r["update"] for r in sink.records] == [4, 8]
    for record in sink.records:
        assert set(record) == {"epoch", "update", "sample", "loss/online/total/E1"}
        assert record["loss/online/total/E1"] == pytest.approx(expected, rel=1e-5)


def test_online_loss_by_hand_with_accumulation_and_named_losses(tmp_path: Path) -> None:
    reset_counting_step()
    raw = plain_config(
        {"kind": "OnlineLossCallback", "every_n_updates": 3, "verbose": False},
        max_updates=7,
        train_step="test_monitoring_plugins:counting_step",
    )
    _, sink = fit(tmp_path, raw, expect="completed")
    # micro-batches are numbered 1, 2, ...; two per update; update 7 is after the last log
    assert sink.records == [
        {"epoch": 0, "update": 3, "sample": 48, "loss/online/total/U3": 3.5, "loss/online/double/U3": 7.0},
        {"epoch": 1, "update": 6, "sample": 96, "loss/online/total/U3": 9.5, "loss/online/double/U3": 19.0},
    ]


def test_online_loss_keeps_exact_means_over_long_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # more updates than it keeps before folding them into a running sum, and not a multiple of it
    monkeypatch.setattr(online_loss, "FOLD_EVERY", 8)
    reset_counting_step()
    raw = plain_config(
        {"kind": "OnlineLossCallback", "every_n_updates": 50, "verbose": False},
        max_updates=100,
        train_step="test_monitoring_plugins:counting_step",
    )
    _, sink = fit(tmp_path, raw, expect="completed")
    assert [r["loss/online/total/U50"] for r in sink.records] == [50.5, 150.5]


def test_nan_online_loss_fails_the_run_clearly(tmp_path: Path) -> None:
    reset_counting_step(nan_at=(3,))
    raw = plain_config(
        {"kind": "OnlineLossCallback", "every_n_updates": 3, "verbose": False},
        max_updates=6,
        train_step="test_monitoring_plugins:counting_step",
    )
    trainer = make_trainer(tmp_path, raw)
    with pytest.raises(
        PluginFailure, match=r"loss/online/total/U3 is NaN at update 3: a loss of the 3 update\(s\)"
    ):
        trainer.fit()


def test_nan_online_loss_is_logged_with_skip_nan_loss(tmp_path: Path) -> None:
    reset_counting_step(nan_at=(3,))
    raw = plain_config(
        {"kind": "OnlineLossCallback", "every_n_updates": 3, "verbose": False},
        max_updates=6,
        skip_nan_loss=True,
        train_step="test_monitoring_plugins:counting_step",
    )
    _, sink = fit(tmp_path, raw, expect="completed")
    assert math.isnan(sink.record_at(3)["loss/online/total/U3"])
    assert sink.record_at(6)["loss/online/total/U3"] == 9.5


# ----------------------------------------------------------------------------------------------- LR


def test_lr_of_a_plain_model_is_named_after_it_and_logged_once_at_update_one(tmp_path: Path) -> None:
    raw = plain_config({"kind": "LrCallback", "every_n_updates": 1}, max_updates=3)
    raw["optimizer"].pop("wd_schedule")
    _, sink = fit(tmp_path, raw, expect="completed")
    schedule = structure_config(raw, PluginRegistry.from_environment()).optimizer.lr_schedule
    assert [sorted(k for k in r if k.startswith("optim/")) for r in sink.records] == [["optim/lr/model"]] * 3
    for record in sink.records:
        expected = 0.01 * schedule_factor(schedule, record["update"] - 1, 3)
        assert record["optim/lr/model"] == pytest.approx(expected, rel=1e-12)


def test_lr_without_schedules_logs_nothing(tmp_path: Path) -> None:
    raw = plain_config({"kind": "LrCallback", "every_n_updates": 2}, max_updates=4)
    raw["optimizer"] = {"kind": "sgd", "lr": 0.1}
    _, sink = fit(tmp_path, raw, expect="completed")
    assert sink.records == []


# ------------------------------------------------------------------------------------- ParamCount


def test_param_count_of_nested_composites_with_frozen_parts(tmp_path: Path) -> None:
    raw = plain_config({"kind": "ParamCountCallback"}, max_updates=1)
    raw["model"] = {
        "kind": "composite",
        "name": "net",
        "parts": {
            "backbone": {"kind": "composite", "parts": {"enc": mlp(2, 8), "mid": mlp(8, 8, frozen=True)}},
            "head": mlp(8, 4, frozen=True),
        },
    }
    trainer, sink = fit(tmp_path, raw, expect="completed")
    parts = trainer.model.parts  # type: ignore[union-attr]
    enc = sum(p.numel() for p in parts["backbone"].parts["enc"].parameters())
    mid = sum(p.numel() for p in parts["backbone"].parts["mid"].parameters())
    head = sum(p.numel() for p in parts["head"].parameters())
    expected = {
        "net": (enc, mid + head),
        "net.backbone": (enc, mid),
        "net.backbone.enc": (enc, 0),
        "net.backbone.mid": (0, mid),
        "net.head": (0, head),
    }
    got = {}
    for key, value in sink.summary.items():
        if key == "durations":
            continue
        name, _, kind = key.removeprefix("param_count/").rpartition("/")
        if kind in ("trainable", "frozen"):
            got.setdefault(name, {})[kind] = value
        else:
            assert value == sum(expected[key.removeprefix("param_count/")])
    assert {n: (c["trainable"], c["frozen"]) for n, c in got.items()} == expected


# ----------------------------------------------------------------------------------------- Progress


def test_progress_heartbeat_and_a_log_in_the_same_update_do_not_divide_by_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference's B8: a time-triggered report followed by the regular one in the same update."""
    raw = plain_config(
        {"kind": "ProgressCallback", "every_n_updates": 2, "heartbeat_seconds": 1e-9}, max_updates=4
    )
    assert train(tmp_path, raw) == 0
    out = capsys.readouterr().out
    assert out.count("% done.") == 4 + 2  # a heartbeat after every update, the interval at 2 and 4
    assert out.count("50.0% done. Epoch 0/1 (update 2/4, sample 32/64)\n") == 2
    assert out.count(" per update\n") == 6


def test_progress_bar_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    monkeypatch.setenv("COLUMNS", "200")  # wide enough for Eta's text in the bar
    setup_logging(None)  # console handler on the terminal
    handler = logging.getLogger("noether").handlers[0]
    raw = plain_config(
        {"kind": "ProgressCallback", "every_n_updates": 5},
        {"kind": "EtaCallback", "every_n_updates": 5},
        {"kind": "OnlineLossCallback", "every_n_updates": 5},
    )
    trainer, _sink = fit(tmp_path, raw, expect="completed")
    assert sys.stdout is terminal
    assert handler.stream is terminal
    out = terminal.getvalue()
    assert "\x1b[" in out
    assert "100%" in out
    assert "U10/10" in out
    assert "ms/update" in out or "µs/update" in out  # Eta's text, in the bar's last column
    # log lines reach the terminal on a line of their own: the bar is erased first, redrawn later
    assert out.count("loss/online/total/U5: ") == 2
    assert out.count("\r\x1b[2Kloss/online/total/U5: ") == 2
    assert not handler.filters
    assert "% done." not in out  # the lines go to log.txt only when there is a bar
    assert isinstance(trainer.plugins.slots[0].obj, ProgressCallback)
    assert trainer.plugins.slots[0].obj.bar is None


def test_a_second_progress_bar_prints_lines_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    setup_logging(None)
    raw = plain_config(
        {"kind": "ProgressCallback", "every_n_updates": 5, "bar": True},
        {"kind": "ProgressCallback", "every_n_updates": 5, "bar": True, "name": "second"},
    )
    trainer, _ = fit(tmp_path, raw, expect="completed")
    out = terminal.getvalue()
    assert "second: another progress bar is on the terminal; printing progress lines" in out
    assert out.count("% done.") == 2
    assert [s.obj.bar for s in trainer.plugins.slots] == [None, None]


def test_progress_bar_is_taken_down_when_the_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    raw = plain_config(
        {"kind": "ProgressCallback", "every_n_updates": 5, "bar": True},
        {"kind": "sample_plugins:Crash", "update": 3},
    )
    with pytest.raises(PluginFailure, match="crash at update 3"):
        make_trainer(tmp_path, raw).fit()
    assert sys.stdout is terminal


# ---------------------------------------------------------------------------------------------- Eta


def test_eta_status_line_on_a_terminal_stays_out_of_log_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(eta, "REDRAW_SECONDS", 0.0)
    setup_logging(None)
    logging.getLogger("noether").handlers[0].setStream(terminal)  # log lines on the same terminal
    raw = plain_config(
        {"kind": "EtaCallback", "every_n_updates": 4}, {"kind": "OnlineLossCallback", "every_n_updates": 4}
    )
    _trainer, _ = fit(tmp_path, raw, expect="completed")
    out = terminal.getvalue()
    assert "\r\x1b[2KE 0/3 | U 1/10 | S 16/160 | next log in 3 updates, " in out
    assert "E 1/3 | U 4/10 | S 64/160 | next log in 4 updates, " in out
    assert "| U 10/10 |" in out
    assert "/update" in out
    # every log line starts on a clean line, and the status line is gone at the end
    assert out.count("loss/online/total/U4: ") == 2
    assert out.count(eta.ERASE_LINE + "loss/online/total/U4: ") == 2
    assert eta.ERASE_LINE + "plugin time" in out  # the trainer's report, after after_training
    assert not logging.getLogger("noether").handlers[0].filters


def test_eta_writes_nothing_without_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = plain_config({"kind": "EtaCallback", "every_n_updates": 4})
    fit(tmp_path, raw, expect="completed")
    captured = capsys.readouterr()
    assert "\r" not in captured.err
    assert "\r" not in captured.out


# ------------------------------------------------------------------------------------ unit checks


class _Writer:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add_scalar(self, key: str, value: Any) -> None:
        assert key not in self.values
        self.values[key] = float(value)


class _Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"touched trainer.{name}")


@pytest.mark.parametrize(
    "cls",
    [OnlineLossCallback, LrCallback, TrainTimeCallback, PeakMemoryCallback, ProgressCallback, EtaCallback],
)
def test_evaluation_only_runs_are_ignored(cls: type) -> None:
    plugin = cls(cls.Config(kind=cls.__name__, every_n_updates=1))
    kwargs = {
        "trainer": _Untouchable(),
        "counter": _Untouchable(),
        "config": plugin.config,
        "interval": "eval",
    }
    names = plugin.at_eval.__code__.co_varnames[1 : plugin.at_eval.__code__.co_argcount]
    plugin.at_eval(**{n: kwargs[n] for n in names})


@pytest.mark.parametrize("skip_nan_loss", [False, True])  # host values, or device tensors to the writer
def test_online_loss_with_losses_that_come_and_go(skip_nan_loss: bool) -> None:
    config = OnlineLossCallback.Config(kind="OnlineLossCallback", every_n_updates=1, verbose=False)
    plugin = OnlineLossCallback(config)
    for losses in ({"total": 1.0, "aux": 10.0}, {"total": 3.0}, {"total": 5.0, "aux": 20.0}):
        plugin.after_update({k: torch.tensor(v) for k, v in losses.items()})
    trainer = types.SimpleNamespace(dist=DistInfo(), writer=_Writer(), skip_nan_loss=skip_nan_loss)
    plugin.at_eval(trainer, types.SimpleNamespace(update=1), config, "update")
    assert trainer.writer.values == {"loss/online/total/U1": 3.0, "loss/online/aux/U1": 15.0}


@pytest.mark.parametrize(
    "dtypes",
    [
        [torch.float32] * 7,
        [
            torch.float16,
            torch.float32,
            torch.bfloat16,
            torch.float64,
            torch.float16,
            torch.float32,
            torch.float32,
        ],
        [torch.int64] * 7,  # stacking makes them float32 (rounding 2**24 + 1): read as the stack reads them
        [
            torch.float32,
            torch.int64,
            torch.float32,
            torch.float32,
            torch.float32,
            torch.float32,
            torch.float32,
        ],
    ],
)
def test_online_loss_cpu_means_are_those_of_the_stacked_losses(dtypes: list[torch.dtype]) -> None:
    """Whether the pending CPU losses are read one by one or stacked first, the means agree to the bit."""
    values = [0.1, 1 / 3, 2.0**24 + 1, 1e-3, 7.25, 0.3, 2.0 / 3]
    means = []
    for cpu_reads in (True, False):
        config = OnlineLossCallback.Config(kind="OnlineLossCallback", every_n_updates=7, verbose=False)
        plugin = OnlineLossCallback(config)
        if not cpu_reads:
            plugin._cpu_means = lambda: None  # type: ignore[method-assign]
        for value, dtype in zip(values, dtypes, strict=True):
            plugin.after_update({"total": torch.tensor(value, dtype=dtype), "aux": torch.tensor(value / 7)})
        trainer = types.SimpleNamespace(dist=DistInfo(), writer=_Writer(), skip_nan_loss=False)
        plugin.at_eval(trainer, types.SimpleNamespace(update=7), config, "update")
        assert not plugin._pending
        means.append(trainer.writer.values)
    assert means[0] == means[1]
    assert means[0].keys() == {"loss/online/total/U7", "loss/online/aux/U7"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_online_loss_saves_its_window_as_one_cpu_tensor_and_resumes_to_the_bit(
    tmp_path: Path, device: str
) -> None:
    """A saved window of n updates is n views of one CPU tensor (one copy off the device, one storage
    in the checkpoint), and the plugin loaded from it logs the means of the plugin never saved."""
    config = OnlineLossCallback.Config(kind="OnlineLossCallback", every_n_updates=9, verbose=False)
    live, saved = OnlineLossCallback(config), OnlineLossCallback(config)
    values = [0.1, 1 / 3, 2.0**24 + 1, 1e-3, 7.25, 0.3, 2.0 / 3, 5.5, 1e6 / 7]
    for value in values[:5]:
        live.after_update(
            {"total": torch.tensor(value, device=device), "aux": torch.tensor(-value, device=device)}
        )
    state = live.state_dict()
    pending = [t for losses in state["pending"] for t in losses.values()]
    assert len(pending) == 10
    assert all(t.device.type == "cpu" and t.dim() == 0 for t in pending)
    assert len({t.untyped_storage().data_ptr() for t in pending}) == 1
    assert [list(losses) for losses in state["pending"]] == [["total", "aux"]] * 5
    assert len(live._pending) == 5  # saving leaves the live window as it was
    path = tmp_path / "state.th"
    torch.save(state, path)
    saved.load_state_dict(torch.load(path, weights_only=True))
    means = []
    for plugin in (live, saved):
        for value in values[5:]:
            loss = {"total": torch.tensor(value, device=device), "aux": torch.tensor(-value, device=device)}
            plugin.after_update(loss)
        trainer = types.SimpleNamespace(dist=DistInfo(), writer=_Writer(), skip_nan_loss=False)
        plugin.at_eval(trainer, types.SimpleNamespace(update=9), config, "update")
        means.append(trainer.writer.values)
    assert means[0] == means[1]
    assert means[0]["loss/online/total/U9"] == pytest.approx(sum(values) / 9, rel=1e-6)


def test_online_loss_saves_a_window_of_mixed_dtypes_as_it_came() -> None:
    config = OnlineLossCallback.Config(kind="OnlineLossCallback", every_n_updates=9, verbose=False)
    plugin = OnlineLossCallback(config)
    for dtype in (torch.float16, torch.float32, torch.bfloat16):
        plugin.after_update({"total": torch.tensor(1 / 3, dtype=dtype)})
    pending = [losses["total"] for losses in plugin.state_dict()["pending"]]
    assert [t.dtype for t in pending] == [torch.float16, torch.float32, torch.bfloat16]
    assert [t is losses["total"] for t, losses in zip(pending, plugin._pending, strict=True)] == [True] * 3


def test_peak_memory_on_an_indexed_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    resets: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**29)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", resets.append)
    trainer = types.SimpleNamespace(device=torch.device("cuda", 1), dist=DistInfo(), writer=_Writer())
    PeakMemoryCallback(CallbackConfig(kind="PeakMemoryCallback", every_n_updates=1)).at_eval(
        trainer, "update"
    )
    assert trainer.writer.values["peak_memory/cuda_gib"] == 1.5
    assert trainer.writer.values["peak_memory/rss_gib"] > 0
    assert resets == [torch.device("cuda", 1)]


def _rank_main(rank: int, port: int, queue: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trainer = types.SimpleNamespace(
            device=torch.device("cpu"), dist=DistInfo(rank, 2), writer=_Writer(), skip_nan_loss=False
        )
        counter = types.SimpleNamespace(update=2)
        config = OnlineLossCallback.Config(kind="OnlineLossCallback", every_n_updates=2, verbose=False)
        loss = OnlineLossCallback(config)
        for value in [1.0, 3.0] if rank == 0 else [10.0, 20.0, 30.0]:
            loss.after_update({"total": torch.tensor(value)})
        loss.at_eval(trainer, counter, config, "update")
        times = TrainTimeCallback(CallbackConfig(kind="TrainTimeCallback", every_n_updates=2))
        for t in [0.1, 0.3] if rank == 0 else [0.5, 0.9]:
            times.after_update(dict.fromkeys(PHASES, t))
        times.at_eval(trainer, "update")
        PeakMemoryCallback(CallbackConfig(kind="PeakMemoryCallback", every_n_updates=2)).at_eval(
            trainer, "update"
        )
        queue.put((rank, trainer.writer.values))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not torch.distributed.is_available() or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs torch.distributed and fork (forked ranks start in milliseconds, spawned ones in seconds)",
)
def test_values_are_reduced_over_ranks() -> None:
    """Two real gloo ranks run the plugins' at_eval on different values: every rank logs the same
    reduced numbers (mean of the means for losses and mean times, max of the maxima)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(rank, port, queue)) for rank in (0, 1)]
    try:
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert results[0] == results[1]
    values = results[0]
    assert values["loss/online/total/U2"] == pytest.approx((2.0 + 20.0) / 2)  # mean of the ranks' means
    assert values["train_time/forward/mean/U2"] == pytest.approx((0.2 + 0.7) / 2)
    assert values["train_time/forward/max/U2"] == pytest.approx(0.9)
    assert values["peak_memory/rss_gib"] > 0
