"""What the default monitoring plugins cost per update: the Trainer with none, and with all of them.

Three trainers train a 32x32 ``nn.Linear`` with MSE on random regression data, batch 8, AdamW with a
cosine LR schedule (so ``LrCallback`` has something to log), one CPU thread, set up as ``noether train``
sets a run up: the on-disk tracker writes ``metrics.jsonl`` and the ``noether`` logger writes its lines
(to ``log.txt`` and to a stdout that goes to ``/dev/null`` here). ``none`` has
``add_default_callbacks: false``; ``defaults`` has them, on the trainer's default intervals (log every
1/100 of the run, track every 1/500) unless ``--log-every``/``--track-every`` say otherwise. Those
are fractions of the whole run, so they are taken for a run of ``--run-length`` updates (20,000 unless
given), not for the few thousand updates timed here: a benchmark that short would otherwise measure
the defaults of a run that ticks every few updates, which no run of real length does.
``stand-ins`` has plugins with the defaults' hooks and intervals and empty bodies, which splits the
overhead into the trainer's dispatch and the plugins' own work.

How it is timed: by :mod:`benchmarks.interleave`'s runner. The three trainers run in one process,
each in a thread, and take turns, ``--turn`` updates each (10: a few milliseconds). Each update is
timed, from fetching its batch to the end of its tick, with this thread's CPU time (``--clock wall``
for wall time), and the times are added up per block of ``--block`` updates (a multiple of both
intervals, so every block holds the same ticks). A round is the same block of all three trainers, run
interleaved within a few tens of milliseconds; the overhead is the median over rounds of the per-round
difference, and the quartiles show the spread. Short turns keep the three close in time; a turn of one
update would also put every update of the run after another trainer's, colder than in a real run.
Warm-up blocks are left out, and so is everything outside the training loop; ticks (``at_eval``,
records written, lines printed) are in. Target: at most 30 µs per update for all defaults together.

    python benchmarks/default_plugins_overhead.py                      # defaults of a 20,000-update run
    python benchmarks/default_plugins_overhead.py --run-length 2200    # ... of a 2,200-update run
    python benchmarks/default_plugins_overhead.py --log-every 100 --track-every 20
    python benchmarks/default_plugins_overhead.py --terminal           # as on a terminal: bar and Eta
    python benchmarks/default_plugins_overhead.py --check              # exit 1 when over the target
    python benchmarks/default_plugins_overhead.py --run-length 2000 --updates 8000 --turn 8200
                                          # uninterrupted: each trainer's whole run in one turn

Short turns keep the three trainers close in time but start every turn colder than a real run, and
the median over short blocks leaves out the rare slow update (the one after a tick, an epoch's end).
With ``--turn`` at least the run's length each trainer runs all its updates in one go, as ``noether
train`` does: the figure to hold against the target (31-35 µs at a 2,000-update run's intervals on
2026-12-04, where the short turns gave 27-33).

The per-plugin rows come from extra runs of ``defaults`` alone: the trainer's per-entry accounting
(``perf_counter``, one read per call; a thread-CPU-time read would cost ten times as much and swamp the
cheap calls), over all updates; each is the plugin's own time, not the dispatch around it.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import TensorDataset

if __package__ in (None, ""):  # run as a script: make `benchmarks.default_plugins_overhead` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.interleave import cli_trainer, console, noether_candidate, plan_of, run_interleaved
from noether_core import hookimpl
from noether_core.plugins.registry import PluginSource, inspect_plugin
from noether_core.run.plan import PlannedEntry
from noether_core.run.trainer import Trainer

TARGET_US = 30.0
FEATURES = 32
SEED = 0
DATASET_KIND = "benchmarks.default_plugins_overhead:make_dataset"


def make_dataset(size: int = 4096, features: int = FEATURES, seed: int = 0) -> TensorDataset:
    """Random regression data: ``x`` and ``y``, ``(size, features)`` standard normal, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(size, features, generator=gen), torch.randn(size, features, generator=gen)
    )


def intervals(args: argparse.Namespace) -> tuple[int, int]:
    """The log and track intervals in updates: as given, else the trainer's defaults for a run of
    ``--run-length`` updates (1/100 and 1/500 of it)."""
    total = args.run_length
    return args.log_every or max(total // 100, 1), args.track_every or max(total // 500, 1)


def raw_config(args: argparse.Namespace, defaults: bool, total: int) -> dict[str, Any]:
    log_every, track_every = intervals(args)
    trainer: dict[str, Any] = {
        "max_updates": total,
        "batch_size": args.batch_size,
        "seed": SEED,
        "device": "cpu",
        "num_threads": 1,
        "add_default_callbacks": defaults,
        # set even where they equal the defaults: the interleaved run's length is rounded to whole blocks
        "log_every_n_updates": log_every,
        "track_every_n_updates": track_every,
    }
    return {
        "trainer": trainer,
        "model": {"kind": "linear", "kwargs": {"in_features": FEATURES, "out_features": FEATURES}},
        "optimizer": {
            "kind": "adamw",
            "lr": 1e-3,
            "lr_schedule": {"kind": "cosine", "warmup_fraction": 0.05},
        },
        "datasets": {"train": {"kind": DATASET_KIND, "kwargs": {"size": args.dataset_size}}},
        "callbacks": [],
    }


VARIANTS = ("none", "stand-ins", "defaults")


def _no_op_class(hooks: tuple[str, ...], needs_eval_mode: bool) -> type:
    """A plugin class implementing ``hooks`` with empty bodies."""

    def init(self: Any, config: Any) -> None:
        self.config = config

    namespace: dict[str, Any] = {"__init__": init, "needs_eval_mode": needs_eval_mode}
    for hook in hooks:

        def nothing(self: Any) -> None:
            pass

        nothing.__name__ = hook
        namespace[hook] = hookimpl(nothing)
    return type("NoOp", (), namespace)


def stand_ins(entries: tuple[PlannedEntry, ...]) -> tuple[PlannedEntry, ...]:
    """Each default entry with a plugin that implements the same hooks (and says the same about eval
    mode) and does nothing: the trainer's dispatch cost for the same events, intervals and entry count,
    without the plugins' work (and with nothing logged, so no metric records are written)."""
    out = []
    for entry in entries:
        plugin = entry.plugin
        source = PluginSource(f"{plugin.kind}-no-op", f"{__name__}:NoOp")
        stand_in = _no_op_class(plugin.hooks, plugin.needs_eval_mode)
        out.append(attrs.evolve(entry, plugin=inspect_plugin(source, stand_in)))
    return tuple(out)


def build_trainer(args: argparse.Namespace, variant: str, output_dir: Path, total: int) -> Trainer:
    """A Trainer for ``total`` updates set up as ``noether train`` sets one up. ``variant``: ``none`` (no
    plugins), ``stand-ins`` (no-op plugins in the defaults' places) or ``defaults``.

    Call it, and ``fit`` the trainer, inside one :func:`console`: the defaults depend on stdout being a
    terminal (EtaCallback), and the ``noether`` logger keeps the stdout it was set up with."""
    plan = plan_of(raw_config(args, variant != "none", total))
    assert bool(plan.all_entries) == (variant != "none")
    if variant == "stand-ins":
        plan.default_entries = stand_ins(plan.default_entries)  # type: ignore[misc]
    return cli_trainer(plan, output_dir, variant)


def run_once(args: argparse.Namespace, variant: str, output_dir: Path) -> Trainer:
    """One whole run of ``variant`` on its own (for the per-plugin accounting); the finished trainer."""
    with console(args.terminal):
        trainer = build_trainer(args, variant, output_dir, args.warmup + args.updates)
        status = trainer.fit()
    assert status == "completed", status
    return trainer


def per_plugin_us(trainer: Trainer) -> dict[str, float]:
    """Each entry's own time in the per-update events and ``at_eval``, in µs per update."""
    out: dict[str, float] = {}
    updates = trainer.counter.update
    for slot, hook, seconds, _ in trainer.plugins.durations():
        if hook in ("before_training", "after_training"):
            continue
        out[slot.key] = out.get(slot.key, 0.0) + seconds * 1e6 / updates
    return out


def run_variants(args: argparse.Namespace, output_dir: Path) -> dict[str, list[float]]:
    """Seconds per update of every timed block, per variant, the variants' trainers interleaved
    (:func:`~benchmarks.interleave.run_interleaved`)."""
    timers = run_interleaved(
        [noether_candidate(functools.partial(build_trainer, args, v, output_dir), v) for v in VARIANTS],
        block=args.block,
        turn=args.turn,
        blocks=args.blocks,
        warmup_blocks=args.warmup_blocks,
        inner=args.clock,
        terminal=args.terminal,
    )
    return {v: t.seconds(args.clock) for v, t in zip(VARIANTS, timers, strict=True)}


def run_rounds(args: argparse.Namespace) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Per-update seconds of each variant's timed blocks, and per-plugin µs of the breakdown runs."""
    plugins: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="noether-bench-") as tmp:
        out = Path(tmp)
        gc.collect()
        times = run_variants(args, out)
        for _ in range(args.breakdown_runs):
            gc.collect()
            plugins.append(per_plugin_us(run_once(args, "defaults", out)))
    return times, plugins


def _spread(values: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return f"{statistics.median(values):8.1f}   [{q1:7.1f} .. {q3:7.1f}]"


def _head(bare: list[float]) -> None:
    """The environment line and the table's first row, the trainer without plugins (µs per update)."""
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{datetime.date.today().isoformat()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        "median [quartiles] over blocks"
    )
    print()
    print(f"  {'':40}{'median':>8}   {'[q1 .. q3]':>18}")
    print(f"  {'no plugins, µs/update':40}{_spread(bare)}")


def report(args: argparse.Namespace, times: dict[str, list[float]], plugins: list[dict[str, float]]) -> float:
    us = {v: [t * 1e6 for t in ts] for v, ts in times.items()}
    bare, dummies, full = us["none"], us["stand-ins"], us["defaults"]
    overhead = [f - b for b, f in zip(bare, full, strict=True)]
    dispatch = [d - b for b, d in zip(bare, dummies, strict=True)]
    work = [f - d for d, f in zip(dummies, full, strict=True)]
    ratio = [f / b for b, f in zip(bare, full, strict=True)]
    median_overhead = statistics.median(overhead)
    log_every, track_every = intervals(args)
    mode = "terminal (live bar, Eta)" if args.terminal else "no terminal (progress lines)"
    print()
    print(
        f"noether Trainer with no plugins vs all default plugins: Linear({FEATURES}->{FEATURES}), "
        f"batch {args.batch_size}, MSE, AdamW + cosine LR, cpu, 1 thread"
    )
    print(
        f"log every {log_every} updates, track every {track_every}; stdout: {mode}; "
        f"{args.blocks} timed blocks of {args.block} updates after {args.warmup_blocks} warm-up block(s), "
        f"the three trainers taking turns every {args.turn} update(s); "
        f"{'thread CPU time' if args.clock == 'cpu' else 'wall time'}"
    )
    _head(bare)
    print(f"  {'no-op stand-ins, µs/update':40}{_spread(dummies)}")
    print(f"  {'default plugins, µs/update':40}{_spread(full)}")
    print(f"  {'overhead of the defaults, µs/update':40}{_spread(overhead)}")
    print(f"  {'  trainer dispatch (stand-ins - none)':40}{_spread(dispatch)}")
    label = "  plugins' work (defaults - stand-ins)"
    print(f"  {label:40}{_spread(work)}")
    mean_overhead = statistics.fmean(full) - statistics.fmean(bare)
    print(f"  {'overhead, mean over all blocks':40}{mean_overhead:8.1f}")
    print(f"  {'ratio defaults / none':40}{statistics.median(ratio):8.3f}")
    print()
    print(
        f"  plugins' own time (wall, median of {len(plugins)} extra runs; each call includes one clock read):"
    )
    keys = list(plugins[0]) if plugins else []
    for key in sorted(keys, key=lambda k: -statistics.median(p.get(k, 0.0) for p in plugins)):
        print(f"    {key:38}{statistics.median(p.get(key, 0.0) for p in plugins):8.2f} µs/update")
    own = statistics.median(sum(p.values()) for p in plugins) if plugins else 0.0
    print(f"    {'all':38}{own:8.2f} µs/update")
    verdict = "within" if median_overhead <= TARGET_US else "OVER"
    print(f"\n  target: overhead <= {TARGET_US:.0f} µs/update -> {verdict} ({median_overhead:.1f} µs)")
    return median_overhead


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--updates", type=int, default=4000, help="timed updates per variant (default 4000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed updates before them (default 200)")
    p.add_argument(
        "--block",
        type=int,
        default=None,
        help="updates per block, the unit of the statistics (default: a multiple of both intervals, "
        "at least 50)",
    )
    p.add_argument(
        "--turn",
        type=int,
        default=10,
        help="updates a trainer runs before it hands over to the next (default 10)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dataset-size", type=int, default=4096, help="samples; an epoch is size/batch updates")
    p.add_argument(
        "--log-every", type=int, default=None, help="log_every_n_updates (default: 1/100 of the run)"
    )
    p.add_argument("--track-every", type=int, default=None, help="track_every_n_updates (default: 1/500)")
    p.add_argument(
        "--run-length",
        type=int,
        default=20_000,
        help="the run whose default intervals to use (default 20000: log U200, track U40)",
    )
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this thread's CPU time (steady on a shared machine; the default); wall: perf_counter",
    )
    p.add_argument("--terminal", action="store_true", help="stdout and stderr claim to be a TTY")
    p.add_argument("--breakdown-runs", type=int, default=3, help="extra runs for the per-plugin table (3)")
    p.add_argument(
        "--check", action="store_true", help=f"exit 1 when the overhead is over {TARGET_US:.0f} µs"
    )
    args = p.parse_args(argv)
    if args.updates < 1 or args.warmup < 0 or (args.block is not None and args.block < 1):
        p.error("--updates and --block must be >= 1, --warmup >= 0")
    if args.block is None:
        # each block then holds the same ticks (log and track) as every other
        both = math.lcm(*intervals(args))
        args.block = both * math.ceil(50 / both)
    args.blocks = max(args.updates // args.block, 1)
    args.warmup_blocks = math.ceil(args.warmup / args.block)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    times, plugins = run_rounds(args)
    overhead = report(args, times, plugins)
    return 1 if args.check and overhead > TARGET_US else 0


if __name__ == "__main__":
    sys.exit(main())
