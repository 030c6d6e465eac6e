"""The run keeps the memory an update frees for the next one (``keep_freed_memory``): measured as the
page faults per update of a real training run, in a fresh process each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Trains the benchmark's 256-wide MLP with the default plugins (whose running losses, kept between
# updates, are what split the heap) and counts this thread's minor page faults from update 200 to
# 600, after the heap has grown to its size.
SCRIPT = r"""
import json, resource, tempfile
import torch
from torch.utils.data import TensorDataset
import noether_core
from noether_core.run.data import TrainBatches
from noether_core.run.device import keep_freed_memory

counted = {}
updates = TrainBatches.updates

def counting(self, counter):
    for n, batches in enumerate(updates(self, counter)):
        if n in (200, 600):
            counted[n] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        yield batches

TrainBatches.updates = counting
gen = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(4096, 256, generator=gen), torch.randn(4096, 256, generator=gen))
with tempfile.TemporaryDirectory() as tmp:
    result = noether_core.train(
        {
            "trainer": {
                "max_updates": 601, "batch_size": 64, "num_threads": 1,
                "log_every_n_updates": 200, "track_every_n_updates": 40,
            },
            "model": {"kind": "mlp", "kwargs": {"in_features": 256, "out_features": 256,
                                                "hidden": 256, "depth": 2}},
            "optimizer": {"kind": "adamw", "lr": 1e-3},
        },
        datasets={"train": data}, output_dir=tmp, run_id="r",
    )
assert result.status == "completed", result.status
print(json.dumps({"kept": keep_freed_memory(), "per_update": (counted[600] - counted[200]) / 400}))
"""


def faults_per_update(**env: str) -> tuple[bool, float]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return bool(found["kept"]), float(found["per_update"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, counted on Linux")
def test_an_update_reuses_the_memory_the_last_one_freed() -> None:
    clean = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    if clean:
        pytest.skip(f"malloc is tuned or replaced in this environment: {sorted(clean)}")
    kept, faults = faults_per_update()
    assert kept
    # a page or two per update stays (Python's own arenas); returning the heap's top costs ~20
    assert faults < 5, f"{faults:.1f} page faults per update"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, counted on Linux")
def test_malloc_is_left_alone_where_it_may_be_replaced() -> None:
    kept, faults = faults_per_update(LD_PRELOAD="")
    assert not kept
    # glibc as it comes: the heap's top goes back to the kernel every few updates and is faulted in
    # again, page by page
    assert faults > 5, f"{faults:.1f} page faults per update"
