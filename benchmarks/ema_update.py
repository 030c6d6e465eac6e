"""What EmaCallback's per-update average costs, next to the memory-bandwidth bound and to PyTorch's
``AveragedModel``.

For each model size (about 1M, 10M and 50M float32 parameters, in a stack of MLP blocks with layer norms,
so the parameters come as many tensors of mixed sizes, as in real models) it times:

* ``EmaCallback``: its ``after_update`` hook, as the trainer calls it (one factor, 0.999): one fused
  ``torch._foreach_lerp_`` over all parameters;
* ``bound``: ``a.add_(b)`` over one flat tensor of the same number of elements: the same bytes moved (read
  the average and the parameter, write the average), with no per-tensor overhead: the memory-bandwidth
  bound of the update;
* at 1M also ``AveragedModel.update_parameters`` with ``multi_avg_fn=get_ema_multi_avg_fn(0.999)`` (the
  fused form PyTorch documents for EMA) and with ``avg_fn=get_ema_avg_fn(0.999)`` (one tensor at a time).

Rounds alternate the order of the candidates; each number is the median over rounds of the mean time per
call within a round. Targets: at 10M and 50M at least 85% of the bound; at 1M at least 3x faster than
AveragedModel (the fused form). The clock is this thread's CPU time by default, with one math thread, so
time other processes hold the CPU is not counted on a shared machine (their use of memory bandwidth
still is); ``--clock wall --threads N`` measures wall time with N threads.

    python benchmarks/ema_update.py                   # the table
    python benchmarks/ema_update.py --rounds 15
    python benchmarks/ema_update.py --clock wall --threads 2
    python benchmarks/ema_update.py --check           # exit 1 when a target is missed
    python benchmarks/ema_update.py --breakdown       # the 1M update taken apart
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from noether_plugins.ema import EmaCallback

FACTOR = 0.999
#: name -> (width, blocks): each block is Linear(w, 4w), Linear(4w, w) and a LayerNorm(w), 6 tensors
SIZES = {"1M": (128, 8), "10M": (256, 19), "50M": (512, 24)}


def blocks(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.LayerNorm(width)]
    return nn.Sequential(*layers)


def ema_update(model: nn.Module) -> Callable[[], None]:
    """EmaCallback's ``after_update`` on ``model``, set up through its ``before_training`` hook."""
    config = EmaCallback.Config(kind="EmaCallback", every_n_updates=1, target_factors=[FACTOR])
    ema = EmaCallback(config)
    trainer: Any = SimpleNamespace(
        plugins=SimpleNamespace(children_of=lambda _: []),
        children=lambda _: [],
        model_name="model",
        named_models=lambda: [("model", model)],
        resumed_from=None,
    )
    with torch.no_grad():
        ema.before_training(trainer=trainer, model=model, counter=SimpleNamespace(update=0), config=config)

    def step() -> None:
        ema.after_update(trainer=trainer, losses={}, times={}, grad_norm=None)

    return step


def averaged_model(model: nn.Module, fused: bool) -> Callable[[], None]:
    if fused:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(FACTOR))
    else:
        averaged = AveragedModel(model, avg_fn=get_ema_avg_fn(FACTOR))
    averaged.update_parameters(model)  # the first call copies; later ones average
    return lambda: averaged.update_parameters(model)


def bound(numel: int) -> Callable[[], None]:
    a = torch.randn(numel)
    b = torch.randn(numel)
    return lambda: a.add_(b)


#: Below this many elements a tensor counts as small in ``--breakdown`` (biases, layer-norm weights).
SMALL = 4096


def breakdown_candidates(model: nn.Module) -> dict[str, Callable[[], None]]:
    """What the update at 1M is made of, each on copies of ``model``'s parameters: the bound, one
    ``lerp_`` over flat buffers of all elements, the callback's fused call over every tensor, the same
    over the large tensors only, and the small tensors gathered with one ``torch.cat`` and averaged with
    one ``lerp_`` before the large ones' fused call (a CPU path tried and not kept)."""
    lives = [p.detach() for p in model.parameters()]
    shadows = [p.clone() for p in lives]
    numel = sum(p.numel() for p in lives)
    flat_live = torch.cat([p.flatten() for p in lives])
    flat_shadow = flat_live.clone()
    large = [(s, p) for s, p in zip(shadows, lives, strict=True) if p.numel() >= SMALL]
    large_shadows, large_lives = [s for s, _ in large], [p for _, p in large]
    small_lives = [p.view(-1) for p in lives if p.numel() < SMALL]
    small_shadow = torch.cat(small_lives)
    gathered = torch.empty_like(small_shadow)
    weight = 1.0 - FACTOR

    def gather() -> None:
        torch.cat(small_lives, out=gathered)
        small_shadow.lerp_(gathered, weight)
        torch._foreach_lerp_(large_shadows, large_lives, weight)

    return {
        "bound (add_, flat)": bound(numel),
        "lerp_, flat": lambda: flat_shadow.lerp_(flat_live, weight),
        f"_foreach_lerp_, all {len(lives)} tensors": lambda: torch._foreach_lerp_(shadows, lives, weight),
        f"_foreach_lerp_, the {len(large)} large only": lambda: torch._foreach_lerp_(
            large_shadows, large_lives, weight
        ),
        f"{len(small_lives)} small gathered + the large": gather,
    }


CLOCK: Callable[[], float] = time.thread_time


def time_calls(fn: Callable[[], None], calls: int) -> float:
    """Mean seconds per call over ``calls`` calls."""
    start = CLOCK()
    for _ in range(calls):
        fn()
    return (CLOCK() - start) / calls


def measure(candidates: dict[str, Callable[[], None]], rounds: int, budget: float) -> dict[str, float]:
    """Median over rounds of the mean seconds per call, candidates in a rotating order."""
    with torch.no_grad():
        for fn in candidates.values():  # warm up, and size each candidate's calls to about ``budget``
            fn()
        calls = {name: max(1, int(budget / max(time_calls(fn, 3), 1e-7))) for name, fn in candidates.items()}
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        names = list(candidates)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                gc.collect()
                samples[name].append(time_calls(candidates[name], calls[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def breakdown(args: argparse.Namespace) -> int:
    width, depth = SIZES["1M"]
    result = measure(breakdown_candidates(blocks(width, depth)), args.rounds, args.budget)
    floor = next(iter(result.values()))
    print(f"1M, per call (small: fewer than {SMALL} elements):")
    for name, seconds in result.items():
        print(f"  {name:<40} {seconds * 1e6:>8.1f} µs  {floor / seconds:>5.0%} of the bound")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per candidate per round")
    parser.add_argument("--threads", type=int, default=1, help="torch math threads (1)")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="this thread's CPU time, or wall"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--breakdown", action="store_true", help="only the 1M model's update taken apart (see the docs)"
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu counts this thread only: use --threads 1, or --clock wall")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), float32, factor {FACTOR}, CPU, clock: "
        + ("thread CPU time" if args.clock == "cpu" else "wall time")
    )
    print()
    if args.breakdown:
        return breakdown(args)
    header = (
        f"{'size':>5} {'params':>11} {'tensors':>7}  {'EmaCallback':>12} {'bound':>10}  {'of bound':>8}  "
        f"{'GB/s':>6}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    one_m: tuple[nn.Module, float] | None = None
    for label, (width, depth) in SIZES.items():
        model = blocks(width, depth)
        numel = sum(p.numel() for p in model.parameters())
        tensors = sum(1 for _ in model.parameters())
        result = measure({"ema": ema_update(model), "bound": bound(numel)}, args.rounds, args.budget)
        share = result["bound"] / result["ema"]
        gbps = 3 * 4 * numel / result["ema"] / 1e9
        print(
            f"{label:>5} {numel:>11,} {tensors:>7}  {result['ema'] * 1e3:>9.3f} ms "
            f"{result['bound'] * 1e3:>7.3f} ms  {share:>8.0%}  {gbps:>6.1f}"
        )
        if label != "1M":
            ok &= share >= 0.85
        else:
            one_m = (model, result["ema"])
    assert one_m is not None
    model, _ = one_m
    result = measure(
        {
            "ema": ema_update(model),
            "averaged_fused": averaged_model(model, fused=True),
            "averaged_per_tensor": averaged_model(model, fused=False),
        },
        args.rounds,
        args.budget,
    )
    print()
    print("at 1M, per call:")
    print(f"  {'EmaCallback.after_update':<48} {result['ema'] * 1e6:>9.1f} µs")
    for name, what in (
        ("averaged_fused", "AveragedModel, multi_avg_fn (fused foreach lerp)"),
        ("averaged_per_tensor", "AveragedModel, avg_fn (one tensor at a time)"),
    ):
        slower = result[name] / result["ema"]
        print(f"  {what:<48} {result[name] * 1e6:>9.1f} µs  ({slower:.1f}x EmaCallback's time)")
    ok &= result["averaged_fused"] / result["ema"] >= 3.0
    print()
    print(
        "targets: >= 85% of the bound at 10M and 50M; >= 3x AveragedModel (fused) at 1M: "
        + ("met" if ok else "NOT met")
    )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
