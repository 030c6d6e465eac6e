"""``ThroughputCallback``: training throughput over the window since its previous log.

When its interval is due it logs

* ``throughput/samples_per_sec``: samples trained in the window (the global sample counter, so all ranks
  together) divided by the window's wall-clock seconds, and
* ``throughput/updates_per_sec``: optimizer updates in the window per second, and
* ``throughput/tokens_per_sec``: when the train step reports ``num_tokens`` in its ``outputs`` (an int
  or a one-element tensor per micro-batch), the tokens of the window (summed over micro-batches and
  ranks) per second;
* ``throughput/flops_per_sec``: with a FLOP count per sample (``flops_per_sample``, or counted with
  ``count_flops`` / ``peak_flops``), the window's samples times that count per second, all ranks together;
* ``throughput/mfu``: with ``peak_flops`` (the peak FLOP/s of one device), the model FLOPs utilization
  ``flops_per_sec / (peak_flops * world_size)``.

A counted FLOP count is taken once, on the first micro-batch of the run, with
``torch.utils.flop_counter.FlopCounterMode``: the mode is entered after every entry's ``before_training``
(a wrapper of that event) and left at this entry's ``after_accumulation`` of that micro-batch, so it sees
the train step's forward and backward, and the count is divided by the micro-batch's samples. The counter
knows the matrix products, convolutions and attention kernels (the ops that dominate a model's FLOPs), not
elementwise ops; a product's backward counts its gradients for the input (where one is needed) and the
weight, so a linear layer counts ``2 * in * out`` per sample forward and twice that backward, except a first
layer whose input needs no gradient. The count is kept in the entry's state, so a resumed run does not
count again.

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
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch
from attrs import validators as v

from noether_core import CallbackConfig, batch_length, hookimpl

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

    from noether_core import Counter, EvalInterval, Run

SAMPLES_KEY = "throughput/samples_per_sec"
UPDATES_KEY = "throughput/updates_per_sec"
TOKENS_KEY = "throughput/tokens_per_sec"
FLOPS_KEY = "throughput/flops_per_sec"
MFU_KEY = "throughput/mfu"

_positive = v.optional([v.gt(0.0), v.lt(float("inf"))])


class ThroughputCallback:
    """Logs ``throughput/samples_per_sec``, ``throughput/updates_per_sec`` and (when the train step
    reports ``num_tokens``) ``throughput/tokens_per_sec``, and with a FLOP count ``throughput/flops_per_sec``
    and ``throughput/mfu``, over the window since its previous log."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        flops_per_sample: float | None = attrs.field(default=None, validator=_positive)
        """FLOPs of one sample's forward and backward, for ``throughput/flops_per_sec``; unset: counted on
        the first micro-batch when ``count_flops`` or ``peak_flops`` is set."""
        count_flops: bool = False
        """Count the FLOPs per sample on the first micro-batch (``torch.utils.flop_counter``) and log
        ``throughput/flops_per_sec``."""
        peak_flops: float | None = attrs.field(default=None, validator=_positive)
        """Peak FLOP/s of one device (``312e12`` for an A100's bf16), for ``throughput/mfu``; counts the
        FLOPs unless ``flops_per_sample`` is given."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._start_sample: int | None = None
        self._start_update: int | None = None
        # seconds the window had run before a resume; the clock restarts at before_training
        self._carried = 0.0
        self._t0 = 0.0
        self._now: float | None = None
        # tokens of the window so far, a device tensor when the train step reports tensors
        self._tokens: torch.Tensor | int | None = None
        # FLOPs of one sample's forward and backward: given, counted, or None
        self._flops: float | None = config.flops_per_sample
        # the counter, between the end of before_training and the first micro-batch's after_accumulation
        self._counting: FlopCounterMode | None = None

    def state_dict(self) -> dict[str, Any]:
        """The partial window: its start sample and update, the seconds it had run, and the FLOPs per
        sample."""
        return {
            "start_sample": self._start_sample,
            "start_update": self._start_update,
            "elapsed": self._elapsed(),
            "tokens": None if self._tokens is None else int(self._tokens),
            "flops_per_sample": self._flops,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        start_sample, start_update = state["start_sample"], state["start_update"]
        self._start_sample = None if start_sample is None else int(start_sample)
        self._start_update = None if start_update is None else int(start_update)
        self._carried = float(state["elapsed"])
        tokens = state.get("tokens")
        self._tokens = None if tokens is None else int(tokens)
        flops = state.get("flops_per_sample")
        if self.config.flops_per_sample is None and flops is not None:
            self._flops = float(flops)

    def _elapsed(self) -> float:
        if self._now is None:
            return self._carried
        return self._carried + self._now - self._t0

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """``throughput/samples_per_sec``, ``throughput/updates_per_sec`` and, when the train step reports
        ``num_tokens``, ``throughput/tokens_per_sec``; with a FLOP count ``throughput/flops_per_sec`` and
        ``throughput/mfu``."""
        return ["throughput/*"]

    @staticmethod
    def metric_directions(config: CallbackConfig) -> dict[str, str]:
        """Rates of the machine, not of the model: neither direction is better for choosing a checkpoint."""
        return {"throughput/*": "neutral"}

    @hookimpl(wrapper=True)
    def before_training(self, counter: Counter) -> Generator[None, None, None]:
        # a wrapper, so that the clock and the FLOP counter start after every entry's before_training
        yield
        if self._start_sample is None or self._start_update is None:
            self._start_sample, self._start_update = counter.sample, counter.update
        config = self.config
        if self._flops is None and (config.count_flops or config.peak_flops is not None):
            from torch.utils.flop_counter import FlopCounterMode

            self._counting = FlopCounterMode(display=False)
            self._counting.__enter__()  # type: ignore[no-untyped-call]
        self._t0 = time.perf_counter()
        self._now = None

    @hookimpl
    def after_accumulation(self, batch: Any, outputs: Mapping[str, Any] | None) -> None:
        if self._counting is not None:
            self._stop_counting(batch_length(batch))
        if outputs is None:
            return
        tokens = outputs.get("num_tokens")
        if tokens is None:
            return
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach()
        self._tokens = tokens if self._tokens is None else self._tokens + tokens

    def _stop_counting(self, samples: int | None) -> None:
        counting, self._counting = self._counting, None
        assert counting is not None
        counting.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        if samples:
            self._flops = counting.get_total_flops() / samples

    @hookimpl
    def after_update(self) -> None:
        self._now = time.perf_counter()

    @hookimpl
    def after_training(self) -> None:
        if self._counting is not None:  # no micro-batch ran
            self._stop_counting(None)

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
        if self._flops is not None:
            flops_per_sec = samples * self._flops / elapsed
            trainer.writer.add_scalar(FLOPS_KEY, flops_per_sec)
            peak = self.config.peak_flops
            if peak is not None:
                trainer.writer.add_scalar(MFU_KEY, flops_per_sec / (peak * trainer.dist.world_size))
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
