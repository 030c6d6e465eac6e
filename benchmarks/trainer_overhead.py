"""What the noether Trainer costs per update, next to a hand-written PyTorch loop doing the same work.

Both train a 32x32 ``nn.Linear`` with MSE on the same random regression data, batch 8, AdamW, one CPU
thread, for the same number of updates; the Trainer runs with no plugins (``add_default_callbacks:
false``, no ``callbacks``). The hand-written loop is what a user would write: a ``DataLoader`` with a
``RandomSampler``, ``.to(device)`` of both tensors, forward, MSE, ``backward``, ``optimizer.step()``,
``zero_grad(set_to_none=True)``. Issue #15's target: at most 20 µs of overhead per update with no
plugins (issue #3's was 30).

Each of ``--processes`` fresh processes runs ``--rounds`` rounds; a round times both loops, alternating
which goes first. Per-process state (heap layout, hash seeds) moves the result by several µs, so the
table pools the rounds of all processes: medians over rounds, and the overhead is the median of the
per-round differences. Two clocks: wall time, and this thread's CPU time, which does not count time the
thread waits for a core on a busy machine (everything runs in the one thread: one math thread, no
loader workers).

    python benchmarks/trainer_overhead.py                   # the table (3 processes x 5 rounds)
    python benchmarks/trainer_overhead.py --processes 5 --updates 5000
    python benchmarks/trainer_overhead.py --profile         # cProfile of the Trainer's timed updates
    python benchmarks/trainer_overhead.py --syncs           # host syncs per update made by noether code
    python benchmarks/trainer_overhead.py --check           # exit 1 when over the target

Only steady state is timed: the first ``--warmup`` updates of each run (first AdamW step, allocator,
kernel caches) and everything outside the loop (building the run, ``before_training``,
``after_training``) are left out. The clock starts once update ``warmup``'s batch is in hand and stops
when the loop ends, in both loops, so each window holds ``updates`` forward/backward/steps and
``updates - 1`` batch fetches (epoch restarts included). The Trainer's window is read by wrapping its
batch generator, which adds one generator hop (about 0.1 µs) per update to its side.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import datetime
import gc
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

if __package__ in (None, ""):  # run as a script: make `benchmarks.trainer_overhead` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from noether_core.config.loader import structure_config
from noether_core.io.paths import RunPaths
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.plan import RunPlan
from noether_core.run.trainer import Trainer

TARGET_US = 20.0
FEATURES = 32
LR = 1e-3
SEED = 0
DATASET_KIND = "benchmarks.trainer_overhead:make_dataset"

T = TypeVar("T")


class Timing(NamedTuple):
    """Seconds per update on the wall clock and in this thread's CPU time."""

    wall: float
    cpu: float


def make_dataset(size: int = 4096, features: int = FEATURES, seed: int = 0) -> TensorDataset:
    """Random regression data: ``x`` and ``y`` of shape ``(size, features)``, standard normal, fixed by
    ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, features, generator=gen)
    y = torch.randn(size, features, generator=gen)
    return TensorDataset(x, y)


class Window:
    """Start and stop of the timed updates, from update ``warmup``'s batch to the end of the loop, on two
    clocks: wall time, and the CPU time of this thread (which a busy shared machine disturbs less: time
    spent waiting for a core is not counted). A ``probe`` (a profiler, :class:`HostSyncCounter`) is
    active during the window only."""

    def __init__(
        self, warmup: int, device: torch.device, probe: contextlib.AbstractContextManager[Any] | None = None
    ) -> None:
        self.warmup = warmup
        self.probe = probe
        self.start = (0.0, 0.0)
        self.stop = (0.0, 0.0)
        # on CUDA the clock reads only after queued work is done; on CPU there is nothing to wait for
        self._sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        wall, cpu = time.perf_counter, time.thread_time
        with contextlib.ExitStack() as probing:
            for i, item in enumerate(items):
                if i == self.warmup:
                    self._sync()
                    self.start = (wall(), cpu())
                    if self.probe is not None:
                        probing.enter_context(self.probe)
                yield item
        self._sync()
        self.stop = (wall(), cpu())

    def per_update(self, updates: int) -> Timing:
        return Timing((self.stop[0] - self.start[0]) / updates, (self.stop[1] - self.start[1]) / updates)


class HostSyncCounter:
    """Counts tensor-to-host conversions (``.item()``, ``bool()``, ``float()``, ``.tolist()`` ...) made by
    noether's own code while active. On CUDA each one waits for the device, so the hot path should make
    none; on CPU they cost little, but they are counted all the same, so the check needs no GPU."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
    PACKAGES = (f"{os.sep}noether_core{os.sep}", f"{os.sep}noether_plugins{os.sep}")

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._saved: dict[str, Any] = {}

    def _counting(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        counts, packages = self.counts, self.PACKAGES

        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            path = caller.f_code.co_filename
            if any(p in path for p in packages):
                where = path[path.rindex(os.sep, 0, path.rindex(os.sep)) + 1 :]
                counts[f"{name} in {caller.f_code.co_name} ({where}:{caller.f_lineno})"] += 1
            return original(tensor, *args, **kwargs)

        return counted

    def __enter__(self) -> HostSyncCounter:
        for name in self.METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, saved in self._saved.items():
            if saved is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, saved)
        self._saved.clear()


# ---------------------------------------------------------------------------------------- the two loops


def raw_config(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "trainer": {
            "max_updates": args.warmup + args.updates,
            "batch_size": args.batch_size,
            "seed": SEED,
            "device": args.device,
            "num_threads": 1,
            "add_default_callbacks": False,
        },
        "model": {"kind": "linear", "kwargs": {"in_features": FEATURES, "out_features": FEATURES}},
        "optimizer": {"kind": "adamw", "lr": LR, "weight_decay": 0.0},
        "datasets": {
            "train": {"kind": DATASET_KIND, "kwargs": {"size": args.dataset_size, "features": FEATURES}},
        },
        "callbacks": [],
    }
    for key, value in args.set:
        *parents, leaf = key.split(".")
        section = raw
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = value
    return raw


def build_trainer(args: argparse.Namespace, output_dir: Path) -> Trainer:
    """The Trainer as ``noether train`` builds it, minus trackers and log files (as in the tests)."""
    registry = PluginRegistry.from_environment()
    plan = RunPlan(structure_config(raw_config(args), registry), registry)
    # plugins only when asked for with --set (e.g. trainer.add_default_callbacks=true)
    assert args.set or not plan.all_entries, "the benchmark measures the Trainer without plugins"
    return Trainer(plan, RunPaths.create(output_dir, "bench"))


def time_trainer(
    args: argparse.Namespace, probe: contextlib.AbstractContextManager[Any] | None = None
) -> Timing:
    """Seconds per update of ``trainer.fit()`` in steady state; ``probe`` is active during the window."""
    with tempfile.TemporaryDirectory(prefix="noether-bench-") as tmp:
        trainer = build_trainer(args, Path(tmp))
        window = Window(args.warmup, trainer.device, probe)
        time_batches(trainer, window.wrap)
        status = trainer.fit()
        assert status == "completed", status
        assert trainer.counter.update == args.warmup + args.updates
    return window.per_update(args.updates)


def time_handwritten(args: argparse.Namespace) -> Timing:
    """Seconds per update of the plain PyTorch loop doing the Trainer's work, in steady state."""
    torch.manual_seed(SEED)
    device = torch.device(args.device)
    dataset = make_dataset(args.dataset_size, FEATURES)
    model = nn.Linear(FEATURES, FEATURES).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True, pin_memory=device.type == "cuda"
    )
    window = Window(args.warmup, device)
    hand_written_updates(model, optimizer, window.wrap(cycled(loader, args.warmup + args.updates)), device)
    return window.per_update(args.updates)


def time_batches(trainer: Trainer, wrap: Callable[[Iterator[Any]], Iterator[Any]]) -> None:
    """Let ``trainer``'s training batches pass through ``wrap`` (a timer's) on their way to the loop."""
    batches = trainer._train_batches()
    inner = batches.updates
    batches.updates = lambda counter: wrap(inner(counter))  # type: ignore[method-assign]


def cycled(loader: Iterable[T], total: int) -> Iterator[T]:
    """``loader``'s batches, epoch after epoch, ``total`` of them."""
    done = 0
    while True:
        for batch in loader:
            yield batch
            done += 1
            if done == total:
                return


def hand_written_updates(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any], device: torch.device
) -> None:
    """The hand-written loop: for each ``(x, y)``, ``.to(device)``, forward, MSE, ``backward``,
    ``step``, ``zero_grad``."""
    model.train()
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- report


def run_rounds(args: argparse.Namespace) -> tuple[list[Timing], list[Timing]]:
    loops: list[tuple[str, Callable[[argparse.Namespace], Timing]]] = [
        ("hand", time_handwritten),
        ("trainer", time_trainer),
    ]
    results: dict[str, list[Timing]] = {"hand": [], "trainer": []}
    for _, fn in loops:  # one untimed run each: imports, first-use costs
        fn(argparse.Namespace(**{**vars(args), "updates": 50, "warmup": 10}))
    for r in range(args.rounds):
        order = loops if r % 2 == 0 else loops[::-1]
        for name, fn in order:
            gc.collect()
            results[name].append(fn(args))
        if args.verbose:
            h, t = results["hand"][-1], results["trainer"][-1]
            line = " | ".join(
                f"{clock} hand {getattr(h, clock) * 1e6:6.1f} trainer {getattr(t, clock) * 1e6:6.1f} "
                f"overhead {(getattr(t, clock) - getattr(h, clock)) * 1e6:5.1f}"
                for clock in ("wall", "cpu")
            )
            print(f"  round {r + 1:2}: {line}  (µs/update)", flush=True)
    return results["hand"], results["trainer"]


def _cell(values: list[float], fmt: str = "8.1f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}} ..{max(values):{fmt}}]"


def report(args: argparse.Namespace, hand: list[Timing], trainer: list[Timing]) -> dict[str, float]:
    """Print the table; return the median overhead in µs per update on each clock."""
    rows: dict[str, list[str]] = {
        "hand-written, µs/update": [],
        "noether Trainer, µs/update": [],
        "overhead, µs/update": [],
        "ratio Trainer / hand": [],
    }
    overheads: dict[str, float] = {}
    for clock in ("wall", "cpu"):
        h = [getattr(t, clock) * 1e6 for t in hand]
        t = [getattr(t, clock) * 1e6 for t in trainer]
        overhead = [b - a for a, b in zip(h, t, strict=True)]
        overheads[clock] = statistics.median(overhead)
        rows["hand-written, µs/update"].append(_cell(h))
        rows["noether Trainer, µs/update"].append(_cell(t))
        rows["overhead, µs/update"].append(_cell(overhead))
        rows["ratio Trainer / hand"].append(_cell([b / a for a, b in zip(h, t, strict=True)], "8.3f"))
    print()
    print(
        f"noether Trainer vs hand-written loop: Linear({FEATURES}->{FEATURES}), batch {args.batch_size}, "
        f"MSE, AdamW, {args.device}, 1 thread, no plugins"
    )
    print(
        f"{args.updates} timed updates after {args.warmup} warm-up; {args.processes} process(es) x "
        f"{args.rounds} rounds, each round both loops in alternating order"
    )
    print(f"median [min .. max] over the {len(hand)} rounds; overhead and ratio are paired per round")
    if args.set:
        changed = ", ".join(f"{k}={v}" for k, v in args.set)
        print(f"Trainer config changed with --set: {changed} (the hand-written loop does not follow)")
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{datetime.date.today().isoformat()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    width = 28
    cell = len(rows["overhead, µs/update"][0])
    print(f"  {'':{width}}  {'wall clock':^{cell}}  {'thread CPU time':^{cell}}")
    for label, cells in rows.items():
        print(f"  {label:{width}}  " + "  ".join(cells))
    print()
    for clock, value in overheads.items():
        verdict = "within" if value <= TARGET_US else "OVER"
        print(f"  target overhead <= {TARGET_US:.0f} µs/update, {clock:4}: {value:5.1f} µs -> {verdict}")
    return overheads


def profile(args: argparse.Namespace) -> None:
    """cProfile of the Trainer's timed updates, sorted by own time."""
    profiler = cProfile.Profile()
    time_trainer(args, profiler)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile_lines)
    print(f"cProfile of {args.updates} Trainer updates (the profiler inflates small functions):")
    print(out.getvalue())


def count_syncs(args: argparse.Namespace) -> int:
    """Print the tensor-to-host conversions noether code makes per timed update; return how many."""
    counter = HostSyncCounter()
    time_trainer(args, counter)
    total = sum(counter.counts.values())
    print(f"host syncs from noether code in {args.updates} Trainer updates: {total}")
    for where, n in counter.counts.most_common():
        print(f"  {n / args.updates:8.3f} per update  {where}")
    return total


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=2000, help="timed updates per run (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed updates before them (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per process (default 5)")
    p.add_argument("--processes", type=int, default=3, help="fresh processes, rounds pooled (default 3)")
    p.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)  # a child's rounds
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dataset-size", type=int, default=4096, help="samples; an epoch is size/batch updates")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--verbose", action="store_true", help="print every round")
    p.add_argument("--profile", action="store_true", help="profile one Trainer run instead of the table")
    p.add_argument("--profile-lines", type=int, default=30)
    p.add_argument(
        "--check", action="store_true", help=f"exit 1 when the median overhead is over {TARGET_US:.0f} µs"
    )
    p.add_argument(
        "--check-clock",
        choices=("wall", "cpu"),
        default="cpu",
        help="the clock --check reads (default cpu: steadier on a busy machine)",
    )
    p.add_argument(
        "--syncs",
        action="store_true",
        help="count the host syncs (.item(), bool(), ...) noether code makes per update instead of the table",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        type=_override,
        metavar="KEY=VALUE",
        help="change the Trainer's config, e.g. trainer.skip_nan_loss=true (the hand loop does not follow)",
    )
    args = p.parse_args(argv)
    if min(args.updates, args.rounds, args.processes) < 1 or args.warmup < 0:
        p.error("--updates, --rounds and --processes must be >= 1, --warmup >= 0")
    return args


def run_processes(args: argparse.Namespace, argv: list[str]) -> tuple[list[Timing], list[Timing]]:
    """The rounds of ``args.processes`` fresh processes of this script, pooled."""
    hand: list[Timing] = []
    trainer: list[Timing] = []
    for i in range(args.processes):
        child = [sys.executable, str(Path(__file__).resolve()), *argv, "--processes", "1", "--emit-json"]
        done = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True)
        rounds = json.loads(done.stdout.strip().splitlines()[-1])
        hand += [Timing(*r) for r in rounds["hand"]]
        trainer += [Timing(*r) for r in rounds["trainer"]]
        if args.verbose:
            h, t = rounds["hand"], rounds["trainer"]
            over = statistics.median((b[0] - a[0]) * 1e6 for a, b in zip(h, t, strict=True))
            print(f"process {i + 1}: median wall overhead {over:5.1f} µs/update", flush=True)
    return hand, trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.profile:
        profile(args)
        return 0
    if args.syncs:
        count_syncs(args)
        return 0
    if args.processes > 1:
        hand, trainer = run_processes(args, argv)
    else:
        hand, trainer = run_rounds(args)
    if args.emit_json:
        print(json.dumps({"hand": hand, "trainer": trainer}))
        return 0
    overheads = report(args, hand, trainer)
    return 1 if args.check and overheads[args.check_clock] > TARGET_US else 0


if __name__ == "__main__":
    sys.exit(main())
