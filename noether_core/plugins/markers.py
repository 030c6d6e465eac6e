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
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]
