"""When periodic work is due: the one place that answers it.

An :class:`Interval` is a value (``every 10 updates``); the :class:`IntervalScheduler` of a run turns
intervals into due updates. Rules, with ``u`` the number of completed updates at a tick:

* ``every_n_updates=n``: due when ``u % n == 0``.
* ``every_n_epochs=n``: due when ``u`` ends an epoch (``u % updates_per_epoch == 0``) and the completed
  epoch count ``u // updates_per_epoch`` is a multiple of ``n``.
* ``every_n_samples=n``: due when the global sample count crosses a multiple of ``n`` during update
  ``u``, i.e. ``((u - 1) * ebs) // n < (u * ebs) // n``; at most once per update, however many
  multiples were crossed.

Nothing here has state that changes during a run: due-ness is a function of ``u``, so resumed runs need
no scheduler state and every rank agrees.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Generic, Literal, Protocol, TypeVar

import attrs

IntervalUnit = Literal["epoch", "update", "sample"]

_SHORT = {"epoch": "E", "update": "U", "sample": "S"}
_FROM_SHORT = {v: k for k, v in _SHORT.items()}
INTERVAL_FIELDS = ("every_n_epochs", "every_n_updates", "every_n_samples")


@attrs.frozen
class Interval:
    """How often periodic work runs, e.g. ``Interval("update", 10)``."""

    unit: IntervalUnit = attrs.field(validator=attrs.validators.in_(tuple(_SHORT)))
    every: int = attrs.field(validator=attrs.validators.ge(1))

    @property
    def short(self) -> str:
        """Short form used as a metric-key suffix: ``E1``, ``U10``, ``S100``."""
        return f"{_SHORT[self.unit]}{self.every}"

    @property
    def verbose(self) -> str:
        """Config spelling: ``every_n_updates=10``."""
        return f"every_n_{self.unit}s={self.every}"

    def __str__(self) -> str:
        return self.short

    @classmethod
    def parse(cls, text: str) -> Interval:
        """Parse a short form (``U10``) back into an interval."""
        unit = _FROM_SHORT.get(text[:1])
        digits = text[1:]
        # ascii only: str.isdigit also accepts "²" (int() rejects it) and "٣" (which would not round-trip)
        if unit is None or not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
            raise ValueError(f"not an interval: {text!r} (expected E<n>, U<n> or S<n> with n >= 1)")
        return cls(unit, int(digits))  # type: ignore[arg-type]

    @classmethod
    def from_fields(
        cls,
        every_n_epochs: int | None = None,
        every_n_updates: int | None = None,
        every_n_samples: int | None = None,
    ) -> Interval | None:
        """The interval set by exactly one ``every_n_*`` field, ``None`` if none is set."""
        given = [
            (unit, n)
            for unit, n in (
                ("epoch", every_n_epochs),
                ("update", every_n_updates),
                ("sample", every_n_samples),
            )
            if n is not None
        ]
        if not given:
            return None
        if len(given) > 1:
            names = ", ".join(f"every_n_{unit}s" for unit, _ in given)
            raise ValueError(
                f"set exactly one of every_n_epochs, every_n_updates, every_n_samples; got {names}"
            )
        unit, n = given[0]
        return cls(unit, n)  # type: ignore[arg-type]


class Scheduled(Protocol):
    """Anything with an interval: a config entry, a plugin slot."""

    @property
    def interval(self) -> Interval | None: ...


T = TypeVar("T", bound=Scheduled)


@attrs.frozen
class IntervalScheduler:
    """Due-ness of intervals for one run's geometry.

    ``total_updates`` bounds :meth:`next_due` and :meth:`timeline`; :meth:`is_due` answers for any tick.
    """

    updates_per_epoch: int = attrs.field(validator=attrs.validators.ge(1))
    effective_batch_size: int = attrs.field(validator=attrs.validators.ge(1))
    total_updates: int = attrs.field(validator=attrs.validators.ge(0))

    def is_due(self, interval: Interval, update: int) -> bool:
        """Whether ``interval`` is due at the tick after ``update`` completed updates (``update >= 1``)."""
        if update < 1:
            return False
        n = interval.every
        if interval.unit == "update":
            return update % n == 0
        if interval.unit == "epoch":
            upe = self.updates_per_epoch
            return update % upe == 0 and (update // upe) % n == 0
        ebs = self.effective_batch_size
        return ((update - 1) * ebs) // n < (update * ebs) // n

    def due(self, entries: Sequence[T], update: int) -> list[T]:
        """The entries due at ``update``, in their given order. Entries without an interval never are."""
        return [e for e in entries if e.interval is not None and self.is_due(e.interval, update)]

    def next_due(self, interval: Interval, after: int) -> int | None:
        """The first update ``> after`` at which ``interval`` is due, or ``None`` past the run's end."""
        n = interval.every
        after = max(after, 0)  # update 0 is never due (see is_due)
        if interval.unit == "update":
            nxt = (after // n + 1) * n
        elif interval.unit == "epoch":
            period = self.updates_per_epoch * n
            nxt = (after // period + 1) * period
        else:
            ebs = self.effective_batch_size
            # the next multiple of n strictly above the samples seen after `after` updates ...
            k = (after * ebs) // n + 1
            # ... is crossed by the first update whose sample count reaches it
            # (integer ceiling division: a float quotient loses exactness for large sample counts)
            nxt = -(-k * n // ebs)
        return nxt if nxt <= self.total_updates else None

    def updates_until_due(self, interval: Interval, update: int) -> int | None:
        """Updates from ``update`` to the next due tick (never 0), ``None`` if none is left."""
        nxt = self.next_due(interval, update)
        return None if nxt is None else nxt - update

    def updates_per_interval(self, interval: Interval) -> float:
        """Average updates between two due ticks (fractional for sample intervals)."""
        if interval.unit == "update":
            return float(interval.every)
        if interval.unit == "epoch":
            return float(self.updates_per_epoch * interval.every)
        return max(interval.every / self.effective_batch_size, 1.0)

    def due_updates(self, interval: Interval, start: int = 0) -> Iterator[int]:
        """Every update in ``(start, total_updates]`` at which ``interval`` is due."""
        nxt = self.next_due(interval, start)
        while nxt is not None:
            yield nxt
            nxt = self.next_due(interval, nxt)

    def count_due(self, interval: Interval, start: int = 0) -> int:
        """How many updates in ``(start, total_updates]`` ``interval`` is due at, computed (O(1), however
        long the run): ``len(list(due_updates(interval, start)))`` without the list."""
        start, end, n = max(start, 0), self.total_updates, interval.every
        if end <= start:
            return 0
        if interval.unit == "update":
            return end // n - start // n
        if interval.unit == "epoch":
            period = self.updates_per_epoch * n
            return end // period - start // period
        ebs = self.effective_batch_size
        if n <= ebs:  # every update crosses a multiple of n
            return end - start
        # an update spans ebs <= n samples, so it crosses at most one multiple: count the multiples
        return (end * ebs) // n - (start * ebs) // n

    def iter_timeline(self, entries: Sequence[T], start: int = 0) -> Iterator[tuple[int, list[T]]]:
        """``(update, entries due there)`` for the rest of the run, in update order, each tick's entries
        in list order (dispatch order). Keeps one pending update per entry: O(len(entries)) memory
        however long the run."""
        pending: list[tuple[int, int]] = []
        scheduled = [e for e in entries if e.interval is not None]
        for i, entry in enumerate(scheduled):
            nxt = self.next_due(entry.interval, start)  # type: ignore[arg-type]
            if nxt is not None:
                pending.append((nxt, i))
        heapq.heapify(pending)
        while pending:
            update = pending[0][0]
            due: list[int] = []
            while pending and pending[0][0] == update:
                due.append(heapq.heappop(pending)[1])
            for i in due:
                nxt = self.next_due(scheduled[i].interval, update)  # type: ignore[arg-type]
                if nxt is not None:
                    heapq.heappush(pending, (nxt, i))
            yield update, [scheduled[i] for i in sorted(due)]

    def timeline(self, entries: Sequence[T], start: int = 0) -> dict[int, list[T]]:
        """Update -> entries due there, for the rest of the run, as one dict: for short runs and tests;
        :meth:`iter_timeline` takes memory independent of the run's length."""
        return dict(self.iter_timeline(entries, start))

    def cursor(self, entries: Sequence[T], update: int = 0) -> DueCursor[T]:
        """A cheap per-tick view: ticks at which nothing is due cost one comparison."""
        return DueCursor(self, entries, update)


class DueCursor(Generic[T]):
    """Answers "who is due at this tick" in O(1) when nobody is; derived from the update alone.

    Keeps each entry's next due update; asking for a tick before the earliest one returns an empty
    tuple without looking at the entries.
    """

    def __init__(self, scheduler: IntervalScheduler, entries: Sequence[T], update: int = 0) -> None:
        self._scheduler = scheduler
        self._entries = [e for e in entries if e.interval is not None]
        self._next: list[int | None] = []
        self._earliest: int | None = None
        self.seek(update)

    def seek(self, update: int) -> None:
        """Reposition after ``update`` completed updates (start or resume)."""
        self._next = [self._scheduler.next_due(e.interval, update) for e in self._entries]  # type: ignore[arg-type]
        self._recompute()

    def _recompute(self) -> None:
        pending = [n for n in self._next if n is not None]
        self._earliest = min(pending) if pending else None

    def due(self, update: int) -> Sequence[T]:
        """Entries due at ``update`` in list order; call with increasing (not necessarily consecutive)
        updates. A due tick that was skipped over is not reported late."""
        if self._earliest is None or update < self._earliest:
            return ()
        out: list[T] = []
        for i, entry in enumerate(self._entries):
            nxt = self._next[i]
            if nxt is not None and nxt <= update:
                interval: Interval = entry.interval  # type: ignore[assignment]
                if nxt < update:  # ticks were skipped: catch up without skipping `update` itself
                    nxt = self._scheduler.next_due(interval, update - 1)
                if nxt == update:
                    out.append(entry)
                    nxt = self._scheduler.next_due(interval, update)
                self._next[i] = nxt
        self._recompute()
        return out

    @property
    def entries(self) -> Sequence[T]:
        return self._entries


__all__ = ["INTERVAL_FIELDS", "DueCursor", "Interval", "IntervalScheduler", "IntervalUnit", "Scheduled"]
