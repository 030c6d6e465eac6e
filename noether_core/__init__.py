"""noether: a PyTorch training framework whose callbacks are plugins."""

from noether_core.config import CallbackConfig, RunConfig
from noether_core.errors import (
    ConfigError,
    ConfigIssue,
    NoetherError,
    PluginLoadError,
    PluginValidationError,
    TrainingError,
    UsageError,
)
from noether_core.plugins.markers import hookimpl, hookspec
from noether_core.plugins.scheduling import Interval, IntervalScheduler
from noether_core.run.counter import Counter, RunEnd

__version__ = "0.1.0"

__all__ = [
    "CallbackConfig",
    "ConfigError",
    "ConfigIssue",
    "Counter",
    "Interval",
    "IntervalScheduler",
    "NoetherError",
    "PluginLoadError",
    "PluginValidationError",
    "RunConfig",
    "RunEnd",
    "TrainingError",
    "UsageError",
    "__version__",
    "hookimpl",
    "hookspec",
]
