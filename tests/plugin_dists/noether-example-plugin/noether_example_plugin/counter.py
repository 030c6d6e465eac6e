"""``ExampleCounter``: a class plugin that counts optimizer updates and logs the count when due.

One instance per ``callbacks`` entry, built from that entry's validated :class:`ExampleCounter.Config`::

    callbacks:
      - kind: ExampleCounter
        every_n_updates: 10
        label: steps        # logs steps/U10
"""

from __future__ import annotations

from typing import Any

import attrs

from noether_core import CallbackConfig, hookimpl


class ExampleCounter:
    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        label: str = "count"
        """First part of the metric key ``{label}/{interval}``."""

    def __init__(self, config: ExampleCounter.Config) -> None:
        self.config = config
        self.count = 0

    @hookimpl
    def after_update(self, counter: Any) -> None:
        self.count += 1

    @hookimpl
    def at_eval(self, trainer: Any, counter: Any) -> None:
        interval = self.config.interval
        assert interval is not None, "an entry of a plugin with at_eval always has an interval"
        trainer.writer.add_scalar(f"{self.config.label}/{interval.short}", self.count)

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = int(state["count"])
