"""``ThroughputCallback``: training throughput over the window since its previous log.

When its interval is due it logs

* ``throughput/samples_per_sec``: samples trained in the window (the global sample counter, so all ranks
  together) divided by the window's wall-clock seconds, and
* ``throughput/updates_per_sec``: optimizer updates in the window per second, and
* ``throughput/tokens_per_sec``: when the train step reports ``num_tokens`` in its ``outputs`` (an int
  or a one-element tensor per micro-batch), the tokens of the window (summed over micro-batches and
  ranks) per second.

The window runs from the end of the update of its previous log (or the start of training) to the end of
the update of this one, so it includes whatever ran between updates (evaluations of other entries):
like Lightning's ``ThroughputMonitor``, the numbers are what a run achieves, not a micro-benchmark. The
per-update cost is one ``time.perf_counter()`` call (and, with ``num_tokens``, one addition per
micro-batch, on the device for a tensor); nothing is synced with the device until the window is logged,
so on an asynchronous device a window's end is where the host got to, which evens out over a window of
many updates.

The partial window (its start counters and the seconds it had run) is part of the plugin's state in the
trainer checkpoint, so the first window after a resume covers as many updates as it would have without
the interruption; the time between the checkpoint and the resume is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run

SAMPLES_KEY = "throughput/samples_per_sec"
UPDATES_KEY = "throughput/updates_per_sec"
TOKENS_KEY = "throughput/tokens_per_sec"


class ThroughputCallback:
    """Logs ``throughput/samples_per_sec``, ``throughput/updates_per_sec`` and (when the train step
    reports ``num_tokens``) ``throughput/tokens_per_sec`` over the window since its previous log."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config
        self._start_sample: int | None = None
        self._start_update: int | None = None
        # seconds the window had run before a resume; the clock restarts at before_training
        self._carried = 0.0
        self._t0 = 0.0
        self._now: float | None = None
        # tokens of the window so far, a device tensor when the train step reports tensors
        self._tokens: torch.Tensor | int | None = None

    def state_dict(self) -> dict[str, Any]:
        """The partial window: its start sample and update, and the seconds it had run."""
        return {
            "start_sample": self._start_sample,
            "start_update": self._start_update,
            "elapsed": self._elapsed(),
            "tokens": None if self._tokens is None else int(self._tokens),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        start_sample, start_update = state["start_sample"], state["start_update"]
        self._start_sample = None if start_sample is None else int(start_sample)
        self._start_update = None if start_update is None else int(start_update)
        self._carried = float(state["elapsed"])
        tokens = state.get("tokens")
        self._tokens = None if tokens is None else int(tokens)

    def _elapsed(self) -> float:
        if self._now is None:
            return self._carried
        return self._carried + self._now - self._t0

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """``throughput/samples_per_sec``, ``throughput/updates_per_sec`` and, when the train step reports
        ``num_tokens``, ``throughput/tokens_per_sec``."""
        return ["throughput/*"]

    @hookimpl
    def before_training(self, counter: Counter) -> None:
        if self._start_sample is None or self._start_update is None:
            self._start_sample, self._start_update = counter.sample, counter.update
        self._t0 = time.perf_counter()
        self._now = None

    @hookimpl
    def after_accumulation(self, outputs: Mapping[str, Any] | None) -> None:
        if outputs is None:
            return
        tokens = outputs.get("num_tokens")
        if tokens is None:
            return
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach()
        self._tokens = tokens if self._tokens is None else self._tokens + tokens

    @hookimpl
    def after_update(self) -> None:
        self._now = time.perf_counter()

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, interval: EvalInterval) -> None:
        if interval == "eval" or self._start_sample is None or self._start_update is None:
            return
        updates = counter.update - self._start_update
        elapsed = self._elapsed()
        if updates <= 0 or elapsed <= 0.0:
            return
        samples = counter.sample - self._start_sample
        trainer.writer.add_scalar(SAMPLES_KEY, samples / elapsed)
        trainer.writer.add_scalar(UPDATES_KEY, updates / elapsed)
        if self._tokens is not None:
            trainer.writer.add_scalar(TOKENS_KEY, _total_over_ranks(self._tokens, trainer) / elapsed)
            self._tokens = 0
        self._start_sample, self._start_update = counter.sample, counter.update
        self._carried = 0.0
        if self._now is not None:
            self._t0 = self._now


def _total_over_ranks(tokens: torch.Tensor | int, trainer: Run) -> float:
    """The window's tokens on all ranks together (one sync, when the window is logged)."""
    if not trainer.dist.is_distributed:
        return float(tokens)
    import torch.distributed as dist

    total = torch.as_tensor(tokens, dtype=torch.float64, device=trainer.device).reshape(())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total)
