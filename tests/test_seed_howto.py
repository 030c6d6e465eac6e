"""The how-to guide's YAML example (seeds/002): its periodic entries validate unchanged; its
BestMetricCallback entry uses ``metric_key``, which is not a BestMetricCallback field (the reference
documents ``source_metric_key``), so noether rejects it with a did-you-mean instead of guessing."""

from __future__ import annotations

import pytest
import yaml

from noether_core.config.loader import structure_config
from noether_core.errors import ConfigError
from noether_core.plugins.registry import PluginRegistry

HOWTO = """\
callbacks:
  - kind: noether.core.callbacks.ProgressCallback
    every_n_updates: 10
  - kind: noether.core.callbacks.BestMetricCallback
    every_n_epochs: 1
    metric_key: "val/accuracy"
  - kind: noether.core.callbacks.LrCallback
    every_n_updates: 1
"""

RUN = {"trainer": {"max_epochs": 2}, "model": {"kind": "mlp"}, "datasets": {"train": {"kind": "blobs"}}}


def test_howto_periodic_entries_validate_unchanged() -> None:
    callbacks = yaml.safe_load(HOWTO)["callbacks"]
    config = structure_config(
        {**RUN, "callbacks": [callbacks[0], callbacks[2]]}, PluginRegistry.from_environment()
    )
    assert [c.kind for c in config.callbacks] == ["ProgressCallback", "LrCallback"]
    assert [c.interval.short for c in config.callbacks if c.interval] == ["U10", "U1"]


def test_howto_best_metric_entry_is_rejected_with_a_hint() -> None:
    with pytest.raises(ConfigError) as info:
        structure_config({**RUN, **yaml.safe_load(HOWTO)}, PluginRegistry.from_environment())
    messages = [str(issue) for issue in info.value.issues]
    assert "callbacks[1].metric_key: unknown field; did you mean 'source_metric_key'?" in messages
