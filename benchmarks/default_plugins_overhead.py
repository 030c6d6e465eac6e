"""What the default monitoring plugins cost per update: the Trainer with none, and with all of them.

Both runs train a 32x32 ``nn.Linear`` with MSE on random regression data, batch 8, AdamW with a cosine
LR schedule (so ``LrCallback`` has something to log), one CPU thread, for the same number of updates, as
``noether train`` sets a run up: the on-disk tracker writes ``metrics.jsonl`` and the ``noether``
logger writes its lines (to ``log.txt`` and to a stdout that goes to ``/dev/null`` here). One run has
``add_default_callbacks: false``, the other ``true`` with the trainer's default intervals (log every
1/100 of the run, track every 1/500: with the default 2,200 updates, U22 and U4). Rounds alternate
which goes first; the table shows medians over rounds, and the overhead is the median of the per-round
differences. Target: at most 30 µs per update for all defaults together. The clock is this thread's
CPU time by default (``--clock wall`` for wall time): on a shared machine it does not count the time
other processes hold the CPU, and the run is single-threaded (one math thread, no loader workers).

    python benchmarks/default_plugins_overhead.py                  # the table
    python benchmarks/default_plugins_overhead.py --rounds 11 --updates 5000
    python benchmarks/default_plugins_overhead.py --terminal       # as on a terminal: the live bar and Eta
    python benchmarks/default_plugins_overhead.py --log-every 100 --track-every 20
    python benchmarks/default_plugins_overhead.py --check          # exit 1 when over the target

Only steady state is timed: the first ``--warmup`` updates of each run and everything outside the loop
(building the run, ``before_training``, ``after_training``) are left out; the clock runs from update
``warmup``'s batch to the end of the loop, so scheduled ``at_eval`` calls and flushes are included.
The per-plugin rows come from extra runs (not the timed rounds): the trainer's per-entry accounting, made
to read thread CPU time, over all updates; they are each plugin's own time, not the dispatch around it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import TensorDataset

if __package__ in (None, ""):  # run as a script: make `benchmarks.default_plugins_overhead` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from noether_core import hookimpl, plugin_manager
from noether_core.config.loader import structure_config
from noether_core.metric_properties import MetricProperties
from noether_core.paths import RunPaths
from noether_core.registry import Plugin, PluginRegistry, PluginSource, inspect_plugin
from noether_core.trackers import DiskTracker
from noether_core.trainer import Trainer
from noether_core.training import build_entries, setup_logging

TARGET_US = 30.0
FEATURES = 32
SEED = 0
DATASET_KIND = "benchmarks.default_plugins_overhead:make_dataset"

T = TypeVar("T")


def make_dataset(size: int = 4096, features: int = FEATURES, seed: int = 0) -> TensorDataset:
    """Random regression data: ``x`` and ``y``, ``(size, features)`` standard normal, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(size, features, generator=gen), torch.randn(size, features, generator=gen)
    )


class _Terminal(io.TextIOWrapper):
    """``/dev/null`` that says it is a terminal (``--terminal``)."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def console(terminal: bool) -> Iterator[None]:
    """stdout and stderr to ``/dev/null`` for the run; with ``terminal``, ones that claim to be a TTY."""
    with open(os.devnull, "w", encoding="utf-8") as out, open(os.devnull, "w", encoding="utf-8") as err:
        streams: tuple[Any, Any] = (out, err)
        if terminal:
            streams = (
                _Terminal(open(os.devnull, "wb"), encoding="utf-8", line_buffering=True),  # noqa: SIM115
                _Terminal(open(os.devnull, "wb"), encoding="utf-8", line_buffering=True),  # noqa: SIM115
            )
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = streams
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            if terminal:
                for stream in streams:
                    stream.close()


class Window:
    """Start and stop times of the timed updates: from update ``warmup``'s batch to the end of the loop."""

    def __init__(self, warmup: int, clock: str) -> None:
        self.warmup = warmup
        self.clock = time.thread_time if clock == "cpu" else time.perf_counter
        self.start = 0.0
        self.stop = 0.0

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        clock = self.clock
        for i, item in enumerate(items):
            if i == self.warmup:
                self.start = clock()
            yield item
        self.stop = clock()

    def per_update(self, updates: int) -> float:
        return (self.stop - self.start) / updates


def raw_config(args: argparse.Namespace, defaults: bool) -> dict[str, Any]:
    trainer: dict[str, Any] = {
        "max_updates": args.warmup + args.updates,
        "batch_size": args.batch_size,
        "seed": SEED,
        "device": "cpu",
        "num_threads": 1,
        "add_default_callbacks": defaults,
    }
    if args.log_every is not None:
        trainer["log_every_n_updates"] = args.log_every
    if args.track_every is not None:
        trainer["track_every_n_updates"] = args.track_every
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


def _no_op_class(hooks: tuple[str, ...]) -> type:
    """A plugin class implementing ``hooks`` with empty bodies."""

    def init(self: Any, config: Any) -> None:
        self.config = config

    namespace: dict[str, Any] = {"__init__": init}
    for hook in hooks:

        def nothing(self: Any) -> None:
            pass

        nothing.__name__ = hook
        namespace[hook] = hookimpl(nothing)
    return type("NoOp", (), namespace)


def stand_ins(entries: list[tuple[Plugin, Any, bool]]) -> list[tuple[Plugin, Any, bool]]:
    """Each default entry with a plugin that implements the same hooks and does nothing: the trainer's
    dispatch cost for the same events, intervals and entry count, without the plugins' work (and with
    nothing logged, so no metric records are written)."""
    out = []
    for plugin, config, is_default in entries:
        source = PluginSource(f"{plugin.kind}-no-op", f"{__name__}:NoOp")
        out.append((inspect_plugin(source, _no_op_class(plugin.hooks)), config, is_default))
    return out


def run_once(args: argparse.Namespace, variant: str, output_dir: Path) -> tuple[float, Trainer]:
    """Seconds per update in steady state, and the finished trainer (for its per-plugin accounting).
    ``variant``: ``none`` (no plugins), ``stand-ins`` (no-op plugins in the defaults' places) or
    ``defaults``."""
    registry = PluginRegistry.from_environment()
    config = structure_config(raw_config(args, variant != "none"), registry)
    total = args.warmup + args.updates
    with console(args.terminal):  # the defaults depend on stdout being a terminal (EtaCallback)
        entries = build_entries(config, registry, total_updates=total)
        assert bool(entries) == (variant != "none")
        if variant == "stand-ins":
            entries = stand_ins(entries)
        paths = RunPaths.create(output_dir, f"{variant}-{time.monotonic_ns()}")
        setup_logging(paths)
        metrics = MetricProperties()
        tracker = DiskTracker(metrics)
        tracker.start(paths, {})
        trainer = Trainer(config, entries, paths, trackers=[tracker], metrics=metrics)
        window = Window(args.warmup, args.clock)
        updates = trainer._updates
        trainer._updates = lambda: window.wrap(updates())  # type: ignore[method-assign]
        status = trainer.fit()
    assert status == "completed", status
    return window.per_update(args.updates), trainer


def per_plugin_us(trainer: Trainer) -> dict[str, float]:
    """Each entry's own time in the per-update events and ``at_eval``, in µs per update."""
    out: dict[str, float] = {}
    updates = trainer.counter.update
    for slot, hook, seconds, _ in trainer.plugins.durations():
        if hook in ("before_training", "after_training"):
            continue
        out[slot.key] = out.get(slot.key, 0.0) + seconds * 1e6 / updates
    return out


@contextlib.contextmanager
def plugin_clock_in_cpu_time() -> Iterator[None]:
    """The trainer's per-entry accounting reads ``time.perf_counter`` in ``plugin_manager``; for the
    breakdown it reads this thread's CPU time instead, which other processes on the machine do not
    inflate. (A CPU-time read costs more, so the timed rounds keep the wall clock.)"""
    module: Any = plugin_manager
    saved = module.time
    module.time = types.SimpleNamespace(perf_counter=time.thread_time)
    try:
        yield
    finally:
        module.time = saved


def run_rounds(args: argparse.Namespace) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Per-update seconds of each variant's rounds, and per-plugin µs of the extra breakdown runs."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    plugins: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="noether-bench-") as tmp:
        out = Path(tmp)
        warm = argparse.Namespace(**{**vars(args), "updates": 50, "warmup": 10})
        for variant in VARIANTS:  # untimed: imports, first-use costs
            run_once(warm, variant, out)
        for r in range(args.rounds):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                gc.collect()
                times[variant].append(run_once(args, variant, out)[0])
            if args.verbose:
                line = "  ".join(f"{v} {times[v][-1] * 1e6:7.1f} µs" for v in VARIANTS)
                print(f"  round {r + 1}: {line}", flush=True)
        with plugin_clock_in_cpu_time():
            for _ in range(args.breakdown_runs):
                gc.collect()
                plugins.append(per_plugin_us(run_once(args, "defaults", out)[1]))
    return times, plugins


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f}   [{min(values):7.1f} .. {max(values):7.1f}]"


def report(args: argparse.Namespace, times: dict[str, list[float]], plugins: list[dict[str, float]]) -> float:
    us = {v: [t * 1e6 for t in ts] for v, ts in times.items()}
    bare, dummies, full = us["none"], us["stand-ins"], us["defaults"]
    overhead = [f - b for b, f in zip(bare, full, strict=True)]
    dispatch = [d - b for b, d in zip(bare, dummies, strict=True)]
    work = [f - d for d, f in zip(dummies, full, strict=True)]
    ratio = [f / b for b, f in zip(bare, full, strict=True)]
    median_overhead = statistics.median(overhead)
    total = args.warmup + args.updates
    log_every = args.log_every or max(total // 100, 1)
    track_every = args.track_every or max(total // 500, 1)
    mode = "terminal (live bar, Eta)" if args.terminal else "no terminal (progress lines)"
    print()
    print(
        f"noether Trainer with no plugins vs all default plugins: Linear({FEATURES}->{FEATURES}), "
        f"batch {args.batch_size}, MSE, AdamW + cosine LR, cpu, 1 thread"
    )
    print(
        f"log every {log_every} updates, track every {track_every}; stdout: {mode}; "
        f"{args.updates} timed updates after {args.warmup} warm-up, {args.rounds} rounds interleaved, "
        f"{'thread CPU time' if args.clock == 'cpu' else 'wall time'}"
    )
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{datetime.date.today().isoformat()}; median [min .. max] over rounds"
    )
    print()
    print(f"  {'':40}{'median':>8}   {'[min .. max]':>18}")
    print(f"  {'no plugins, µs/update':40}{_spread(bare)}")
    print(f"  {'no-op stand-ins, µs/update':40}{_spread(dummies)}")
    print(f"  {'default plugins, µs/update':40}{_spread(full)}")
    print(f"  {'overhead of the defaults, µs/update':40}{_spread(overhead)}")
    print(f"  {'  trainer dispatch (stand-ins - none)':40}{_spread(dispatch)}")
    label = "  plugins' work (defaults - stand-ins)"
    print(f"  {label:40}{_spread(work)}")
    print(f"  {'overhead of the fastest runs':40}{min(full) - min(bare):8.1f}   (min with - min without)")
    ratios = f"{statistics.median(ratio):8.3f}   [{min(ratio):7.3f} .. {max(ratio):7.3f}]"
    print(f"  {'ratio defaults / none':40}{ratios}")
    print()
    print(
        f"  plugins' own CPU time (median of {len(plugins)} extra runs; each call includes ~2 clock reads):"
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
    p.add_argument("--updates", type=int, default=2000, help="timed updates per run (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed updates before them (default 200)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dataset-size", type=int, default=4096, help="samples; an epoch is size/batch updates")
    p.add_argument(
        "--log-every", type=int, default=None, help="log_every_n_updates (default: 1/100 of the run)"
    )
    p.add_argument("--track-every", type=int, default=None, help="track_every_n_updates (default: 1/500)")
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this thread's CPU time (steady on a shared machine; the default); wall: perf_counter",
    )
    p.add_argument("--terminal", action="store_true", help="stdout and stderr claim to be a TTY")
    p.add_argument("--breakdown-runs", type=int, default=3, help="extra runs for the per-plugin table (3)")
    p.add_argument("--verbose", action="store_true", help="print every round")
    p.add_argument(
        "--check", action="store_true", help=f"exit 1 when the overhead is over {TARGET_US:.0f} µs"
    )
    args = p.parse_args(argv)
    if args.updates < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--updates and --rounds must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    times, plugins = run_rounds(args)
    overhead = report(args, times, plugins)
    return 1 if args.check and overhead > TARGET_US else 0


if __name__ == "__main__":
    sys.exit(main())
