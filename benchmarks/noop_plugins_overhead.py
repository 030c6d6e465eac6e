"""What each extra third-party plugin costs per update: the Trainer with no plugins, and with 20 and 100
plugins that do nothing.

The plugins are what a third-party package would ship at the least: a class with a ``Config``, an empty
``after_update`` and an empty ``at_eval`` on ``every_n_updates`` (``--every``, 10 unless given), listed
in the config by import path, and nothing said about eval mode (so the model is switched to eval mode
and back at each tick, as for any plugin that does not say it never runs the model). What is measured
is the dispatch: the call of every entry on every update, and of every due entry at the ticks, each
timed for the end-of-run summary. Issue #15's target: at most 1 µs per update per plugin.

The model, data and timing are those of ``default_plugins_overhead.py``: a 32x32 ``nn.Linear``, batch
8, AdamW, one CPU thread; the trainers (no plugins, 20, 100) run interleaved by
:mod:`benchmarks.interleave`'s runner, taking turns every ``--turn`` updates; each update is timed on
this thread's CPU clock, summed per block, and the overhead is the median over blocks of the per-block
difference to the trainer without plugins.
The per-plugin figure is that overhead divided by the number of plugins, and the slope between 20 and
100 plugins (what one more plugin adds, without any fixed cost of having plugins at all).

    python benchmarks/noop_plugins_overhead.py
    python benchmarks/noop_plugins_overhead.py --every 1      # every plugin's at_eval on every update
    python benchmarks/noop_plugins_overhead.py --check        # exit 1 when over 1 µs per plugin
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks.noop_plugins_overhead` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.default_plugins_overhead import _head, _spread, raw_config
from benchmarks.instructions_per_update import no_op_plugin
from benchmarks.interleave import cli_trainer, noether_candidate, plan_of, run_interleaved
from noether_core.run.trainer import Trainer

TARGET_US = 1.0
KIND = "benchmarks.noop_plugins_overhead:NoOp"
COUNTS = (0, 20, 100)


#: A third-party plugin that does nothing (``after_update``, ``at_eval``), on an update interval: the
#: one ``instructions_per_update.py --variant noop`` counts.
NoOp = no_op_plugin()


def build_trainer(args: argparse.Namespace, plugins: int, output_dir: Path, total: int) -> Trainer:
    """A Trainer for ``total`` updates with ``plugins`` no-op entries and no defaults, set up as
    ``noether train`` sets one up (tracker, log file)."""
    raw = raw_config(args, False, total)
    raw["callbacks"] = [
        {"kind": KIND, "name": f"noop{i}", "every_n_updates": args.every} for i in range(plugins)
    ]
    return cli_trainer(plan_of(raw), output_dir, f"noop{plugins}")


def run_counts(args: argparse.Namespace, output_dir: Path) -> dict[int, list[float]]:
    """Seconds per update of every timed block, per number of plugins (trainers taking turns)."""
    timers = run_interleaved(
        [
            noether_candidate(functools.partial(build_trainer, args, n, output_dir), f"{n} plugins:")
            for n in COUNTS
        ],
        block=args.block,
        turn=args.turn,
        blocks=args.blocks,
        warmup_blocks=args.warmup_blocks,
        inner="cpu",
    )
    return {n: t.seconds("cpu") for n, t in zip(COUNTS, timers, strict=True)}


def report(args: argparse.Namespace, times: dict[int, list[float]]) -> float:
    """Print the table; return the median µs per update per plugin at 100 plugins."""
    us = {n: [t * 1e6 for t in ts] for n, ts in times.items()}
    bare = us[0]
    print()
    print(
        "noether Trainer with 0, 20 and 100 no-op plugins (after_update + at_eval every "
        f"{args.every} updates): Linear(32->32), batch {args.batch_size}, AdamW, cpu, 1 thread"
    )
    print(
        f"{args.blocks} timed blocks of {args.block} updates after {args.warmup_blocks} warm-up block(s), "
        f"the trainers taking turns every {args.turn} updates; thread CPU time"
    )
    _head(bare)
    per_plugin: dict[int, float] = {}
    for n in COUNTS[1:]:
        overhead = [b - a for a, b in zip(bare, us[n], strict=True)]
        print(f"  {f'{n} no-op plugins, µs/update':40}{_spread(us[n])}")
        print(f"  {'  overhead over none, µs/update':40}{_spread(overhead)}")
        per = [o / n for o in overhead]
        per_plugin[n] = statistics.median(per)
        print(f"  {'  per plugin, µs/update':40}{_spread(per)}")
    low, high = COUNTS[1], COUNTS[2]
    slope = [(c - b) / (high - low) for b, c in zip(us[low], us[high], strict=True)]
    print(f"  {f'one more plugin ({low} -> {high}), µs/update':40}{_spread(slope)}")
    worst = per_plugin[high]
    verdict = "within" if worst <= TARGET_US else "OVER"
    print(f"\n  target: <= {TARGET_US:.0f} µs/update per plugin -> {verdict} ({worst:.2f} µs at {high})")
    return worst


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--updates", type=int, default=3000, help="timed updates per trainer (default 3000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed updates before them (default 200)")
    p.add_argument("--every", type=int, default=10, help="the plugins' every_n_updates (default 10)")
    p.add_argument("--block", type=int, default=None, help="updates per block (default: >= 50)")
    p.add_argument("--turn", type=int, default=10, help="updates per turn (default 10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dataset-size", type=int, default=4096)
    p.add_argument("--check", action="store_true", help=f"exit 1 when over {TARGET_US:.0f} µs per plugin")
    args = p.parse_args(argv)
    if args.updates < 1 or args.every < 1:
        p.error("--updates and --every must be >= 1")
    if args.block is None:
        args.block = args.every * math.ceil(50 / args.every)
    args.blocks = max(args.updates // args.block, 1)
    args.warmup_blocks = math.ceil(args.warmup / args.block)
    # what raw_config reads: intervals of the (absent) defaults
    args.run_length, args.log_every, args.track_every = 20_000, None, None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="noether-bench-") as tmp:
        gc.collect()
        times = run_counts(args, Path(tmp))
    worst = report(args, times)
    return 1 if args.check and worst > TARGET_US else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["NoOp", "main"]
