"""A valid plugin registered under a kind that another distribution claims too."""

from __future__ import annotations

from typing import Any

import attrs

from noether_core import CallbackConfig, hookimpl


class ConflictingCounter:
    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        label: str = "conflicting"

    def __init__(self, config: ConflictingCounter.Config) -> None:
        self.config = config
        self.count = 0

    @hookimpl
    def after_update(self, counter: Any) -> None:
        self.count += 1
