"""A plugin written as plain ``@hookimpl`` functions: configured by its interval alone."""

from __future__ import annotations

from typing import Any

from noether_core import hookimpl


@hookimpl
def at_eval(trainer: Any, counter: Any, config: Any) -> None:
    trainer.writer.add_scalar(f"heartbeat/{config.interval.short}", counter.update)
