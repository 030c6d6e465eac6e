"""Raises ImportError when imported, as a plugin with a missing dependency does."""

from __future__ import annotations

import noether_dependency_that_is_not_installed  # type: ignore[import-not-found]  # noqa: F401

from noether_core import hookimpl


class BrokenCallback:
    @hookimpl
    def after_update(self) -> None:
        pass
