"""A plugin written as plain ``@hookimpl`` functions, with settings of its own (a module-level
``Config``) and state kept across a resume (the ``state`` argument)."""

from __future__ import annotations

from typing import Any

import attrs

from noether_core import CallbackConfig, hookimpl


@attrs.frozen(kw_only=True)
class Config(CallbackConfig):
    label: str = "updates"
    """The metric logged at each tick: ``{label}/{interval}``."""
    step: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    """How much each update counts."""


@hookimpl
def after_update(config: Config, state: dict[str, Any]) -> None:
    state["n"] = state.get("n", 0) + config.step


@hookimpl
def at_eval(trainer: Any, config: Config, state: dict[str, Any]) -> None:
    trainer.writer.add_scalar(f"{config.label}/{config.interval.short}", state.get("n", 0))
