"""Where the run's time went: every entry's seconds in every event, reported when training ends.

The plugin manager times each call as it dispatches (one clock read per entry); this module turns the
totals into the table at the end of ``log.txt``, the ``durations`` summary of ``summary.yaml``, and a
warning for a plugin that took more than ``trainer.slow_plugin_share`` of the training time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from noether_core.io.trackers import Tracker
from noether_core.plugins.manager import PluginManager

log = logging.getLogger("noether")


def report_durations(
    plugins: PluginManager, training_seconds: float, trackers: Sequence[Tracker], slow_share: float
) -> None:
    """Log the slowest entries, give the trackers the ``durations`` summary, and warn about entries
    slower than ``slow_share`` of ``training_seconds``."""
    rows = plugins.durations()
    total = training_seconds
    summary: list[dict[str, Any]] = [
        {
            "plugin": slot.key,
            "event": hook,
            "seconds": round(seconds, 6),
            "calls": calls,
            "share_of_training": round(seconds / total if total > 0 else 0.0, 4),
        }
        for slot, hook, seconds, calls in rows
    ]
    for tracker in trackers:
        tracker.set_summary("durations", {"training_seconds": round(total, 3), "plugins": summary})
    if not rows:
        return
    lines = [f"plugin time ({total:.2f}s of training, slowest first):"]
    for row in summary[:10]:
        lines.append(
            f"  {row['seconds']:9.4f}s {row['share_of_training']:6.1%}  {row['plugin']} {row['event']} "
            f"({row['calls']} call{'' if row['calls'] == 1 else 's'})"
        )
    log.info("\n".join(lines))
    per_plugin: dict[str, float] = {}
    for row in summary:
        per_plugin[row["plugin"]] = per_plugin.get(row["plugin"], 0.0) + row["seconds"]
    for name, seconds in per_plugin.items():
        if total > 0 and seconds / total > slow_share:
            log.warning(
                "plugin %r took %.1f%% of the training time (%.2fs), more than trainer.slow_plugin_share=%s",
                name,
                100 * seconds / total,
                seconds,
                slow_share,
            )


__all__ = ["report_durations"]
