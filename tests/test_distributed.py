"""Two real processes under torchrun with the gloo backend: one run directory, one set of metrics,
and the same weights as one process with the same effective batch size."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import tiny_config, train

from noether_core import ConfigError
from noether_core.cli import main
from noether_core.io.checkpoints import load_checkpoint
from noether_core.run.sampling import EpochSampler

TESTS = Path(__file__).parent

CONFIG = tiny_config()
# no dropout: the ranks draw their own masks, and the weights are compared with one process's
CONFIG["model"]["kwargs"].pop("dropout")
CONFIG["optimizer"] = {"kind": "adamw", "lr": 0.01}
del CONFIG["datasets"]["val"]
CONFIG["callbacks"] = [
    {"kind": "sample_plugins:SaveAtEnd"},
    {"kind": "sample_function_plugin:", "every_n_updates": 4},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(
    cfg: Path | None, tmp_path: Path, run_id: str | None, *extra: str, nproc: int = 2
) -> subprocess.CompletedProcess[str]:
    """``noether train CFG`` (``CFG`` may be ``None`` with ``--resume`` in ``extra``) as ``nproc`` gloo
    processes under torchrun."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "noether_core",
        *train_arguments(cfg, tmp_path, run_id, *extra),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240, check=False)


def train_arguments(cfg: Path | None, tmp_path: Path, run_id: str | None, *extra: str) -> list[str]:
    args = ["train"]
    if cfg is not None:
        args.append(str(cfg))
    if run_id is not None:
        args += ["--output-dir", str(tmp_path), "--run-id", run_id]
    return [*args, *extra]


#: The environment of the processes: one math thread each, and the tests' sample plugins importable.
ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_gloo_ranks_match_one_process_and_the_nproc_flag_runs_the_same_job(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    proc = torchrun(cfg, tmp_path, "ddp")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert main(["train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "single"]) == 0
    # noether's own flag runs the same torchrun job (the console command, replaced by torchrun)
    flag = [
        sys.executable,
        "-m",
        "noether_core",
        *train_arguments(cfg, tmp_path, "flag"),
        "--nproc-per-node",
        "2",
    ]
    proc = subprocess.run(flag, capture_output=True, text=True, env=ENV, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    run = tmp_path / "ddp"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records] == [4, 8, 12, 16, 20, 24, 28, 32]  # rank 0 alone writes
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ddp", "flag", "single"]
    ddp = load_checkpoint(run / "checkpoints" / "model_cp=final_model.th")["state_dict"]
    flagged = load_checkpoint(tmp_path / "flag" / "checkpoints" / "model_cp=final_model.th")["state_dict"]
    for key in ddp:
        assert torch.equal(flagged[key], ddp[key]), key
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "model_cp=final_model.th")["state_dict"]
    # the two ranks see the two halves of the single process's batches; DDP averages their gradients
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_each_rank_frees_its_ddp_wrapper_before_leaving_the_process_group(tmp_path: Path) -> None:
    # gloo's group is destroyed with its last holder (the wrapper's reducer); destroyed later, in a
    # garbage collection or the interpreter's finalization, it can hang or abort a finished rank
    config = dict(
        CONFIG,
        trainer=dict(CONFIG["trainer"], max_updates=2, max_epochs=None),
        callbacks=[{"kind": "sample_plugins:WrapperFreed"}],
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = torchrun(cfg, tmp_path, "freed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        assert f"rank {rank}: DDP freed with the process group up: True" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("arguments", "environment", "message"),
    [
        (["--nnodes", "2"], {}, "--nnodes need --nproc-per-node N"),
        (["--nproc-per-node", "2"], {"TORCHELASTIC_RUN_ID": "x"}, "started by torchrun already"),
    ],
)
def test_launcher_options_that_cannot_work_are_usage_errors(
    arguments: list[str],
    environment: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(["train", *arguments]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_a_signal_on_one_rank_stops_both_at_the_same_update(tmp_path: Path) -> None:
    config = dict(CONFIG, callbacks=[{"kind": "sample_plugins:SignalAt", "update": 5, "rank": 1}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = torchrun(cfg, tmp_path, "ddp")
    output = proc.stdout + proc.stderr
    assert "run ddp interrupted at E0_U5_S80" in output, output
    # torchrun reports the first non-zero exit (130) as a failure and may end the other rank while it
    # exits; what matters is that rank 0 saved the checkpoint before any rank left
    assert "exitcode  : 130" in output, output
    latest = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "model_cp=latest_trainer.th")
    assert latest["counter"]["update"] == 5


# ------------------------------------------------------------------------------ resume on another size


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_each_update_takes_the_same_samples_whatever_the_number_of_processes(accumulation_steps: int) -> None:
    batch, upe, resumed_at = 12, 21, 5

    def update_samples(world_size: int, skip_updates: int = 0) -> list[list[int]]:
        """The samples of each update of epoch 1 (from ``skip_updates`` on), over all ranks."""
        micro = batch // (world_size * accumulation_steps)
        per_rank = []
        for rank in range(world_size):
            sampler = EpochSampler(
                256, samples_per_rank=upe * batch // world_size, seed=3, rank=rank, world_size=world_size
            )
            sampler.set_epoch(1, skip=skip_updates * accumulation_steps * micro)
            per_rank.append(list(sampler))
        per_update = batch // world_size
        return [
            sorted(i for indices in per_rank for i in indices[u * per_update : (u + 1) * per_update])
            for u in range(upe - skip_updates)
        ]

    one = update_samples(1)
    assert len({i for update in one for i in update}) == upe * batch  # no sample twice in an epoch
    for world_size in (2, 3):
        assert update_samples(world_size) == one
        # resumed mid-epoch on another number of processes: the updates the run had not made yet
        assert update_samples(world_size, skip_updates=resumed_at) == one[resumed_at:]


#: A run whose batch (12) splits over 1, 2 and 3 processes, with an EMA whose state must carry over.
ELASTIC = dict(
    CONFIG,
    trainer=dict(CONFIG["trainer"], batch_size=12, max_updates=6, max_epochs=None),
    callbacks=[
        {"kind": "sample_plugins:SaveAtEnd"},
        {"kind": "EmaCallback", "target_factors": [0.5], "every_n_updates": 2, "save_weights": False},
        {"kind": "CheckpointCallback", "every_n_updates": 6},
    ],
)


def _final_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    checkpoints = run / "checkpoints"
    return {
        "model": load_checkpoint(checkpoints / "model_cp=final_model.th")["state_dict"],
        "ema": load_checkpoint(checkpoints / "model_ema=0.5_cp=last_model.th")["state_dict"],
        "optim": load_checkpoint(checkpoints / "model_cp=latest_optim.th")["state_dict"]["state"],
    }


def _interrupted_two_process_run(tmp_path: Path) -> Path:
    """A two-process run of ``ELASTIC`` interrupted after update 3 (a SIGTERM to rank 1), with its
    resumable ``latest``."""
    config = dict(
        ELASTIC,
        callbacks=[*ELASTIC["callbacks"], {"kind": "sample_plugins:SignalAt", "update": 3, "rank": 1}],
    )
    cfg = tmp_path / "interrupted.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = torchrun(cfg, tmp_path, "two")
    assert "run two interrupted at E0_U3_S36" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return tmp_path / "two"


def _uninterrupted_one_process_run(tmp_path: Path) -> Path:
    cfg = tmp_path / "elastic.yaml"
    cfg.write_text(yaml.safe_dump(ELASTIC))
    assert main(["train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "one"]) == 0
    return tmp_path / "one"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_a_two_process_checkpoint_resumes_on_one_and_on_three_processes(tmp_path: Path) -> None:
    two = _interrupted_two_process_run(tmp_path)
    latest = load_checkpoint(two / "checkpoints" / "model_cp=latest_trainer.th")
    assert latest["geometry"]["world_size"] == 2
    assert len(latest["rng_by_rank"]) == 2  # each rank's own generators, not rank 0's twice
    assert not torch.equal(latest["rng_by_rank"][0]["torch"], latest["rng_by_rank"][1]["torch"])
    on_three = tmp_path / "three"
    shutil.copytree(two, on_three)

    # the same checkpoint, resumed by one process (this one) and by three
    assert (
        main(
            [
                "train",
                "--resume",
                str(two),
            ]
        )
        == 0
    )
    proc = torchrun(None, tmp_path, None, "--resume", str(on_three), nproc=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 processes now, 2 when the checkpoint was saved" in proc.stdout + proc.stderr

    reference = _final_weights(_uninterrupted_one_process_run(tmp_path))
    for run in (two, on_three):
        resumed = _final_weights(run)
        # each update takes the same 12 samples whatever the number of processes; what differs is the
        # order in which the gradient's sum is taken (see docs/distributed.md)
        for part in ("model", "ema"):
            for key, value in reference[part].items():
                torch.testing.assert_close(resumed[part][key], value, rtol=1e-4, atol=1e-5)
        for index, moments in reference["optim"].items():
            for name in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(resumed["optim"][index][name], moments[name], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ failures


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_a_hung_rank_is_detected_after_the_process_group_timeout(tmp_path: Path) -> None:
    config = dict(
        CONFIG,
        trainer=dict(
            CONFIG["trainer"], max_updates=6, max_epochs=None, process_group_timeout=3, stop_timeout=3
        ),
        callbacks=[{"kind": "sample_plugins:Hang", "hook": "after_update", "update": 3, "rank": 1}],
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "noether_core",
        *train_arguments(cfg, tmp_path, "hang"),
        "--nproc-per-node",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    # rank 0 names the wait that ran out; rank 1, ended by torchrun, names its hung plugin
    assert (
        "noether: error: rank 0: training failed at update 3: another process did not answer within "
        "trainer.process_group_timeout=3s" in output
    ), output
    assert (
        "noether: error: rank 1: plugin 'sample_plugins:Hang' (sample_plugins:Hang) did not return from "
        "after_update" in output
    ), output


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_a_plugin_raising_on_one_rank_ends_every_rank_with_one_message(tmp_path: Path) -> None:
    config = dict(
        CONFIG,
        trainer=dict(CONFIG["trainer"], max_updates=6, max_epochs=None),
        callbacks=[{"kind": "sample_plugins:Crash", "update": 3, "rank": 1}],
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    # the subprocess's timeout is the bound: a hang fails the test instead of stalling the suite
    cmd = [
        sys.executable,
        "-m",
        "noether_core",
        *train_arguments(cfg, tmp_path, "crash"),
        "--nproc-per-node",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("noether: error:")]
    assert errors == [
        "noether: error: rank 1: plugin 'sample_plugins:Crash' (sample_plugins:Crash) failed in "
        "after_update: RuntimeError: crash at update 3"
    ], output
    # no traceback of the failing plugin, no second report from rank 0 about the lost connection
    assert output.count("crash at update 3") == 1, output
    assert "closed by peer" not in output, output
    run = tmp_path / "crash"
    assert (
        "rank 0 stopped at update 3: another process of the run ended first" in (run / "log.txt").read_text()
    )
    assert yaml.safe_load((run / "summary.yaml").read_text())["status"] == "failed"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_a_one_process_checkpoint_resumes_on_two_processes(tmp_path: Path) -> None:
    signal_at = {"kind": "sample_plugins:SignalAt", "update": 4}
    assert train(tmp_path, dict(ELASTIC, callbacks=[*ELASTIC["callbacks"], signal_at]), "single") == 130
    proc = torchrun(None, tmp_path, None, "--resume", str(tmp_path / "single"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "2 processes now, 1 when the checkpoint was saved" in output
    resumed = _final_weights(tmp_path / "single")
    reference = _final_weights(_uninterrupted_one_process_run(tmp_path))
    for part in ("model", "ema"):
        for key, value in reference[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_a_resume_on_as_many_processes_is_exact_with_dropout(tmp_path: Path) -> None:
    # dropout draws from each rank's own generators: identical weights need each rank's state back
    config = dict(
        ELASTIC,
        model=tiny_config()["model"],
        trainer=dict(ELASTIC["trainer"], max_updates=4),
        callbacks=[{"kind": "sample_plugins:SaveAtEnd"}],
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    straight = torchrun(cfg, tmp_path, "straight")
    assert straight.returncode == 0, straight.stdout + straight.stderr
    signal_at = {"kind": "sample_plugins:SignalAt", "update": 2, "rank": 1}
    cfg.write_text(yaml.safe_dump(dict(config, callbacks=[*config["callbacks"], signal_at])))
    torchrun(cfg, tmp_path, "resumed")
    proc = torchrun(None, tmp_path, None, "--resume", str(tmp_path / "resumed"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = "checkpoints/model_cp=final_model.th"
    straight = load_checkpoint(tmp_path / "straight" / final)["state_dict"]
    resumed = load_checkpoint(tmp_path / "resumed" / final)["state_dict"]
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_a_non_finite_loss_on_one_rank_skips_the_update_on_every_rank(tmp_path: Path) -> None:
    # rank 1 alone skipping its backward would leave rank 0 waiting in the gradient's reduction
    config = dict(
        CONFIG,
        trainer=dict(
            CONFIG["trainer"],
            max_updates=4,
            max_epochs=None,
            skip_nan_loss=True,
            train_step="tiny_runs:nan_on_rank_1_step",
            process_group_timeout=30,
        ),
        callbacks=[{"kind": "sample_plugins:SaveAtEnd"}],
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = torchrun(cfg, tmp_path, "nan")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # both ranks skip update 3 (rank 1 saw the NaN, rank 0 was told), and go on together
    assert output.count("non-finite loss at update 3: skipping it (1 in a row)") == 2, output
    assert "run nan completed at E0_U4_S64" in output


@pytest.mark.parametrize(
    ("device", "gpus", "local_world_size", "refused"),
    [("auto", 1, "2", True), ("cuda", 0, "1", True), ("cuda:1", 3, "4", True), ("cuda", 2, "2", False)],
)
def test_more_processes_than_gpus_on_a_machine_are_refused_before_any_process_group(
    monkeypatch: pytest.MonkeyPatch, device: str, gpus: int, local_world_size: str, refused: bool
) -> None:
    """Without the check, the process whose LOCAL_RANK has no GPU dies in its first collective with
    CUDA's "invalid device ordinal" (seen on a 1-GPU machine with --nproc-per-node 2). This machine has
    no GPU, so the device count is set by hand; a real one runs it in benchmarks/gpu_check.py."""
    from noether_core.run.device import check_gpus_per_process, processes_on_this_machine

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    processes = processes_on_this_machine()
    assert processes == int(local_world_size)
    if not refused:
        check_gpus_per_process(device, processes)
        return
    with pytest.raises(ConfigError) as caught:
        check_gpus_per_process(device, processes)
    message = str(caught.value)
    assert "trainer.device" in message
    assert f"this machine runs {local_world_size} processes and has {gpus} GPU(s) visible" in message
    assert f"--nproc-per-node {gpus}" in message
    assert "trainer.device=cpu" in message
    assert ("what 'auto' picks" in message) == (device == "auto")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing to share
    assert processes_on_this_machine() == 1


def test_nproc_per_node_refuses_a_bad_config_once_before_starting_any_process(tmp_path: Path) -> None:
    """The command that would start torchrun checks a new run's config itself: one message, exit 2, no
    process started (torchrun would report each failed child with a traceback of its own)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "noether_core",
            "train",
            "--nproc-per-node",
            "2",
            "--output-dir",
            str(tmp_path),
            "--set",
            "trainer.max_updates=3",  # the bundled example sets max_epochs: two ends
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("noether: error: invalid config") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "torch.distributed" not in proc.stderr
    assert "rank " not in proc.stderr  # said by this command, not by a process torchrun started
    assert list(tmp_path.iterdir()) == []  # no run directory
