"""The run's position: epoch, update and sample, all derived from the number of completed updates.

Everything is a function of ``update`` (``sample = update * effective_batch_size``,
``epoch = update // updates_per_epoch``), so ranks agree by construction and resume restores a single
integer.
"""

from __future__ import annotations

from typing import Literal

import attrs

EndUnit = Literal["epoch", "update", "sample"]


@attrs.frozen
class RunEnd:
    """The one configured end of a run, e.g. ``RunEnd("epoch", 10)``."""

    unit: EndUnit = attrs.field(validator=attrs.validators.in_(("epoch", "update", "sample")))
    value: int = attrs.field(validator=attrs.validators.ge(0))

    def total_updates(self, updates_per_epoch: int, effective_batch_size: int) -> int:
        """Updates the run performs. A sample end rounds up: the run sees at least ``value`` samples."""
        if self.unit == "epoch":
            return self.value * updates_per_epoch
        if self.unit == "update":
            return self.value
        return -(-self.value // effective_batch_size)  # integer ceiling: exact for any size

    def __str__(self) -> str:
        return f"max_{self.unit}s={self.value}"


class Counter:
    """Read-only view of where training is. Plugins receive it as the ``counter`` hook argument.

    ``update`` counts completed optimizer updates; in ``after_accumulation`` it is still the count
    before the update in progress, in every later event of that update it includes it. Only the
    trainer moves it, through :func:`advance` and :func:`seek`, which are not part of the public face.
    """

    __slots__ = ("_effective_batch_size", "_end", "_total_updates", "_update", "_updates_per_epoch")

    def __init__(
        self, *, end: RunEnd, updates_per_epoch: int, effective_batch_size: int, update: int = 0
    ) -> None:
        if updates_per_epoch < 1:
            raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
        if effective_batch_size < 1:
            raise ValueError(f"effective_batch_size must be >= 1, got {effective_batch_size}")
        self._end = end
        self._updates_per_epoch = updates_per_epoch
        self._effective_batch_size = effective_batch_size
        self._total_updates = end.total_updates(updates_per_epoch, effective_batch_size)
        self._update = 0
        seek(self, update)  # same bounds check as a resume

    @property
    def update(self) -> int:
        return self._update

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self._update // self._updates_per_epoch

    @property
    def sample(self) -> int:
        """Samples consumed by completed updates, over all ranks."""
        return self._update * self._effective_batch_size

    @property
    def epoch_float(self) -> float:
        return self._update / self._updates_per_epoch

    @property
    def update_in_epoch(self) -> int:
        """Updates completed in the current epoch (0 right after an epoch ended)."""
        return self._update % self._updates_per_epoch

    @property
    def updates_per_epoch(self) -> int:
        return self._updates_per_epoch

    @property
    def effective_batch_size(self) -> int:
        return self._effective_batch_size

    @property
    def end(self) -> RunEnd:
        return self._end

    @property
    def total_updates(self) -> int:
        return self._total_updates

    @property
    def max_epochs(self) -> int:
        """Epochs the run touches; the last may be partial when the end is not epoch-aligned."""
        return -(-self._total_updates // self._updates_per_epoch)

    @property
    def max_samples(self) -> int:
        return self._total_updates * self._effective_batch_size

    @property
    def is_epoch_end(self) -> bool:
        return self._update > 0 and self._update % self._updates_per_epoch == 0

    @property
    def is_finished(self) -> bool:
        return self._update >= self._total_updates

    @property
    def tag(self) -> str:
        """Checkpoint tag of the current position, e.g. ``E1_U10_S320``."""
        return f"E{self.epoch}_U{self.update}_S{self.sample}"

    def __repr__(self) -> str:
        return f"Counter({self.tag}, end={self._end}, total_updates={self._total_updates})"


def advance(counter: Counter) -> None:
    """Count one completed update. Only the trainer calls this."""
    counter._update += 1


def seek(counter: Counter, update: int) -> None:
    """Jump to ``update`` completed updates (resume). Only the trainer calls this."""
    if not 0 <= update <= counter.total_updates:
        raise ValueError(f"update {update} is outside this run (0..{counter.total_updates})")
    counter._update = update


__all__ = ["Counter", "EndUnit", "RunEnd", "advance", "seek"]
