"""``example_heartbeat``: a plugin that is a module of ``@hookimpl`` functions.

It has no config of its own: each entry is configured by its interval alone, and ``config`` (the entry's
:class:`~noether_core.CallbackConfig`) tells the functions which entry they are serving::

    callbacks:
      - kind: example_heartbeat
        every_n_updates: 2      # logs heartbeat/U2 = the update count
"""

from __future__ import annotations

from typing import Any

from noether_core import CallbackConfig, hookimpl


@hookimpl
def at_eval(trainer: Any, counter: Any, config: CallbackConfig) -> None:
    interval = config.interval
    assert interval is not None, "an entry of a plugin with at_eval always has an interval"
    trainer.writer.add_scalar(f"heartbeat/{interval.short}", counter.update)
