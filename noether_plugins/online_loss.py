"""``OnlineLossCallback``: the training losses, averaged since the last time it logged.

Every update's detached losses (``total`` plus each named loss of the train step, each the mean over the
update's micro-batches) are collected on their device as they come (``after_update``), without a host
sync. When its interval is due it logs ``loss/online/{name}/{I}`` (``I`` the short interval, e.g.
``U10``): the mean over all updates since its previous log, averaged over ranks when distributed (one
``all_reduce`` of all names together), and starts over. Every update has the same number of
micro-batches, so this is the mean over the micro-batches too, each weighted equally. Reading
``after_update`` rather than ``after_accumulation`` keeps a run with gradient accumulation at one call per
update, and a run whose plugins all skip ``after_accumulation`` does not dispatch that event at all.

A NaN mean stops the run with :class:`NonFiniteLossError` unless ``trainer.skip_nan_loss`` is set, in
which case NaN is logged as it is. With ``verbose`` (the default) the values are also printed
(``loss/online/total/U10: 0.412345``) through the ``noether`` logger.

The trainer adds one entry on the track interval (``verbose: false``) and, when the log interval
differs, one on the log interval (``verbose: true``), named ``OnlineLossCallback/{I}``; since their keys
carry the interval, two entries never write the same key. Evaluation-only runs (``interval == "eval"``)
have no training loss: the entry does nothing there.

Its partial window (the losses of the updates since its last log) is part of its state in the trainer
checkpoint, so a resumed run logs the same means as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch

from noether_core import CallbackConfig, NonFiniteLossError, hookimpl, mean_over_ranks

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run

log = logging.getLogger("noether")

#: The loss dtypes whose values :meth:`OnlineLossCallback.at_eval` may read one by one on the CPU.
_FLOATING = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))

#: Updates whose losses are kept as they came before they are summed on the device (bounds the number
#: of live tensors over long intervals; one stacked sum per this many updates).
FOLD_EVERY = 256


class OnlineLossCallback:
    """Logs ``loss/online/{name}/{I}``: each loss's mean over the updates since its last log."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        verbose: bool = True
        """Also print the values through the ``noether`` logger (stdout and ``log.txt``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._pending: list[Mapping[str, torch.Tensor]] = []
        # per set of loss names (one, unless a train step's names vary): [sums, count] on the device
        self._sums: dict[tuple[str, ...], list[Any]] = {}
        interval = config.interval
        self._suffix = interval.short if interval is not None else "eval"
        self._keys: dict[tuple[str, ...], list[str]] = {}
        self._relocate = False  # restored state sits on the CPU until the first update shows the device

    def state_dict(self) -> dict[str, Any]:
        """The partial window: the losses of the updates not folded yet, as they came, and the running
        sums (so a resumed run does the very same arithmetic)."""
        return {
            "pending": _packed(self._pending),
            "sums": [
                {"names": list(names), "sums": sums, "count": count}
                for names, (sums, count) in self._sums.items()
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = [dict(losses) for losses in state["pending"]]
        self._sums = {tuple(entry["names"]): [entry["sums"], int(entry["count"])] for entry in state["sums"]}
        self._relocate = bool(self._pending or self._sums)

    def _move_to(self, device: torch.device) -> None:
        self._pending = [
            {name: value.to(device) for name, value in losses.items()} for losses in self._pending
        ]
        for running in self._sums.values():
            running[0] = running[0].to(device)
        self._relocate = False

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """``loss/online/{name}/{I}`` for every loss the train step returns (names known at run time)."""
        return [f"loss/online/*/{config.interval.short if config.interval else '*'}"]

    @hookimpl
    def after_update(self, losses: Mapping[str, torch.Tensor]) -> None:
        # the hot path: one append (the trainer makes a new dict of detached tensors per update)
        if self._relocate:
            self._move_to(next(iter(losses.values())).device)
        self._pending.append(losses)
        if len(self._pending) >= FOLD_EVERY:
            self._fold()

    def _chunks(self) -> list[tuple[tuple[str, ...], torch.Tensor, int]]:
        """The pending updates as ``(names, values, count)``: the ``count`` updates' losses stacked on the
        device, ``count * len(names)`` of them, one triple per set of loss names; clears them."""
        pending = self._pending
        if not pending:
            return []
        names = tuple(pending[0])
        keys = pending[0].keys()
        groups: dict[tuple[str, ...], list[torch.Tensor]]
        if all(losses.keys() == keys for losses in pending):  # the usual case: the same names throughout
            groups = {names: [losses[name] for losses in pending for name in names]}
        else:
            groups = {}
            for losses in pending:
                group = tuple(losses)
                groups.setdefault(group, []).extend(losses[name] for name in group)
        pending.clear()
        out = []
        for names, values in groups.items():
            count = len(values) // len(names)
            try:
                stacked = torch.stack(values)
            except RuntimeError:  # a loss of shape (1,) among 0-d ones, one that is not a number, or
                # one on another device (a train step on the GPU returning a CPU tensor as a named loss)
                device = values[0].device
                stacked = torch.stack(
                    [_single(n, v).to(device) for n, v in zip(names * count, values, strict=True)]
                )
            if stacked.dtype not in (torch.float32, torch.float64):  # half precision: sum in float32
                stacked = stacked.float()
            out.append((names, stacked, count))
        return out

    def _cpu_means(self) -> tuple[tuple[str, ...], list[float], list[int]] | None:
        """Names, means and counts of the pending updates read one value at a time, where that gives
        the numbers :meth:`at_eval` gets from stacking them: the usual few updates (no sums folded
        yet) of floating-point losses on the CPU, with the same names throughout; clears them.
        ``None`` otherwise, with nothing changed.

        On the CPU, reading a handful of numbers costs less than stacking them into a new tensor and
        reading that. The means are the same to the bit: a floating-point loss becomes the same
        float either way (stacking a float16 loss makes it float32 first, exactly), and the sums
        add the same values in the same order."""
        pending = self._pending
        if not pending:
            return None
        first = pending[0]
        if not next(iter(first.values())).is_cpu:
            return None
        keys = first.keys()
        names = tuple(first)
        if len(pending) > 1 and not all(losses.keys() == keys for losses in pending):
            return None
        values = [losses[name] for losses in pending for name in names]
        if not {value.dtype for value in values} <= _FLOATING:
            return None  # stacking makes integers float32, which may round them: that path does it
        try:
            numbers = [float(value) for value in values]
        except (RuntimeError, ValueError, TypeError):  # more than one element: the stacking path says so
            return None
        pending.clear()
        count, width = len(numbers) // len(names), len(names)
        return names, [sum(numbers[j::width]) / count for j in range(width)], [count] * width

    def _fold(self, chunks: list[tuple[tuple[str, ...], torch.Tensor, int]] | None = None) -> None:
        """Add the pending updates (or ``chunks`` of them) to the running sums: a few device ops, no host
        sync."""
        for names, stacked, count in self._chunks() if chunks is None else chunks:
            sums = _sum_per_name(stacked, len(names))
            running = self._sums.get(names)
            if running is None:
                self._sums[names] = [sums, count]
            else:
                running[0] = running[0] + sums
                running[1] += count

    def _means(self) -> tuple[tuple[str, ...], torch.Tensor, list[int]]:
        """Loss names, their means (one device tensor) and their update counts; resets the sums."""
        if len(self._sums) == 1:  # the usual case: every update has the same losses
            ((names, (sums, count)),) = self._sums.items()
            self._sums = {}
            return names, sums / count, [count] * len(names)
        per_name: dict[str, list[Any]] = {}
        for names, (sums, count) in self._sums.items():
            for i, name in enumerate(names):
                entry = per_name.setdefault(name, [[], 0])
                entry[0].append(sums[i])
                entry[1] += count
        self._sums = {}
        means = torch.stack([torch.stack(parts).sum() / count for parts, count in per_name.values()])
        return tuple(per_name), means, [count for _, count in per_name.values()]

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, config: Config, interval: EvalInterval) -> None:
        if interval == "eval":
            return
        distributed = trainer.dist.is_distributed
        check = not trainer.skip_nan_loss
        # the one host sync, and only when a value is needed now: to check it or to print it
        wanted = check or config.verbose
        means: torch.Tensor | None = None
        host: list[float] | None = None
        # the usual case: every update since the last log is still pending (fewer than FOLD_EVERY)
        usual = wanted and not distributed and not self._sums
        cpu = self._cpu_means() if usual else None
        if cpu is not None:
            names, host, counts = cpu
        elif usual and len(chunks := self._chunks()) == 1:
            # one set of names: one copy to the host and the means in Python, no more ops
            ((names, stacked, count),) = chunks
            values, width = stacked.tolist(), len(names)
            host = [sum(values[j::width]) / count for j in range(width)]
            counts = [count] * width
        else:
            self._fold(chunks if usual else None)
            if not self._sums:
                return
            names, means, counts = self._means()
            if distributed:
                means = mean_over_ranks(means, trainer.dist)  # one all_reduce for all the names
            if wanted:
                host = means.tolist()
        keys = self._keys.get(names)
        if keys is None:
            keys = self._keys[names] = [f"loss/online/{name}/{self._suffix}" for name in names]
        if check and host is not None:
            for key, count, value in zip(keys, counts, host, strict=True):
                if math.isnan(value):
                    raise NonFiniteLossError(
                        f"{key} is NaN at update {counter.update}: a loss of the {count} update(s) since "
                        f"the last log was NaN (averaged over {trainer.dist.world_size} rank(s)); set "
                        "trainer.skip_nan_loss: true to skip such updates instead"
                    )
        writer = trainer.writer
        if host is not None:
            for key, value in zip(keys, host, strict=True):
                writer.add_scalar(key, value)
        else:  # device tensors: the writer brings them to the host with the step's other values
            assert means is not None
            for i, key in enumerate(keys):
                writer.add_scalar(key, means[i])
        if config.verbose and host is not None:
            # one record for all the lines: a log record costs far more than formatting a line
            log.info("\n".join(f"{key}: {value:.6f}" for key, value in zip(keys, host, strict=True)))


def _sum_per_name(stacked: torch.Tensor, names: int) -> torch.Tensor:
    """Sums over updates of losses stacked update by update: one value per name, shape
    ``(names,)``. One op for a single loss, two otherwise."""
    if names == 1:
        return stacked.sum(0, keepdim=True)
    return stacked.view(-1, names).sum(0)


def _single(name: str, value: torch.Tensor) -> torch.Tensor:
    if value.numel() != 1:
        raise ValueError(f"loss {name!r} must be a single number, got a tensor of shape {tuple(value.shape)}")
    return value.reshape(())


def _packed(pending: list[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """``pending`` as it came, each loss a view of one CPU tensor holding them all, where they stack
    without a change (the usual case: scalars of one dtype on one device). Saving a window of ``n``
    updates then copies one tensor off the device (one host sync, not one per loss) and stores one
    storage, not ``n`` of them. The values are the same to the bit, so a resumed run still does the
    very same arithmetic. Otherwise copies of the dicts, the tensors as they are."""
    values = [value for losses in pending for value in losses.values()]
    if not values or len({(v.dtype, v.shape, v.device) for v in values}) != 1:
        return [dict(losses) for losses in pending]
    parts = iter(torch.stack(values).cpu().unbind())
    return [{name: next(parts) for name in losses} for losses in pending]
