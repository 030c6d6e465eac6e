"""``TimerCallback``: a wall-clock limit as an entry, like ``trainer.max_time``.

After the first update that ends ``duration`` (``"HH:MM:SS"`` or ``"DD:HH:MM:SS"``) after training
started in this process, it asks the run to stop: status ``stopped``, exit status 0, the reason in
``summary.yaml`` (``stop_reason``). With ``resumable`` (the default) the stop is a pause: the trainer
saves a resumable ``latest`` and ``noether train --resume`` goes on training, with a new ``duration``
for the new process (the time is counted per process, as a scheduler's time limit is per job). With
``resumable: false`` the run is over, as with early stopping: a budget rather than a time slot.

Every rank counts its own time; the trainer makes them agree, so all ranks stop at the same update.
The clock is read once per update, in ``after_update``; no interval is needed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from noether_core import CallbackConfig, Duration, format_duration, hookimpl, parse_duration

if TYPE_CHECKING:
    from noether_core import Counter, Run


def _duration(_: Any, attribute: attrs.Attribute[Duration], value: Duration) -> None:
    parse_duration(value)


class TimerCallback:
    """Stops the run once ``duration`` of training has passed in this process."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        duration: Duration = attrs.field(validator=_duration)
        """How long this process may train: ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"`` (in quotes)."""
        resumable: bool = True
        """Pause the run (a resumable ``latest`` is saved, ``--resume`` goes on) rather than end it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._seconds = parse_duration(config.duration)
        self._deadline = float("inf")
        self._asked = False

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """It stops the run; it logs no metrics."""
        return []

    @hookimpl
    def before_training(self) -> None:
        self._deadline = time.monotonic() + self._seconds

    @hookimpl
    def after_update(self, trainer: Run, counter: Counter) -> None:
        if self._asked or time.monotonic() < self._deadline:
            return
        self._asked = True
        cfg = self.config
        trainer.request_stop(
            f"{cfg.key}: duration={cfg.duration} ({format_duration(self._seconds)}) reached at update "
            f"{counter.update}",
            resumable=cfg.resumable,
        )


__all__ = ["TimerCallback"]
