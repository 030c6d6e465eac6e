"""``TrainTimeCallback``: where the time of an update goes, per phase.

The trainer measures every update's phases and passes them to ``after_update(times)``: ``data_wait``
(waiting for the batches), ``forward``, ``backward`` and ``update`` (the optimizer step), in seconds.
When its interval is due this plugin logs, for each phase ``p``,

* ``train_time/{p}/mean/{I}``: the mean over the updates since its previous log, and
* ``train_time/{p}/max/{I}``: the slowest of them,

averaged (means) and maxed (maxima) over ranks when distributed. After training it prints the total
time per phase on this rank. The trainer adds it on the log interval.

Its partial window (the times of the updates since its last log) and the totals are part of its state in
the trainer checkpoint: a resumed run averages over as many updates as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from noether_core import EvalInterval, Run

log = logging.getLogger("noether")

#: Updates whose ``times`` are kept as they came before they are folded into the running statistics.
FOLD_EVERY = 256


class TrainTimeCallback:
    """Logs ``train_time/{phase}/mean/{I}`` and ``train_time/{phase}/max/{I}``."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config
        self._pending: list[Mapping[str, float]] = []
        self._sum: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._count = 0
        self._total: dict[str, float] = {}
        interval = config.interval
        self._suffix = interval.short if interval is not None else "eval"
        self._keys: dict[str, tuple[str, str]] = {}

    def _key_pair(self, phase: str) -> tuple[str, str]:
        keys = self._keys[phase] = (
            f"train_time/{phase}/mean/{self._suffix}",
            f"train_time/{phase}/max/{self._suffix}",
        )
        return keys

    def state_dict(self) -> dict[str, Any]:
        """The partial window (sums, maxima and count since the last log) and the totals, in seconds."""
        self._fold()
        return {
            "sum": dict(self._sum),
            "max": dict(self._max),
            "count": self._count,
            "total": dict(self._total),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = []
        self._sum = {str(k): float(v) for k, v in state["sum"].items()}
        self._max = {str(k): float(v) for k, v in state["max"].items()}
        self._count = int(state["count"])
        self._total = {str(k): float(v) for k, v in state["total"].items()}

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """``train_time/{phase}/{mean|max}/{I}``."""
        return [f"train_time/*/{config.interval.short if config.interval else '*'}"]

    @hookimpl
    def after_update(self, times: Mapping[str, float]) -> None:
        # the trainer makes a new dict per update, so keeping it costs one append on the hot path
        self._pending.append(times)
        if len(self._pending) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        pending = self._pending
        if not pending:
            return
        sums, maxima = self._sum, self._max
        phases = pending[0].keys()
        if all(times.keys() == phases for times in pending):
            # the usual case (the trainer always times the same phases): column sums and maxima in C
            columns = zip(phases, zip(*(times.values() for times in pending), strict=True), strict=True)
            for phase, column in columns:
                total, peak = sum(column), max(column)
                if phase in sums:
                    sums[phase] += total
                    maxima[phase] = max(maxima[phase], peak)
                else:
                    sums[phase], maxima[phase] = total, peak
        else:
            for times in pending:
                for phase, seconds in times.items():
                    sums[phase] = sums.get(phase, 0.0) + seconds
                    maxima[phase] = max(maxima.get(phase, seconds), seconds)
        self._count += len(pending)
        pending.clear()

    @hookimpl
    def at_eval(self, trainer: Run, interval: EvalInterval) -> None:
        if interval == "eval":
            return
        self._fold()
        if not self._count:
            return
        phases = list(self._sum)
        means = [self._sum[p] / self._count for p in phases]
        maxima = [self._max[p] for p in phases]
        if trainer.dist.is_distributed and phases:
            means, maxima = _reduce_over_ranks(means, maxima, trainer)
        writer = trainer.writer
        for phase, mean, peak in zip(phases, means, maxima, strict=True):
            mean_key, max_key = self._keys.get(phase) or self._key_pair(phase)
            writer.add_scalar(mean_key, mean)
            writer.add_scalar(max_key, peak)
        for phase, seconds in self._sum.items():
            self._total[phase] = self._total.get(phase, 0.0) + seconds
        self._sum = {}
        self._max = {}
        self._count = 0

    @hookimpl
    def after_training(self) -> None:
        self._fold()
        totals = dict(self._total)
        for phase, seconds in self._sum.items():
            totals[phase] = totals.get(phase, 0.0) + seconds
        if totals:
            log.info("train time by phase: %s", ", ".join(f"{p}={s:.2f}s" for p, s in totals.items()))


def _reduce_over_ranks(
    means: list[float], maxima: list[float], trainer: Run
) -> tuple[list[float], list[float]]:
    import torch.distributed as dist

    world = trainer.dist.world_size
    mean_t = torch.tensor(means, dtype=torch.float64, device=trainer.device)
    max_t = torch.tensor(maxima, dtype=torch.float64, device=trainer.device)
    dist.all_reduce(mean_t, op=dist.ReduceOp.SUM)
    dist.all_reduce(max_t, op=dist.ReduceOp.MAX)
    return (mean_t / world).tolist(), max_t.tolist()
