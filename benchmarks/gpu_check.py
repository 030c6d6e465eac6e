"""What only a CUDA machine can check: the GPU paths noether's CPU test suite runs through fallbacks.

On a machine with CUDA it runs, each as a real run of the bundled example (a few updates, in a
temporary directory), and prints one line per check:

* ``fp16``: mixed precision with a real ``GradScaler``: the run completes, its losses are finite, and
  the scaler's scale is saved with the trainer state;
* ``bf16``: the same in bfloat16 (skipped where the GPU has no bf16);
* ``peak-memory``: ``peak_memory/cuda_gib`` is logged, and is above 0;
* ``host-syncs``: the host synchronizations per update of the training loop itself (no plugins),
  counted with ``torch.cuda.set_sync_debug_mode("warn")`` over two runs of different lengths, whose
  difference cancels what start and end cost; target: none. With the default plugins, the syncs per
  update are reported too (their logging steps read values back to the host);
* ``nccl``: with two GPUs or more, ``noether train --nproc-per-node 2`` on two GPUs (the NCCL backend,
  one GPU per process by ``LOCAL_RANK``) completes;
* ``gpus-per-process``: one process more than there are GPUs is refused with a config error (exit 2)
  before any process group is joined.

Without CUDA it says so and exits 0: nothing here can run.

    python benchmarks/gpu_check.py           # exit 1 when a check fails
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from noether_core import train
from noether_core.io.checkpoints import load_checkpoint

#: Two epochs of the bundled example, on the GPU, its evaluations left out; one checkpoint at the end
#: (its trainer state holds the grad scaler's).
SHORT = (
    "trainer.max_epochs=null",
    "trainer.max_updates=128",
    "trainer.device=cuda",
    "callbacks=[{kind: CheckpointCallback, every_n_updates: 128}]",
)


def run_example(directory: Path, run_id: str, *overrides: str) -> tuple[str, dict[str, float | None], Path]:
    result = train(None, output_dir=directory, run_id=run_id, overrides=[*SHORT, *overrides])
    return result.status, dict(result.metrics), result.run_dir


def check_precision(directory: Path, precision: str) -> str:
    status, metrics, run_dir = run_example(directory, precision, f"trainer.precision={precision}")
    losses = {k: v for k, v in metrics.items() if k.startswith("loss/")}
    if status != "completed":
        raise AssertionError(f"the run ended {status}")
    if not losses or not all(v is not None and v == v and abs(v) != float("inf") for v in losses.values()):
        raise AssertionError(f"losses not finite: {losses}")
    state = load_checkpoint(run_dir / "checkpoints" / "classifier_cp=last_trainer.th")
    scale = state["grad_scaler"].get("scale")
    if precision == "fp16" and not scale:
        raise AssertionError(f"no GradScaler scale in the trainer state: {state['grad_scaler']}")
    detail = f", scale {float(scale):g}" if scale else ""
    return f"{', '.join(f'{k} {v:.4f}' for k, v in sorted(losses.items()) if v is not None)}{detail}"


def check_peak_memory(directory: Path) -> str:
    _, metrics, _ = run_example(directory, "memory")
    value = metrics.get("peak_memory/cuda_gib")
    if value is None or value <= 0:
        raise AssertionError(f"peak_memory/cuda_gib is {value!r}")
    return f"peak_memory/cuda_gib {value:.4f}"


def count_syncs(directory: Path, run_id: str, updates: int, *overrides: str) -> int:
    """Host synchronizations in a whole run of ``updates`` updates."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_example(directory, run_id, f"trainer.max_updates={updates}", *overrides)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def check_host_syncs(directory: Path) -> str:
    per_update = {}
    for label, extra in (("loop", ("trainer.add_default_callbacks=false",)), ("defaults", ())):
        short = count_syncs(directory, f"syncs-{label}-20", 20, *extra)
        long = count_syncs(directory, f"syncs-{label}-60", 60, *extra)
        per_update[label] = (long - short) / 40
    if per_update["loop"] > 0:
        raise AssertionError(f"{per_update['loop']:g} host syncs per update in the loop itself (target: 0)")
    return f"loop {per_update['loop']:g} per update; with the default plugins {per_update['defaults']:g}"


def torchrun_example(directory: Path, run_id: str, processes: int) -> subprocess.CompletedProcess[str]:
    """``noether train --nproc-per-node PROCESSES`` on the short example, in a process of its own."""
    command = [
        sys.executable,
        "-m",
        "noether_core",
        "train",
        "--nproc-per-node",
        str(processes),
        "--output-dir",
        str(directory),
        "--run-id",
        run_id,
        *(arg for override in SHORT for arg in ("--set", override)),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def check_nccl(directory: Path) -> str:
    proc = torchrun_example(directory, "nccl", 2)
    if proc.returncode != 0:
        raise AssertionError(f"exit status {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return "2 processes on 2 GPUs completed"


def check_gpus_per_process(directory: Path) -> str:
    """One process more than this machine has GPUs: refused with the config error, before training."""
    n = torch.cuda.device_count() + 1
    proc = torchrun_example(directory, "too-many", n)
    output = proc.stdout + proc.stderr
    if proc.returncode != 2 or "GPU(s) visible" not in output or "invalid device ordinal" in output:
        raise AssertionError(f"exit status {proc.returncode}:\n{output[-3000:]}")
    said = next(line.strip() for line in output.splitlines() if "GPU(s) visible" in line)
    return f"{n} processes refused (exit 2): {said}"


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}); nothing to check, skipping")
        return 0
    print(
        f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    )
    checks: list[tuple[str, Callable[[Path], str] | None, str]] = [
        ("fp16", lambda d: check_precision(d, "fp16"), ""),
        (
            "bf16",
            (lambda d: check_precision(d, "bf16")) if torch.cuda.is_bf16_supported() else None,
            "no bf16 on this GPU",
        ),
        ("peak-memory", check_peak_memory, ""),
        ("host-syncs", check_host_syncs, ""),
        ("nccl", check_nccl if torch.cuda.device_count() >= 2 else None, "fewer than 2 GPUs"),
        ("gpus-per-process", check_gpus_per_process, ""),
    ]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="noether-gpu-check-") as tmp:
        for name, check, why_skipped in checks:
            if check is None:
                print(f"  {name:<12} skipped: {why_skipped}")
                continue
            try:
                print(f"  {name:<12} ok: {check(Path(tmp) / name)}")
            except Exception as exc:
                failed += 1
                print(f"  {name:<12} FAILED: {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
