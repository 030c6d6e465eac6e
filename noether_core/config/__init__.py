"""Run configs: attrs classes (:mod:`.schema`), structured from YAML by one cattrs converter
(:mod:`.loader`)."""

from noether_core.config.schema import (
    CallbackConfig,
    DatasetConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    TrackerConfig,
    TrainerConfig,
)

__all__ = [
    "CallbackConfig",
    "DatasetConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrackerConfig",
    "TrainerConfig",
]
