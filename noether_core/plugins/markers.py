"""The two pluggy markers of the ``noether`` project.

``hookspec`` marks the event specifications in :mod:`noether_core.plugins.hookspecs`; plugin authors only ever
need ``hookimpl``::

    from noether_core import hookimpl

    @hookimpl
    def after_update(counter, losses):
        ...
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "noether"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks an event specification; only :mod:`noether_core.plugins.hookspecs` uses it."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a plugin's implementation of an event: ``@hookimpl`` on a function or method named for the event.

Entries are called in the order of the config's ``callbacks`` list, so pluggy's ordering options
(``tryfirst``, ``trylast``) are refused when the plugin is loaded.
"""

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]
