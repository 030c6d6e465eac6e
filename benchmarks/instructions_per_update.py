"""Instructions per update of a noether run, counted by valgrind's callgrind: exact and repeatable on a
busy machine, where timings of a few µs drown in the noise.

It trains the tiny model of ``trainer_overhead.py`` (32x32 linear, batch 8, AdamW, one thread) through
``noether train`` in a subprocess under callgrind, once for each of two lengths, and divides the
difference in instructions by the difference in updates, so start-up and imports cancel out.
``--vs DIR`` counts a second checkout of the project the same way (a ``git worktree`` of an older
commit, say) and prints the two side by side::

    python benchmarks/instructions_per_update.py                         # no plugins
    python benchmarks/instructions_per_update.py --variant defaults      # defaults, log U100, track U20
    python benchmarks/instructions_per_update.py --variant defaults --log-every 20 --track-every 4
    python benchmarks/instructions_per_update.py --variant noop --plugins 100   # 100 no-op plugins
    git worktree add /tmp/before HEAD~5
    python benchmarks/instructions_per_update.py --vs /tmp/before

Each callgrind run takes minutes (python and torch start 50 times slower under it); the runs of one
table go two at a time. Needs ``valgrind`` on the PATH. ``PYTHONHASHSEED=0`` is set, since dictionary
layouts move the count by a few thousand instructions per update.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def no_op_plugin() -> type:
    """A third-party plugin class that does nothing (``after_update``, ``at_eval``; its ``Config`` takes
    ``every_n_updates``), ``noop_plugins_overhead.py``'s too. Made on call, from the ``noether_core``
    then importable: in a child that is the counted checkout's, which this module must not import
    before its path is set."""
    from noether_core import CallbackConfig, hookimpl

    class NoOp:
        Config = CallbackConfig

        def __init__(self, config: CallbackConfig) -> None:
            self.config = config

        @hookimpl
        def after_update(self) -> None:
            pass

        @hookimpl
        def at_eval(self) -> None:
            pass

    return NoOp


def _no_op_kind() -> str:
    """:func:`no_op_plugin` as an importable kind (a module made here: the checkout counted need not
    have ``benchmarks/noop_plugins_overhead.py``)."""
    import types

    module = types.ModuleType("noether_bench_noop")
    module.NoOp = no_op_plugin()  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    return f"{module.__name__}:NoOp"


def child(tree: str, updates: int, variant: str, log_every: int, track_every: int, plugins: int) -> None:
    """Train ``updates`` updates with the code of the checkout ``tree`` (run under callgrind)."""
    sys.path.insert(0, tree)
    import yaml

    from noether_core.cli import main

    callbacks = []
    if variant == "noop":
        kind = _no_op_kind()
        callbacks = [{"kind": kind, "name": f"noop{i}", "every_n_updates": 10} for i in range(plugins)]
    raw = {
        "trainer": {
            "max_updates": updates,
            "batch_size": 8,
            "seed": 0,
            "num_threads": 1,
            "add_default_callbacks": variant == "defaults",
            "log_every_n_updates": log_every,
            "track_every_n_updates": track_every,
        },
        "model": {"kind": "linear", "kwargs": {"in_features": 32, "out_features": 32}},
        "optimizer": {"kind": "adamw", "lr": 1e-3},
        "datasets": {"train": {"kind": "benchmarks.trainer_overhead:make_dataset"}},
        "callbacks": callbacks,
    }
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "run.yaml"
        config.write_text(yaml.safe_dump(raw))
        with open(os.devnull, "w") as quiet:
            sys.stdout = quiet
            status = main(["train", str(config), "--output-dir", tmp, "--run-id", "r"])
            sys.stdout = sys.__stdout__
    if status != 0:
        raise SystemExit(f"noether train exited with {status}")


def count(tree: Path, updates: int, variant: str, extra: list[str]) -> int:
    """Instructions callgrind counts for a whole process that trains ``updates`` updates."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(tree),
        str(updates),
        variant,
        *extra,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False, cwd=tree)
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed ({' '.join(command)}):\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=["none", "defaults", "noop"], default="none")
    parser.add_argument("--log-every", type=int, default=100, help="defaults' log interval (100)")
    parser.add_argument("--track-every", type=int, default=20, help="defaults' track interval (20)")
    parser.add_argument("--plugins", type=int, default=20, help="no-op plugins of --variant noop (20)")
    parser.add_argument("--updates", type=int, nargs=2, default=[100, 600], metavar=("SHORT", "LONG"))
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to count (this one)")
    parser.add_argument("--vs", type=Path, default=None, help="a second checkout, counted the same way")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tree, updates, variant, log_every, track_every, plugins = args.child
        child(tree, int(updates), variant, int(log_every), int(track_every), int(plugins))
        return
    trees = [args.tree.resolve()] + ([args.vs.resolve()] if args.vs else [])
    short, long = args.updates
    jobs = [(tree, n) for tree in trees for n in (short, long)]
    extra = [str(args.log_every), str(args.track_every), str(args.plugins)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(
            zip(jobs, pool.map(lambda job: count(job[0], job[1], args.variant, extra), jobs), strict=True)
        )
    what = {
        "none": "no plugins",
        "defaults": f"default plugins (log U{args.log_every}, track U{args.track_every})",
        "noop": f"{args.plugins} no-op plugins (at_eval U10)",
    }[args.variant]
    print(f"instructions per update, {what}, from runs of {short} and {long} updates")
    per_update = {}
    for tree in trees:
        per_update[tree] = (counts[(tree, long)] - counts[(tree, short)]) / (long - short)
        print(f"  {tree!s:<40} {per_update[tree]:>14,.0f}")
    if args.vs:
        print(f"  ratio {trees[0].name} / {trees[1].name}: {per_update[trees[0]] / per_update[trees[1]]:.4f}")


if __name__ == "__main__":
    main()
