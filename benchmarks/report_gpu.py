"""The report's GPU section (``python -m benchmarks`` where ``torch.cuda.is_available()``).

* host syncs per update made by noether code, counted with ``trainer_overhead.py``'s
  :class:`~benchmarks.trainer_overhead.HostSyncCounter` over the Trainer's timed updates on the tiny
  model: with no plugins (target: none) and with the defaults of a 20,000-update run, whose log and track
  ticks are the only updates allowed to sync;
* the step time of a ~50M-parameter MLP (2048 in and out, three hidden layers of 4096, batch 64): the
  hand-written loop (pinned ``DataLoader``, non-blocking copies) and noether without plugins, in
  alternating order over rounds, wall clock with a device synchronize at the window's ends;
* ``EmaCallback``'s update against the bandwidth bound (one ``add_`` over a flat tensor of as many
  elements), and an atomic checkpoint save against a raw write, with the ``ema_update.py`` and
  ``checkpoint_save.py`` candidates on device tensors.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from benchmarks import checkpoint_save, ema_update, trainer_overhead
from benchmarks.data_path import LR, SEED, Model, build_model_section, make_dataset
from benchmarks.interleave import console
from benchmarks.report import Setup, noether_config, noether_trainer
from benchmarks.trainer_overhead import HostSyncCounter, Window, cycled, hand_written_updates, time_batches

#: About 50M parameters: 2048 x 4096 + 2 x (4096 x 4096) + 4096 x 2048 weights.
BIG = Model(
    "MLP 2048 in/out, 3 hidden layers of 4096, batch 64",
    {"kind": "mlp", "kwargs": {"in_features": 2048, "out_features": 2048, "hidden": 4096, "depth": 3}},
    2048,
    64,
    1.0,
)
#: What ``--quick`` runs in BIG's place: a smoke run's numbers mean nothing, and on a CPU (``--gpu-device
#: cpu``) BIG takes seconds an update.
SMOKE = Model(
    "MLP 64 in/out, 3 hidden layers of 128, batch 64",
    {"kind": "mlp", "kwargs": {"in_features": 64, "out_features": 64, "hidden": 128, "depth": 3}},
    64,
    64,
    1.0,
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{device.type} (the GPU section's code run on the CPU: a check of the code, not a GPU figure)"


def sync_table(device: torch.device, updates: int) -> list[str]:
    """Host syncs by noether code per update, with no plugins and with the defaults (log U200/track U40)."""
    lines = [
        "| Trainer on the tiny model | host syncs in the timed updates | per update "
        "| log/track ticks in them |",
        "|---|---:|---:|---:|",
    ]
    configs = {
        "no plugins": [],
        "defaults (log U200, track U40)": [
            "--set",
            "trainer.add_default_callbacks=true",
            "--set",
            "trainer.log_every_n_updates=200",
            "--set",
            "trainer.track_every_n_updates=40",
        ],
    }
    where: list[str] = []
    for label, extra in configs.items():
        args = trainer_overhead.parse_args(
            ["--device", device.type, "--updates", str(updates), "--warmup", "40", *extra]
        )
        counter = HostSyncCounter()
        with console(terminal=False):
            trainer_overhead.time_trainer(args, counter)
        total = sum(counter.counts.values())
        first, last = args.warmup + 1, args.warmup + args.updates
        ticks = sum(1 for u in range(first, last + 1) if u % 40 == 0) if extra else 0
        lines.append(f"| {label} | {total} | {total / updates:.3f} | {ticks} |")
        where += [f"{label}: {n} x {at}" for at, n in counter.counts.most_common(3)]
    if where:
        lines += ["", "Where: " + "; ".join(where) + "."]
    return lines


def step_table(
    device: torch.device, model: Model, updates: int, rounds: int, dataset_size: int, warmup: int
) -> list[str]:
    """Seconds per update of ``model`` (BIG: ~50M parameters): the hand-written loop against noether, no
    plugins."""
    numel = sum(p.numel() for p in build_model_section(model).parameters())

    def hand() -> float:
        torch.manual_seed(SEED)
        net = build_model_section(model).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)
        dataset = make_dataset(dataset_size, model.features)
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))
        loader = DataLoader(
            dataset,
            batch_size=model.batch_size,
            sampler=sampler,
            drop_last=True,
            pin_memory=device.type == "cuda",
        )
        window = Window(warmup, device)
        hand_written_updates(net, optimizer, window.wrap(cycled(loader, warmup + updates)), device)
        return window.per_update(updates).wall

    def noether() -> float:
        with tempfile.TemporaryDirectory(prefix="noether-report-") as tmp:
            args = argparse.Namespace(device=device.type, dataset_size=dataset_size)
            setup = Setup(args, model, Path(tmp))
            with console(terminal=False):
                trainer = noether_trainer(setup, noether_config(setup, warmup + updates, "none"), "gpu")
                window = Window(warmup, trainer.device)
                time_batches(trainer, window.wrap)
                status = trainer.fit()
            assert status == "completed", status
        return window.per_update(updates).wall

    times: dict[str, list[float]] = {"hand-written loop": [], "noether, no plugins": []}
    loops: list[tuple[str, Callable[[], float]]] = [
        ("hand-written loop", hand),
        ("noether, no plugins", noether),
    ]
    for r in range(rounds):
        for label, fn in loops if r % 2 == 0 else loops[::-1]:
            times[label].append(fn() * 1e6)
    base = times["hand-written loop"]
    lines = [
        f"| MLP of {numel:,} parameters, batch {model.batch_size} | µs/update, wall "
        "| overhead, µs/update | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, values in times.items():
        over = [a - b for a, b in zip(values, base, strict=True)]
        ratio = [a / b for a, b in zip(values, base, strict=True)]
        lines.append(
            f"| {label} | {_cell(values, ',.0f')} | {_cell(over, '+,.1f')} | {_cell(ratio, '.3f')} |"
        )
    return lines


def _cell(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}..{max(values):{fmt}}]"


def _bound(numel: int, device: torch.device) -> Callable[[], None]:
    """``ema_update.bound`` on ``device``: the same bytes as the EMA update, in one flat tensor."""
    a = torch.randn(numel, device=device)
    b = torch.randn(numel, device=device)

    def bound() -> None:
        a.add_(b)

    return bound


def _timed(fn: Callable[[], None], device: torch.device, calls: int) -> float:
    cuda = device.type == "cuda"
    if cuda:  # the clock reads only after queued work is done
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def bandwidth_table(device: torch.device, sizes: list[str], rounds: int) -> list[str]:
    """EmaCallback against the bandwidth bound, and an atomic save against a raw write, on ``device``."""
    lines = [
        "| parameters | EmaCallback, ms | bound, ms | of the bound | EMA GB/s | atomic save, ms "
        "| raw write, ms | atomic / raw |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="noether-report-") as tmp:
        for label in sizes:
            width, depth = ema_update.SIZES[label]
            model = ema_update.blocks(width, depth).to(device)
            numel = sum(p.numel() for p in model.parameters())
            ema = ema_update.ema_update(model)
            candidates: dict[str, Callable[[], None]] = {"ema": ema, "bound": _bound(numel, device)}
            samples: dict[str, list[float]] = {name: [] for name in candidates}
            with torch.no_grad():
                for fn in candidates.values():
                    fn()
                for r in range(rounds):
                    names = list(candidates)
                    for name in names[r % 2 :] + names[: r % 2]:
                        samples[name].append(_timed(candidates[name], device, 20))
            ema_s = statistics.median(samples["ema"])
            bound_s = statistics.median(samples["bound"])
            save = checkpoint_save.measure(checkpoint_save.candidates(Path(tmp), model), rounds)
            atomic, raw = statistics.median(save["atomic"]), statistics.median(save["raw"])
            ratio = checkpoint_save.ratio_range(save, "atomic", "raw")[0]
            lines.append(
                f"| {numel:,} | {ema_s * 1e3:.3f} | {bound_s * 1e3:.3f} | {bound_s / ema_s:.0%} "
                f"| {3 * 4 * numel / ema_s / 1e9:.0f} | {atomic * 1e3:.1f} | {raw * 1e3:.1f} | {ratio:.2f}x |"
            )
            del model, ema, candidates
    return lines


def gpu_section(device: torch.device, quick: bool) -> list[str]:
    """The GPU tables, each with a heading line."""
    updates = 100 if quick else 2000
    rounds = 1 if quick else 5
    sizes = ["1M"] if quick else ["1M", "10M", "50M"]
    torch.set_num_threads(1)
    out = [
        f"**Host syncs per update** (`trainer_overhead.py --syncs`, {updates} updates on {device.type}):",
        "",
    ]
    out += sync_table(device, updates)
    out += ["", f"**Step overhead with a large model** ({rounds} round(s), alternating order):", ""]
    if quick:
        out += step_table(device, SMOKE, 10, rounds, 512, 2)
    else:
        out += step_table(device, BIG, 200, rounds, 4096, 20)
    out += ["", f"**EMA and checkpoint bandwidth** (median of {rounds} round(s)):", ""]
    out += bandwidth_table(device, sizes, rounds)
    return out
