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

How it is timed: by :mod:`benchmarks.interleave`'s runner. For each model the four loops run in
threads of one process and take turns, ``--turn`` updates each (50). (Turns of 10 updates sometimes
made the pre-batched loop ten times slower on a busy 2-core machine, a cross-thread effect not
understood; turns of 50 did not show it.) Each update is timed on this thread's CPU time and on wall
time, added up per block of ``--block`` updates (200: every block of the defaults holds the same log
and track ticks); the ratios are paired per block (median of the per-block ratios), and the table
shows medians and [min .. max] over the blocks after ``--warmup-blocks``, with each loop's minor page
faults per update. The machine's load average before and after is printed with it: the development
machines are shared.

Target (issue #17): noether with its defaults faster than the DataLoader loop and within 5% of the
pre-batched loop, on both models, on the CPU-time clock.

    python benchmarks/data_path.py                        # 20 blocks of tiny, 10 of mlp
    python benchmarks/data_path.py --blocks 40 --turn 100
    python benchmarks/data_path.py --models tiny --check  # exit 1 when the target is missed
"""

from __future__ import annotations

import argparse
import datetime
import functools
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
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

if __package__ in (None, ""):  # run as a script: make `benchmarks.data_path` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.interleave import Blocks, Body, cli_trainer, load_average, plan_of, run_interleaved, timed_fit
from benchmarks.trainer_overhead import Timing, hand_written_updates
from noether_core.config.loader import structure_config
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.building import build_model

SEED = 0
LR = 1e-3
DATASET_KIND = "benchmarks.data_path:make_dataset"
#: Ratio to the pre-batched loop that noether with its defaults stays within.
TARGET_RATIO = 1.05
#: Log and track intervals of the defaults: those of a 20,000-update run (1/100 and 1/500 of it).
LOG_EVERY, TRACK_EVERY = 200, 40


class Measured(NamedTuple):
    """One loop's timed blocks: seconds per update, and its thread's page faults per update."""

    timings: list[Timing]
    faults: list[float]


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
        0.5,
    ),
}
LOOPS = ("DataLoader loop", "pre-batched loop", "noether, no plugins", "noether, defaults")


def make_dataset(size: int = 4096, features: int = 32, seed: int = 0) -> TensorDataset:
    """Random regression data: ``x`` and ``y`` of shape ``(size, features)``, standard normal."""
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(size, features, generator=gen), torch.randn(size, features, generator=gen)
    )


def blocks_of(args: argparse.Namespace, model: Model) -> int:
    """Timed blocks of ``model`` (the MLP's updates take longer: fewer blocks)."""
    return max(1, round(args.blocks * model.update_share))


# ---------------------------------------------------------------------------------------- the loops


def hand_written(args: argparse.Namespace, model: Model, pre_batched: bool, timer: Blocks) -> Body:
    """The hand-written loop over a ``DataLoader``, or over batches cut before the clock starts."""
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

    def batches() -> Iterator[Any]:
        while True:
            yield from epoch

    def loop() -> None:
        hand_written_updates(net, optimizer, timer.wrap(batches()), device)

    return loop


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


def noether(args: argparse.Namespace, model: Model, defaults: bool, output_dir: Path, timer: Blocks) -> Body:
    """The Trainer, set up as ``noether train`` sets a run up; its batches timed by ``timer``. Call it
    inside :func:`~benchmarks.interleave.console`."""
    plan = plan_of(raw_config(model, defaults=defaults, total=timer.updates, size=args.dataset_size))
    assert bool(plan.all_entries) == defaults
    trainer = cli_trainer(plan, output_dir, f"defaults-{defaults}")
    assert trainer._train_batches().batched, "a TensorDataset is read a batch per call"
    return timed_fit(trainer, timer, "noether")


def run_loops(args: argparse.Namespace, name: str, output_dir: Path) -> dict[str, Measured]:
    """Seconds and page faults per update of every timed block of each loop on model ``name``, the
    loops interleaved (:func:`~benchmarks.interleave.run_interleaved`)."""
    model = MODELS[name]
    makers: list[Callable[[Blocks], Body]] = [
        functools.partial(hand_written, args, model, False),
        functools.partial(hand_written, args, model, True),
        functools.partial(noether, args, model, False, output_dir),
        functools.partial(noether, args, model, True, output_dir),
    ]
    timers = run_interleaved(
        makers,
        block=args.block,
        turn=args.turn,
        blocks=blocks_of(args, model),
        warmup_blocks=args.warmup_blocks,
    )
    return {
        loop: Measured(timer.timings(), timer.faults_per_update())
        for loop, timer in zip(LOOPS, timers, strict=True)
    }


# ---------------------------------------------------------------------------------------------- report


def run_rounds(args: argparse.Namespace) -> dict[str, dict[str, Measured]]:
    """``{model: {loop: its timings and page faults per block}}``."""
    with tempfile.TemporaryDirectory(prefix="noether-bench-") as tmp:
        out: dict[str, dict[str, Measured]] = {}
        for name in args.models:
            gc.collect()
            out[name] = run_loops(args, name, Path(tmp))
    return out


def _cell(values: list[float], fmt: str = "7.1f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}} ..{max(values):{fmt}}]"


def report(args: argparse.Namespace, times: dict[str, dict[str, Measured]], load_before: str) -> bool:
    """Print the tables; return whether the target is met on every model (CPU-time clock)."""
    print()
    print("Data path: noether vs hand-written loops (MSE, AdamW, cpu, 1 thread, in-memory TensorDataset)")
    print(
        f"the loops interleaved, {args.turn} updates each in turn; median [min .. max] over blocks of "
        f"{args.block} updates; ratios paired per block"
    )
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{datetime.date.today().isoformat()}"
    )
    print(f"load average (1/5/15 min): before {load_before}, after {load_average()}")
    met = True
    for name in args.models:
        model = MODELS[name]
        blocks = blocks_of(args, model)
        rows = times[name]
        cpu = {loop: [t.cpu * 1e6 for t in rows[loop].timings] for loop in LOOPS}
        wall = {loop: [t.wall * 1e6 for t in rows[loop].timings] for loop in LOOPS}
        print()
        print(
            f"{name}: {model.label}; {blocks} timed blocks of {args.block} updates after "
            f"{args.warmup_blocks} warm-up block(s)"
        )
        head = (
            f"  {'':20}  {'CPU µs/update':^25}  {'wall µs/update':^25}  "
            f"{'/ DataLoader loop':^25}  {'/ pre-batched loop':^25}  {'page faults/update':^22}"
        )
        print(head)
        for loop in LOOPS:
            vs_loader = [a / b for a, b in zip(cpu[loop], cpu["DataLoader loop"], strict=True)]
            vs_floor = [a / b for a, b in zip(cpu[loop], cpu["pre-batched loop"], strict=True)]
            print(
                f"  {loop:20}  {_cell(cpu[loop])}  {_cell(wall[loop])}  "
                f"{_cell(vs_loader, '7.3f')}  {_cell(vs_floor, '7.3f')}  {_cell(rows[loop].faults, '6.2f')}"
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
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks of tiny (mlp: half as many)")
    parser.add_argument(
        "--block",
        type=int,
        default=LOG_EVERY,
        help=f"updates per block, the unit of the statistics (default {LOG_EVERY}: every block holds "
        "the same log and track ticks)",
    )
    parser.add_argument("--warmup-blocks", type=int, default=1, help="untimed blocks first (default 1)")
    parser.add_argument("--turn", type=int, default=50, help="updates a loop runs before the next (50)")
    parser.add_argument("--dataset-size", type=int, default=4096)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.block < 1 or args.turn < 1 or args.warmup_blocks < 0:
        parser.error("--blocks, --block and --turn must be >= 1, --warmup-blocks >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    load_before = load_average()
    met = report(args, run_rounds(args), load_before)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
