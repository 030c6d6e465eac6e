"""The run's metric writer (``trainer.writer``): plugins add this step's scalars, the trainer flushes
them to the trackers as one record.

Within a step (between two flushes) a plugin reads what earlier plugins logged with ``writer.get(key)``,
``key in writer`` and ``writer.keys()``; that is how consumers (best checkpoint, early stopping) see the
producers' values, so producers come first in the plugin order.

Values may be tensors on any device: they are kept as they are, without a host sync, until the flush,
which brings all of them to the host at once (one transfer per device and dtype). ``get`` syncs the one
value it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from noether_core.errors import DuplicateMetricError
from noether_core.io.metrics_file import POSITION_KEYS
from noether_core.io.trackers import Tracker
from noether_core.run.counter import Counter

Scalar = float | int
ScalarLike = float | int | torch.Tensor | np.generic
"""What :meth:`LogWriter.add_scalar` takes: a Python or NumPy number, or a one-element tensor."""


class _Entry:
    __slots__ = ("owner", "owner_is_default", "value")

    def __init__(self, value: Scalar | torch.Tensor, owner: str, owner_is_default: bool) -> None:
        self.value = value
        self.owner = owner
        self.owner_is_default = owner_is_default


def _normalise_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"metric key must be a string, got {type(key).__name__}")
    stripped = key[:-1] if key.endswith("/") else key
    if not stripped:
        raise ValueError(f"metric key {key!r} is empty")
    return stripped


def _to_python(value: Scalar) -> Scalar:
    return int(value) if isinstance(value, bool) else value


class LogWriter:
    """Collects this step's metric values and hands them to the trackers on :meth:`flush`.

    ``owner`` and ``owner_is_default`` say who is logging: the plugin dispatcher sets them before it
    calls each plugin (see :meth:`owned_by`), so plugins never pass their identity. Outside any plugin the
    owner is ``"trainer"``.

    On ranks other than 0, pass no sinks: values are still collected and readable, and flush discards
    them.
    """

    def __init__(self, counter: Counter, sinks: Sequence[Tracker]) -> None:
        self.counter = counter
        self.sinks: list[Tracker] = list(sinks)
        self.owner = "trainer"
        self.owner_is_default = False
        self.prefix = ""
        self._pending: dict[str, _Entry] = {}
        self._normal: dict[str, str] = {}

    @contextlib.contextmanager
    def owned_by(self, owner: str, *, default: bool = False) -> Iterator[None]:
        """Attribute everything logged inside the block to ``owner`` (a trainer default if ``default``),
        restoring the previous owner afterwards."""
        previous = (self.owner, self.owner_is_default)
        self.owner, self.owner_is_default = owner, default
        try:
            yield
        finally:
            self.owner, self.owner_is_default = previous

    def add_scalar(self, key: str, value: ScalarLike) -> None:
        """Log ``value`` under ``key`` for this step (one trailing ``/`` of ``key`` is dropped).

        A tensor must hold one element; it is detached and copied on its device (no host sync), so later
        in-place changes to it do not alter the logged value. Raises
        :class:`~noether_core.errors.DuplicateMetricError` when ``key`` was already logged this step,
        unless both loggers are trainer defaults (then this second value is dropped), and
        ``ValueError`` for ``epoch``/``update``/``sample``, which every record carries already.
        """
        # plugins log the same few keys at every tick: each is checked once
        normal = self._normal.get(key) if type(key) is str else None
        if normal is None:
            normal = self._normal[key] = _normalise_key(key)
        key = self.prefix + normal if self.prefix else normal
        if key in POSITION_KEYS:
            raise ValueError(f"metric key {key!r} is reserved; every record carries it already")
        stored = value if type(value) is float else self._convert(key, value)
        existing = self._pending.get(key)
        if existing is not None:
            if existing.owner_is_default and self.owner_is_default:
                return
            raise DuplicateMetricError(key, self.counter.update, existing.owner, self.owner)
        self._pending[key] = _Entry(stored, self.owner, self.owner_is_default)

    @staticmethod
    def _convert(key: str, value: ScalarLike) -> Scalar | torch.Tensor:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"metric {key!r} must be a single number, got a tensor of shape {tuple(value.shape)}"
                )
            if value.is_complex():
                raise ValueError(f"metric {key!r} must be real, got a {value.dtype} tensor")
            return value.detach().reshape(()).clone()
        if isinstance(value, np.generic):
            if not isinstance(value, np.number | np.bool_) or isinstance(value, np.complexfloating):
                raise TypeError(f"metric {key!r} must be a real number, got {type(value).__name__}")
            return _to_python(value.item())
        if isinstance(value, int | float):
            return _to_python(value)
        raise TypeError(
            f"metric {key!r} must be a number or a one-element tensor, got {type(value).__name__}"
        )

    def get(self, key: str, default: float | None = None) -> float | None:
        """This step's value of ``key`` as a float (a tensor is synced to the host), or ``default`` when
        nothing was logged under ``key`` since the last flush."""
        entry = self._pending.get(self.prefix + _normalise_key(key))
        if entry is None:
            return default
        if isinstance(entry.value, torch.Tensor):
            entry.value = _to_python(entry.value.item())
        return float(entry.value)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or key in ("", "/"):
            return False
        return self.prefix + _normalise_key(key) in self._pending

    @contextlib.contextmanager
    def prefixed(self, prefix: str) -> Iterator[None]:
        """Inside the block, keys written and read get ``prefix`` in front (nested prefixes add up).

        How an owner keeps its children's metrics apart, e.g. EMA evaluations under ``ema=0.999/``; a
        child reading ``loss/val/total`` sees its sibling's ``ema=0.999/loss/val/total``.
        """
        previous = self.prefix
        self.prefix = previous + prefix
        try:
            yield
        finally:
            self.prefix = previous

    def keys(self) -> list[str]:
        """The keys logged since the last flush, in logging order."""
        return list(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def flush(self) -> dict[str, Scalar] | None:
        """Send this step's values to every sink as one record and start a new step.

        The record is ``{"epoch", "update", "sample"}`` of the counter now, then the values in logging
        order; it is also returned. Nothing pending: no record, returns ``None``. Flushing again at the
        same update is fine (a value logged in ``after_training`` after the last update's flush). The
        pending values are cleared before the sinks are called, so a failing sink does not make the next
        flush repeat them.
        """
        pending = self._pending
        if not pending:
            return None
        counter = self.counter
        record: dict[str, Any] = {"epoch": counter.epoch, "update": counter.update, "sample": counter.sample}
        tensors: dict[tuple[torch.device, torch.dtype], list[tuple[str, torch.Tensor]]] = {}
        for key, entry in pending.items():
            value = entry.value
            if isinstance(value, torch.Tensor):
                tensors.setdefault((value.device, value.dtype), []).append((key, value))
            record[key] = value  # a tensor is replaced below, in place: the logging order stays
        for members in tensors.values():
            # one stacked device-to-host copy per device and dtype instead of one sync per value
            values = torch.stack([tensor for _, tensor in members]).tolist()
            for (key, _), value in zip(members, values, strict=True):
                record[key] = _to_python(value)
        pending.clear()
        for sink in self.sinks:
            sink.log(record)
        return record

    def add_summary(self, key: str, value: Any) -> None:
        """Give every sink a run summary value (``param_count/model``, ``ds_stats/train/len``); it is not
        part of any record. A one-element tensor is synced to a number."""
        key = _normalise_key(key)
        if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic):
            value = value.item()
        for sink in self.sinks:
            sink.set_summary(key, value)


__all__ = ["LogWriter", "Scalar", "ScalarLike"]
