"""The side-by-side report: every way of training the same model, interleaved in one process.

For each model (``tiny``: a 32x32 ``nn.Linear`` at batch 8; ``mlp``: the bundled MLP 256 wide at batch
32, about 1 ms per update on one core) the candidates below train on the same random regression data
(MSE, AdamW, one CPU thread), each in a thread of this process:

* the hand-written ``DataLoader`` loop and the pre-batched loop of :mod:`benchmarks.data_path`;
* noether without plugins; with its defaults at the intervals of a 2,000-update run (log U20, track
  U4) and of a 20,000-update run (log U200, track U40); with 20 and 100 no-op third-party plugins
  (:class:`NoOpPlugin`, each implementing ``after_update``); with a realistic set: the defaults of a
  20,000-update run, ``EmaCallback``, ``CheckpointCallback`` and ``OfflineLossCallback`` (a 512-sample
  validation set), the last three every 500 updates. noether runs as ``noether train`` sets a run up
  (on-disk tracker, log file);
* when ``lightning`` is importable, Lightning with the same model, data (the ``DataLoader`` of the
  hand-written loop) and optimizer: ``Trainer(barebones=True)``; the defaults (logger, checkpointing,
  progress bar as Lightning sets them, writing into a temporary directory); the defaults with
  ``self.log`` of the loss at every step.

How it is timed: by :mod:`benchmarks.interleave`'s runner, as in :mod:`benchmarks.data_path`. The
candidates take turns, ``--turn`` updates each; every update is timed on this thread's CPU time and on
wall time, added up per block of ``--block`` updates (1,000: every block of every candidate holds the
same log, track, checkpoint and evaluation ticks), and overheads and ratios are paired per block. Each
of ``--rounds`` rounds builds every candidate afresh, in an order rotated from the round before, and
leaves its first block out (warm-up). Work that a candidate hands to other threads (Lightning's
TensorBoard writer, tqdm's monitor) is in the wall clock only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import itertools
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from benchmarks import checkpoint_save, ema_update
from benchmarks.data_path import (
    DATASET_KIND,
    LR,
    MODELS,
    SEED,
    Model,
    build_model_section,
    hand_written,
    make_dataset,
    raw_config,
)
from benchmarks.interleave import (
    Blocks,
    Body,
    cli_trainer,
    load_average,
    plan_of,
    run_interleaved,
    timed_fit,
)
from benchmarks.trainer_overhead import Timing
from noether_core import CallbackConfig, hookimpl
from noether_core.run.trainer import Trainer

#: The report's models: ``tiny`` as in ``data_path.py``; ``mlp`` its MLP at batch 32 (about 1 ms/update).
REPORT_MODELS = {
    "tiny": MODELS["tiny"],
    "mlp": MODELS["mlp"]._replace(label="MLP 256 wide (2 hidden layers), batch 32", batch_size=32),
}
#: Intervals of the realistic set's EMA, checkpoints and offline evaluation.
EVERY = 500
VAL_SIZE = 512
HAND = "DataLoader loop"
FLOOR = "pre-batched loop"


class NoOpPlugin:
    """A third-party plugin (kind ``benchmarks.report:NoOpPlugin``) that does nothing after every update:
    what the trainer's dispatch costs per plugin."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        pass

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def after_update(self) -> None:
        pass


# ------------------------------------------------------------------------------------------- candidates


class Setup(NamedTuple):
    """What every candidate of one round shares."""

    args: argparse.Namespace
    model: Model
    output_dir: Path


Maker = Callable[[Setup, Blocks], Body]


def noether_config(setup: Setup, total: int, variant: str) -> dict[str, Any]:
    """The config of a noether candidate: ``data_path``'s, with the variant's plugins and intervals."""
    defaults = variant in ("short", "long", "realistic")
    raw = raw_config(setup.model, defaults=defaults, total=total, size=setup.args.dataset_size)
    raw["trainer"]["device"] = setup.args.device
    if defaults:
        log, track = (20, 4) if variant == "short" else (200, 40)
        raw["trainer"].update(log_every_n_updates=log, track_every_n_updates=track)
    if variant.startswith("noop"):
        kind = f"{__name__}:NoOpPlugin"
        raw["callbacks"] = [{"kind": kind, "name": f"noop{i}"} for i in range(int(variant[4:]))]
    if variant == "realistic":
        raw["datasets"]["val"] = {
            "kind": DATASET_KIND,
            "kwargs": {"size": VAL_SIZE, "features": setup.model.features, "seed": 1},
        }
        raw["callbacks"] = [
            {"kind": "EmaCallback", "target_factors": [0.999], "every_n_updates": EVERY},
            {"kind": "CheckpointCallback", "every_n_updates": EVERY, "keep_last_n": 1},
            {"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": EVERY},
        ]
    return raw


def noether_trainer(setup: Setup, raw: dict[str, Any], name: str) -> Trainer:
    """A Trainer set up as ``noether train`` sets a run up, for any config. Call it inside
    :func:`~benchmarks.interleave.console`."""
    return cli_trainer(plan_of(raw), setup.output_dir, name)


def noether(variant: str) -> Maker:
    def make(setup: Setup, timer: Blocks) -> Body:
        trainer = noether_trainer(setup, noether_config(setup, timer.updates, variant), variant)
        return timed_fit(trainer, timer, f"noether ({variant})")

    return make


def hand(pre_batched: bool) -> Maker:
    def make(setup: Setup, timer: Blocks) -> Body:
        return hand_written(setup.args, setup.model, pre_batched, timer)

    return make


def lightning_available() -> bool:
    try:
        import lightning.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


class _Timed:
    """The hand-written loop's ``DataLoader``, cycled, as one epoch of exactly the timer's updates.
    Lightning is given this iterable, not the ``DataLoader``, so it cannot replace the sampler."""

    def __init__(self, loader: DataLoader[Any], timer: Blocks) -> None:
        self.loader = loader
        self.timer = timer

    def __iter__(self) -> Iterator[Any]:
        return self.timer.wrap(itertools.chain.from_iterable(itertools.repeat(self.loader)))


def lightning(mode: str) -> Maker:
    """Lightning's ``Trainer`` on the hand-written loop's model, data and optimizer; ``mode``:
    ``barebones``, ``defaults`` or ``log`` (the defaults, with ``self.log`` of the loss every step)."""

    def make(setup: Setup, timer: Blocks) -> Body:
        import lightning.pytorch as pl

        log_every_step = mode == "log"

        class Module(pl.LightningModule):
            def __init__(self, net: torch.nn.Module) -> None:
                super().__init__()
                self.net = net

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                loss = F.mse_loss(self.net(x), y)
                if log_every_step:
                    self.log("loss", loss)
                return loss

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.0)

        torch.manual_seed(SEED)
        model = setup.model
        module = Module(build_model_section(model))
        dataset = make_dataset(setup.args.dataset_size, model.features)
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))
        loader = DataLoader(dataset, batch_size=model.batch_size, sampler=sampler, drop_last=True)
        options: dict[str, Any] = {"barebones": True}
        if mode != "barebones":
            # Lightning's default bar is rich's where rich is installed; its live display is global to the
            # process, and two of them (defaults, log) run side by side here: tqdm's, its other default
            options = {"callbacks": [pl.callbacks.TQDMProgressBar()]}
        root = setup.output_dir / f"lightning-{mode}-{time.monotonic_ns()}"
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=timer.updates, default_root_dir=root, **options
        )

        def fit() -> None:
            trainer.fit(module, train_dataloaders=_Timed(loader, timer))
            if trainer.global_step != timer.updates:
                raise RuntimeError(f"Lightning ({mode}) stopped at step {trainer.global_step}")

        return fit

    return make


NOETHER_ROWS = {
    "noether, no plugins": "none",
    "noether, defaults, 2,000-update run (log U20, track U4)": "short",
    "noether, defaults, 20,000-update run (log U200, track U40)": "long",
    "noether, 20 no-op plugins": "noop20",
    "noether, 100 no-op plugins": "noop100",
    "noether, realistic (defaults + EMA + checkpoints + offline eval)": "realistic",
}
LIGHTNING_ROWS = {
    "Lightning, Trainer(barebones=True)": "barebones",
    "Lightning, defaults": "defaults",
    "Lightning, defaults + self.log every step": "log",
}


def candidates(with_lightning: bool) -> dict[str, Maker]:
    out: dict[str, Maker] = {HAND: hand(False), FLOOR: hand(True)}
    out.update({label: noether(variant) for label, variant in NOETHER_ROWS.items()})
    if with_lightning:
        out.update({label: lightning(mode) for label, mode in LIGHTNING_ROWS.items()})
    return out


# -------------------------------------------------------------------------------------------- running


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's start-up messages and warnings (few workers, unsized iterable ...) go nowhere: its
    loggers print to the stderr they found at import, which :func:`~benchmarks.interleave.console`
    does not catch."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def run_round(
    setup: Setup, makers: dict[str, Maker], order: Sequence[str], blocks: int
) -> dict[str, list[Timing]]:
    """One round: every candidate built afresh, run in threads taking turns in ``order``; the timings of
    each candidate's blocks after the warm-up."""
    timers = run_interleaved(
        [functools.partial(makers[label], setup) for label in order],
        block=setup.args.block,
        turn=setup.args.turn,
        blocks=blocks,
        warmup_blocks=setup.args.warmup_blocks,
    )
    return {label: timer.timings() for label, timer in zip(order, timers, strict=True)}


class ModelResult(NamedTuple):
    name: str
    model: Model
    timings: dict[str, list[Timing]]
    blocks: int
    load_before: str
    load_after: str


def run_model(
    args: argparse.Namespace, name: str, makers: dict[str, Maker], log: Callable[[str], None]
) -> ModelResult:
    model = REPORT_MODELS[name]
    blocks = max(1, round(args.blocks * model.update_share))
    labels = list(makers)
    pooled: dict[str, list[Timing]] = {label: [] for label in labels}
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="noether-report-") as tmp:
        for r in range(args.rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            gc.collect()
            started = time.perf_counter()
            for label, timings in run_round(Setup(args, model, Path(tmp)), makers, order, blocks).items():
                pooled[label] += timings
            log(f"  {name}: round {r + 1}/{args.rounds} in {time.perf_counter() - started:.0f} s")
    return ModelResult(name, model, pooled, blocks * args.rounds, load_before, load_average())


# ------------------------------------------------------------------------------------------ the tables


def cell(values: Sequence[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}..{max(values):{fmt}}]"


def overhead_table(result: ModelResult) -> list[str]:
    """The markdown table of one model: every candidate against the hand-written DataLoader loop."""
    us = {
        label: ([t.cpu * 1e6 for t in ts], [t.wall * 1e6 for t in ts]) for label, ts in result.timings.items()
    }
    hand_cpu, hand_wall = us[HAND]
    floor_cpu = us[FLOOR][0]
    lines = [
        "| variant | CPU µs/update | wall µs/update | overhead over the DataLoader loop, CPU µs/update "
        "| ratio, CPU | ratio, wall | / pre-batched loop, CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (cpu, wall) in us.items():
        over = [a - b for a, b in zip(cpu, hand_cpu, strict=True)]
        ratio = [a / b for a, b in zip(cpu, hand_cpu, strict=True)]
        ratio_wall = [a / b for a, b in zip(wall, hand_wall, strict=True)]
        vs_floor = [a / b for a, b in zip(cpu, floor_cpu, strict=True)]
        lines.append(
            f"| {label} | {cell(cpu)} | {cell(wall)} | {cell(over, '+,.0f')} | {cell(ratio, '.2f')} "
            f"| {cell(ratio_wall, '.2f')} | {cell(vs_floor, '.2f')} |"
        )
    return lines


def headline(result: ModelResult) -> dict[str, tuple[float, float]]:
    """Median CPU overhead (µs/update) and ratio over the DataLoader loop, per candidate."""
    hand_cpu = [t.cpu for t in result.timings[HAND]]
    out = {}
    for label, ts in result.timings.items():
        cpu = [t.cpu for t in ts]
        out[label] = (
            statistics.median((a - b) * 1e6 for a, b in zip(cpu, hand_cpu, strict=True)),
            statistics.median(a / b for a, b in zip(cpu, hand_cpu, strict=True)),
        )
    return out


def environment() -> str:
    return (
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}"
    )


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------ EMA and checkpoint tables (CPU)


def ema_table(sizes: Sequence[str], rounds: int, budget: float) -> list[str]:
    """``EmaCallback``'s update against the memory-bandwidth bound (:mod:`benchmarks.ema_update`)."""
    lines = [
        "| parameters | tensors | EmaCallback, ms | bound, ms | of the bound | GB/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for label in sizes:
        width, depth = ema_update.SIZES[label]
        model = ema_update.blocks(width, depth)
        numel = sum(p.numel() for p in model.parameters())
        tensors = sum(1 for _ in model.parameters())
        result = ema_update.measure(
            {"ema": ema_update.ema_update(model), "bound": ema_update.bound(numel)}, rounds, budget
        )
        gbps = 3 * 4 * numel / result["ema"] / 1e9  # read average and parameter, write average
        lines.append(
            f"| {numel:,} | {tensors} | {result['ema'] * 1e3:.3f} | {result['bound'] * 1e3:.3f} "
            f"| {result['bound'] / result['ema']:.0%} | {gbps:.1f} |"
        )
        del model
        gc.collect()
    return lines


def checkpoint_table(sizes: Sequence[str], rounds: int) -> list[str]:
    """An atomic save, one file and a set of four, against raw writes (:mod:`benchmarks.checkpoint_save`)."""
    lines = [
        "| parameters | file | atomic, ms | raw write, ms | atomic / raw [min .. max] "
        "| atomic set / raw set [min .. max] |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="noether-report-") as tmp:
        directory = Path(tmp)
        for label in sizes:
            width, depth = ema_update.SIZES[label]
            model = ema_update.blocks(width, depth)
            numel = sum(p.numel() for p in model.parameters())
            samples = checkpoint_save.measure(checkpoint_save.candidates(directory, model), rounds)
            size = (directory / "raw.th").stat().st_size
            one = checkpoint_save.ratio_range(samples, "atomic", "raw")
            many = checkpoint_save.ratio_range(samples, "atomic set", "raw set")
            lines.append(
                f"| {numel:,} | {size / 1e6:.1f} MB | {statistics.median(samples['atomic']) * 1e3:.1f} "
                f"| {statistics.median(samples['raw']) * 1e3:.1f} "
                f"| {one[0]:.2f}x [{one[1]:.2f} .. {one[2]:.2f}] "
                f"| {many[0]:.2f}x [{many[1]:.2f} .. {many[2]:.2f}] |"
            )
            del model
            gc.collect()
        filesystem = checkpoint_save.filesystem(directory)
    lines.append("")
    lines.append(f"Written to a temporary directory on {filesystem}; wall time, each save with its fsyncs.")
    return lines
