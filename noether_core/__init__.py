"""noether: a PyTorch training framework whose callbacks are plugins.

This package's top level is the public face: everything a plugin needs is importable from here, and
the built-in plugins (``noether_plugins``) import nothing else, so a third-party plugin can do whatever
a built-in does. Modules below ``noether_core`` are the engine's own and may change between releases.

A plugin is a class, or a module of functions, with ``@hookimpl`` implementations of the events in
:mod:`noether_core.plugins.hookspecs` (``noether hooks`` lists them)::

    import attrs
    from noether_core import CallbackConfig, Counter, Run, hookimpl

    class LossPrinter:
        @attrs.frozen(kw_only=True)
        class Config(CallbackConfig):
            prefix: str = "loss"

        def __init__(self, config: Config) -> None:
            self.config = config

        @hookimpl
        def at_eval(self, trainer: Run, counter: Counter) -> None:
            value = trainer.writer.get(f"loss/online/total/{self.config.interval}")
            print(self.config.prefix, counter.update, value)

Register it in your package's ``pyproject.toml`` and name it in a config's ``callbacks``::

    [project.entry-points."noether.callbacks"]
    LossPrinter = "my_package.printer:LossPrinter"

Training from Python runs exactly what ``noether train`` runs::

    import noether_core

    result = noether_core.train("my_run.yaml", overrides=["trainer.max_epochs=3"])
    print(result.status, result.run_dir, result.metrics["loss/val/total"])

Names are loaded when first used (``import noether_core`` does not import torch), so the ``noether``
command starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_FACE: dict[str, str] = {
    # writing a plugin
    "hookimpl": "noether_core.plugins.markers",
    "hookspec": "noether_core.plugins.markers",
    "CallbackConfig": "noether_core.config.schema",
    "EvalInterval": "noether_core.plugins.hookspecs",
    "RunStatus": "noether_core.plugins.hookspecs",
    "CORE_ARGUMENTS": "noether_core.plugins.hookspecs",
    "HOOK_NAMES": "noether_core.plugins.hookspecs",
    # what the events pass
    "Run": "noether_core.run.protocol",
    "Entry": "noether_core.run.protocol",
    "Counter": "noether_core.run.counter",
    "RunEnd": "noether_core.run.counter",
    "RunConfig": "noether_core.config.schema",
    # scheduling
    "Interval": "noether_core.plugins.scheduling",
    "IntervalScheduler": "noether_core.plugins.scheduling",
    # the run's services, by type
    "LogWriter": "noether_core.io.log_writer",
    "CheckpointWriter": "noether_core.io.checkpoints",
    "CheckpointSet": "noether_core.io.checkpoints",
    "MetricProperties": "noether_core.io.metric_properties",
    "RunPaths": "noether_core.io.paths",
    "Tracker": "noether_core.io.trackers",
    "DataContainer": "noether_core.run.data",
    "DistInfo": "noether_core.run.distributed",
    # checkpoints and files
    "load_checkpoint": "noether_core.io.checkpoints",
    "atomic_torch_save": "noether_core.io.checkpoints",
    "check_weights_only_safe": "noether_core.io.checkpoints",
    "read_metrics": "noether_core.io.metrics_file",
    "atomic_write_text": "noether_core.io.atomic_files",
    # durations as configs write them ("HH:MM:SS")
    "Duration": "noether_core.config.durations",
    "parse_duration": "noether_core.config.durations",
    "format_duration": "noether_core.config.durations",
    # metric names and checkpoint tags
    "tag_for_metric": "noether_core.io.paths",
    "format_ema_factor": "noether_core.io.paths",
    "parse_position_tag": "noether_core.io.paths",
    # evaluation over a dataset
    "PeriodicDataIteratorCallback": "noether_core.run.evaluation",
    "PeriodicDataIteratorConfig": "noether_core.run.evaluation",
    "batch_length": "noether_core.run.evaluation",
    "collate": "noether_core.run.evaluation",
    "gather_results": "noether_core.run.evaluation",
    "merge_rank_results": "noether_core.run.evaluation",
    "to_device": "noether_core.run.device",
    # several processes
    "mean_over_ranks": "noether_core.run.distributed",
    # models and train steps
    "CompositeModel": "noether_core.run.models",
    "StepOutput": "noether_core.run.train_step",
    "TrainStep": "noether_core.run.train_step",
    "as_step_output": "noether_core.run.train_step",
    # running from Python
    "train": "noether_core.run.launch",
    "evaluate": "noether_core.run.launch",
    "RunResult": "noether_core.run.launch",
    # errors
    "NoetherError": "noether_core.errors",
    "ConfigError": "noether_core.errors",
    "ConfigIssue": "noether_core.errors",
    "UsageError": "noether_core.errors",
    "RunDirectoryBusyError": "noether_core.errors",
    "PluginLoadError": "noether_core.errors",
    "PluginValidationError": "noether_core.errors",
    "UnknownKindError": "noether_core.errors",
    "TrainingError": "noether_core.errors",
    "PluginFailure": "noether_core.errors",
    "NonFiniteLossError": "noether_core.errors",
    "CheckpointLoadError": "noether_core.errors",
    "CheckpointWriteError": "noether_core.errors",
    "DuplicateMetricError": "noether_core.errors",
    "UnknownMetricDirectionError": "noether_core.errors",
}

if TYPE_CHECKING:
    from noether_core.config.durations import Duration, format_duration, parse_duration
    from noether_core.config.schema import CallbackConfig, RunConfig
    from noether_core.errors import (
        CheckpointLoadError,
        CheckpointWriteError,
        ConfigError,
        ConfigIssue,
        DuplicateMetricError,
        NoetherError,
        NonFiniteLossError,
        PluginFailure,
        PluginLoadError,
        PluginValidationError,
        RunDirectoryBusyError,
        TrainingError,
        UnknownKindError,
        UnknownMetricDirectionError,
        UsageError,
    )
    from noether_core.io.atomic_files import atomic_write_text
    from noether_core.io.checkpoints import (
        CheckpointSet,
        CheckpointWriter,
        atomic_torch_save,
        check_weights_only_safe,
        load_checkpoint,
    )
    from noether_core.io.log_writer import LogWriter
    from noether_core.io.metric_properties import MetricProperties
    from noether_core.io.metrics_file import read_metrics
    from noether_core.io.paths import RunPaths, format_ema_factor, parse_position_tag, tag_for_metric
    from noether_core.io.trackers import Tracker
    from noether_core.plugins.hookspecs import CORE_ARGUMENTS, HOOK_NAMES, EvalInterval, RunStatus
    from noether_core.plugins.markers import hookimpl, hookspec
    from noether_core.plugins.scheduling import Interval, IntervalScheduler
    from noether_core.run.counter import Counter, RunEnd
    from noether_core.run.data import DataContainer
    from noether_core.run.device import to_device
    from noether_core.run.distributed import DistInfo, mean_over_ranks
    from noether_core.run.evaluation import (
        PeriodicDataIteratorCallback,
        PeriodicDataIteratorConfig,
        batch_length,
        collate,
        gather_results,
        merge_rank_results,
    )
    from noether_core.run.launch import RunResult, evaluate, train
    from noether_core.run.models import CompositeModel
    from noether_core.run.protocol import Entry, Run
    from noether_core.run.train_step import StepOutput, TrainStep, as_step_output
else:

    def __getattr__(name: str) -> Any:
        module = _FACE.get(name)
        if module is None:
            raise AttributeError(f"module 'noether_core' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_FACE})


__all__ = [
    "CORE_ARGUMENTS",
    "HOOK_NAMES",
    "CallbackConfig",
    "CheckpointLoadError",
    "CheckpointSet",
    "CheckpointWriteError",
    "CheckpointWriter",
    "CompositeModel",
    "ConfigError",
    "ConfigIssue",
    "Counter",
    "DataContainer",
    "DistInfo",
    "DuplicateMetricError",
    "Duration",
    "Entry",
    "EvalInterval",
    "Interval",
    "IntervalScheduler",
    "LogWriter",
    "MetricProperties",
    "NoetherError",
    "NonFiniteLossError",
    "PeriodicDataIteratorCallback",
    "PeriodicDataIteratorConfig",
    "PluginFailure",
    "PluginLoadError",
    "PluginValidationError",
    "Run",
    "RunConfig",
    "RunDirectoryBusyError",
    "RunEnd",
    "RunPaths",
    "RunResult",
    "RunStatus",
    "StepOutput",
    "Tracker",
    "TrainStep",
    "TrainingError",
    "UnknownKindError",
    "UnknownMetricDirectionError",
    "UsageError",
    "__version__",
    "as_step_output",
    "atomic_torch_save",
    "atomic_write_text",
    "batch_length",
    "check_weights_only_safe",
    "collate",
    "evaluate",
    "format_duration",
    "format_ema_factor",
    "gather_results",
    "hookimpl",
    "hookspec",
    "load_checkpoint",
    "mean_over_ranks",
    "merge_rank_results",
    "parse_duration",
    "parse_position_tag",
    "read_metrics",
    "tag_for_metric",
    "to_device",
    "train",
]
