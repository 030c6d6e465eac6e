"""Where the data path's limit is: noether against two hand-written loops, on two models.

Four loops train the same model on the same in-memory regression data (a ``TensorDataset``, MSE,
AdamW, one CPU thread), for the same number of updates:

* ``DataLoader loop``: what a user writes: a ``DataLoader`` with a ``RandomSampler`` (samples read one
  by one and collated), ``.to(device)``, forward, MSE, ``backward``, ``step``, ``zero_grad``;
* ``pre-batched loop``: the same loop over batches cut from the tensors before the clock starts (the
  floor: no data work at all inside the loop);
* ``noether, no plugins``: the Trainer with ``add_default_callbacks: false``;
* ``noether, defaults``: the Trainer with its default plugins, set up as ``noether train`` sets a run
  up (on-disk tracker, log file), on the intervals of a 20,000-update run (log every 200, track every
  40), as ``default_plugins_overhead.py`` does.

Models: ``tiny``, a 32x32 ``nn.Linear`` at batch 8; ``mlp``, the bundled MLP 256 wide (two hidden
layers of 256, 256 in and out) at batch 64.

How it is timed. A round runs every loop once per model, in an order that rotates from round to round,
so a machine that slows down for a while slows all four alike. Each run times ``--updates`` updates
after ``--warmup`` (``benchmarks.trainer_overhead.Window``: from the batch of the first timed update to
the end of the loop), on two clocks: this thread's CPU time (which does not count time spent waiting
for a core on a busy machine) and wall time. Everything outside the loop (building the run,
``before_training``, ``after_training``) is left out. The table shows medians and [min .. max] over the
rounds; the ratios are paired per round (median of the per-round ratios). The machine's load average
before and after is printed with it: the development machines are shared.

Target (issue #17): noether with its defaults faster than the DataLoader loop and within 5% of the
pre-batched loop, on both models, on the CPU-time clock.

    python benchmarks/data_path.py                        # 5 rounds, both models
    python benchmarks/data_path.py --rounds 9 --updates 4000
    python benchmarks/data_path.py --models tiny --check  # exit 1 when the target is missed
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

if __package__ in (None, ""):  # run as a script: make `benchmarks.data_path` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.default_plugins_overhead import console
from benchmarks.trainer_overhead import Timing, Window
from noether_core.config.loader import structure_config
from noether_core.io.metric_properties import MetricProperties
from noether_core.io.paths import RunPaths
from noether_core.io.trackers import DiskTracker
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.building import build_model
from noether_core.run.launch import setup_logging
from noether_core.run.plan import RunPlan
from noether_core.run.trainer import Trainer

SEED = 0
LR = 1e-3
DATASET_KIND = "benchmarks.data_path:make_dataset"
#: Ratio to the pre-batched loop that noether with its defaults stays within.
TARGET_RATIO = 1.05
#: Log and track intervals of the defaults: those of a 20,000-update run (1/100 and 1/500 of it).
LOG_EVERY, TRACK_EVERY = 200, 40


class Model(NamedTuple):
    """A benchmarked model: its ``model`` config section, features in and out, batch size, and how many
    of ``--updates`` it runs (the MLP's updates take longer)."""

    label: str
    section: dict[str, Any]
    features: int
    batch_size: int
    update_share: float


MODELS = {
    "tiny": Model(
        "Linear(32->32), batch 8",
        {"kind": "linear", "kwargs": {"in_features": 32, "out_features": 32}},
        32,
        8,
        1.0,
    ),
    "mlp": Model(
        "MLP 256 wide (2 hidden layers), batch 64",
        {"kind": "mlp", "kwargs": {"in_features": 256, "out_features": 256, "hidden": 256, "depth": 2}},
        256,
        64,
        0.25,
    ),
}
LOOPS = ("DataLoader loop", "pre-batched loop", "noether, no plugins", "noether, defaults")


def make_dataset(size: int = 4096, features: int = 32, seed: int = 0) -> TensorDataset:
    """Random regression data: ``x`` and ``y`` of shape ``(size, features)``, standard normal."""
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(size, features, generator=gen), torch.randn(size, features, generator=gen)
    )


def updates_of(args: argparse.Namespace, model: Model) -> tuple[int, int]:
    """Warm-up and timed updates of ``model``."""
    return max(1, round(args.warmup * model.update_share)), max(2, round(args.updates * model.update_share))


# ---------------------------------------------------------------------------------------- the loops


def hand_written(args: argparse.Namespace, model: Model, pre_batched: bool) -> Timing:
    """The hand-written loop over a ``DataLoader``, or over batches cut before the clock starts."""
    warmup, updates = updates_of(args, model)
    torch.manual_seed(SEED)
    dataset = make_dataset(args.dataset_size, model.features)
    net: nn.Module = build_model_section(model)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)  # as the config: no decay
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(SEED)
    if pre_batched:
        x, y = dataset.tensors
        order = torch.randperm(len(dataset), generator=generator)
        cut = len(dataset) - len(dataset) % model.batch_size
        epoch: Any = [
            (x[order[i : i + model.batch_size]], y[order[i : i + model.batch_size]])
            for i in range(0, cut, model.batch_size)
        ]
    else:
        sampler = RandomSampler(dataset, generator=generator)
        epoch = DataLoader(dataset, batch_size=model.batch_size, sampler=sampler, drop_last=True)
    total = warmup + updates

    def batches() -> Iterator[Any]:
        done = 0
        while True:
            for batch in epoch:
                yield batch
                done += 1
                if done == total:
                    return

    window = Window(warmup, device)
    net.train()
    for x, y in window.wrap(batches()):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        loss = F.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return window.per_update(updates)


def build_model_section(model: Model) -> nn.Module:
    registry = PluginRegistry.from_environment()
    return build_model(structure_config(raw_config(model, defaults=False, total=1, size=64), registry).model)


def raw_config(model: Model, *, defaults: bool, total: int, size: int) -> dict[str, Any]:
    trainer: dict[str, Any] = {
        "max_updates": total,
        "batch_size": model.batch_size,
        "seed": SEED,
        "device": "cpu",
        "num_threads": 1,
        "add_default_callbacks": defaults,
    }
    if defaults:
        trainer.update(log_every_n_updates=LOG_EVERY, track_every_n_updates=TRACK_EVERY)
    return {
        "trainer": trainer,
        "model": model.section,
        "optimizer": {"kind": "adamw", "lr": LR},
        "datasets": {"train": {"kind": DATASET_KIND, "kwargs": {"size": size, "features": model.features}}},
        "callbacks": [],
    }


def noether(args: argparse.Namespace, model: Model, defaults: bool) -> Timing:
    """The Trainer, set up as ``noether train`` sets a run up, timed over its steady-state updates."""
    warmup, updates = updates_of(args, model)
    with tempfile.TemporaryDirectory(prefix="noether-bench-") as tmp, console(terminal=False):
        registry = PluginRegistry.from_environment()
        raw = raw_config(model, defaults=defaults, total=warmup + updates, size=args.dataset_size)
        plan = RunPlan(structure_config(raw, registry), registry)
        assert bool(plan.all_entries) == defaults
        paths = RunPaths.create(Path(tmp), "bench")
        setup_logging(paths)
        metrics = MetricProperties()
        tracker = DiskTracker(metrics)
        tracker.start(paths, {})
        trainer = Trainer(plan, paths, trackers=[tracker], metrics=metrics)
        window = Window(warmup, trainer.device)
        batches = trainer._train_batches()
        assert batches.batched, "a TensorDataset is read a batch per call"
        inner = batches.updates
        batches.updates = lambda counter: window.wrap(inner(counter))  # type: ignore[method-assign]
        status = trainer.fit()
        assert status == "completed", status
    return window.per_update(updates)


RUNNERS: dict[str, Callable[[argparse.Namespace, Model], Timing]] = {
    "DataLoader loop": lambda a, m: hand_written(a, m, pre_batched=False),
    "pre-batched loop": lambda a, m: hand_written(a, m, pre_batched=True),
    "noether, no plugins": lambda a, m: noether(a, m, defaults=False),
    "noether, defaults": lambda a, m: noether(a, m, defaults=True),
}


# ---------------------------------------------------------------------------------------------- report


def run_rounds(args: argparse.Namespace) -> dict[str, dict[str, list[Timing]]]:
    """``{model: {loop: [timing per round]}}``; every round runs the loops in a rotated order."""
    times: dict[str, dict[str, list[Timing]]] = {m: {loop: [] for loop in LOOPS} for m in args.models}
    for r in range(args.rounds):
        for name in args.models:
            order = LOOPS[r % len(LOOPS) :] + LOOPS[: r % len(LOOPS)]
            for loop in order:
                gc.collect()
                times[name][loop].append(RUNNERS[loop](args, MODELS[name]))
    return times


def _cell(values: list[float], fmt: str = "7.1f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}} ..{max(values):{fmt}}]"


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not on every platform
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def report(args: argparse.Namespace, times: dict[str, dict[str, list[Timing]]], load_before: str) -> bool:
    """Print the tables; return whether the target is met on every model (CPU-time clock)."""
    print()
    print("Data path: noether vs hand-written loops (MSE, AdamW, cpu, 1 thread, in-memory TensorDataset)")
    print(
        f"{args.rounds} rounds, loops in rotating order; median [min .. max] over rounds; "
        "ratios paired per round"
    )
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{datetime.date.today().isoformat()}"
    )
    print(f"load average (1/5/15 min): before {load_before}, after {_load()}")
    met = True
    for name in args.models:
        model = MODELS[name]
        warmup, updates = updates_of(args, model)
        rows = times[name]
        cpu = {loop: [t.cpu * 1e6 for t in rows[loop]] for loop in LOOPS}
        wall = {loop: [t.wall * 1e6 for t in rows[loop]] for loop in LOOPS}
        print()
        print(f"{name}: {model.label}; {updates} timed updates after {warmup} warm-up")
        head = (
            f"  {'':20}  {'CPU µs/update':^25}  {'wall µs/update':^25}  "
            f"{'/ DataLoader loop':^25}  {'/ pre-batched loop':^25}"
        )
        print(head)
        for loop in LOOPS:
            vs_loader = [a / b for a, b in zip(cpu[loop], cpu["DataLoader loop"], strict=True)]
            vs_floor = [a / b for a, b in zip(cpu[loop], cpu["pre-batched loop"], strict=True)]
            print(
                f"  {loop:20}  {_cell(cpu[loop])}  {_cell(wall[loop])}  "
                f"{_cell(vs_loader, '7.3f')}  {_cell(vs_floor, '7.3f')}"
            )
        defaults = cpu["noether, defaults"]
        faster = (
            statistics.median([a / b for a, b in zip(defaults, cpu["DataLoader loop"], strict=True)]) < 1.0
        )
        floor = statistics.median([a / b for a, b in zip(defaults, cpu["pre-batched loop"], strict=True)])
        within = floor <= TARGET_RATIO
        met = met and faster and within
        print(
            f"  target, CPU time: defaults faster than the DataLoader loop: {'yes' if faster else 'NO'}; "
            f"within {TARGET_RATIO - 1:.0%} of the pre-batched loop: "
            f"{'yes' if within else 'NO'} ({floor - 1:+.1%})"
        )
    return met


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=2000, help="timed updates of tiny (mlp: a quarter)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up updates of tiny (mlp: a quarter)")
    parser.add_argument("--dataset-size", type=int, default=4096)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    load_before = _load()
    met = report(args, run_rounds(args), load_before)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
