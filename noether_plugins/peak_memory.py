"""``PeakMemoryCallback``: peak memory use, in GiB (2**30 bytes), as metrics.

When its interval is due it logs

* ``peak_memory/rss_gib``: the process's peak resident set size since it started (``getrusage``; the
  operating system does not reset it, so it never decreases), on every device; and
* ``peak_memory/cuda_gib``: on a CUDA device (``cuda``, ``cuda:1``, ...), the peak memory allocated by
  tensors on the run's device since the previous log (``torch.cuda.max_memory_allocated``, whose peak is
  reset after each reading).

Distributed, each is the maximum over ranks. Where ``resource`` is unavailable (Windows) the RSS key is
left out. The trainer adds it on the log interval.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from noether_core import EvalInterval, Run

GIB = float(2**30)


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process in bytes, ``None`` where the platform cannot tell."""
    try:
        import resource
    except ImportError:
        return None
    # RUSAGE_THREAD (Linux) reports the same process-wide peak (the address space's high-water mark)
    # without what RUSAGE_SELF adds up first: every thread's CPU time, which takes milliseconds of
    # wall time in a process whose threads are running on other cores
    who = resource.RUSAGE_SELF
    if sys.platform == "linux":
        who = getattr(resource, "RUSAGE_THREAD", who)
    peak = resource.getrusage(who).ru_maxrss
    # Linux reports KiB, macOS bytes
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class PeakMemoryCallback:
    """Logs ``peak_memory/rss_gib`` and, on CUDA, ``peak_memory/cuda_gib``."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """``peak_memory/rss_gib`` and, on a GPU, ``peak_memory/cuda_gib``."""
        return ["peak_memory/*"]

    @hookimpl
    def at_eval(self, trainer: Run, interval: EvalInterval) -> None:
        if interval == "eval":
            return
        values: dict[str, float] = {}
        device = trainer.device
        if device.type == "cuda":
            values["peak_memory/cuda_gib"] = torch.cuda.max_memory_allocated(device) / GIB
            torch.cuda.reset_peak_memory_stats(device)
        rss = peak_rss_bytes()
        if rss is not None:
            values["peak_memory/rss_gib"] = rss / GIB
        if not values:
            return
        if trainer.dist.is_distributed:
            import torch.distributed as dist

            peaks = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
            dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
            values = dict(zip(values, peaks.tolist(), strict=True))
        for key, value in values.items():
            trainer.writer.add_scalar(key, value)
