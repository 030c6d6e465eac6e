"""``DatasetStatsCallback``: the length of every dataset of the run, once, before training.

A module of ``@hookimpl`` functions (no config beyond ``kind``). For each dataset ``d`` of the config's
``datasets`` section it writes the run summary ``ds_stats/{d}/len`` and prints one line::

    Dataset lengths: train=4096, val=512, test=512
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from noether_core import hookimpl

if TYPE_CHECKING:
    from noether_core import Run

log = logging.getLogger("noether")


def produces(config: object, run_config: object) -> list[str]:
    """Summaries only (``ds_stats/...``), no metrics."""
    return []


@hookimpl
def before_training(trainer: Run) -> None:
    lengths = trainer.data.lengths()
    for name, length in lengths.items():
        trainer.writer.add_summary(f"ds_stats/{name}/len", length)
    log.info("Dataset lengths: %s", ", ".join(f"{name}={length}" for name, length in lengths.items()))
