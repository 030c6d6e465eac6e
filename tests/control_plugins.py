"""Plugins and a train step for the tests of run control (time limits, default entries), importable by
``noether`` subprocesses that have ``tests/`` on their ``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import attrs
from torch import nn

from noether_core import CallbackConfig, Counter, Run, StepOutput, hookimpl
from noether_core.run.train_step import default_train_step


def slow_step(model: nn.Module, batch: Any) -> StepOutput:
    """The default train step, 20 ms slower: a time limit of a second falls within a short run."""
    time.sleep(0.02)
    return default_train_step(model, batch)


class SlowRank:
    """Sleeps ``seconds`` after every update on rank ``rank`` only: that rank reads its clock later than
    the others, so a time limit passes on it first."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        rank: int = 1
        seconds: float = 0.1

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def after_update(self, trainer: Run) -> None:
        if trainer.rank == self.config.rank:
            time.sleep(self.config.seconds)


class RecordEnd:
    """Writes ``{rank}.json`` (the update, the status and the stop request) to ``$NOETHER_TEST_ENDS``
    when the run ends, on every rank."""

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @hookimpl
    def after_training(self, trainer: Run, counter: Counter, status: str) -> None:
        directory = os.environ.get("NOETHER_TEST_ENDS")
        if directory:
            record = {"update": counter.update, "status": status, "stop": trainer.stop_requested}
            with open(os.path.join(directory, f"{trainer.rank}.json"), "w") as file:
                json.dump(record, file)


class FailsAt:
    """Raises in ``at_eval`` at update ``at``."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        at: int = 1

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, counter: Counter) -> None:
        if counter.update == self.config.at:
            raise RuntimeError(f"failing at update {counter.update}")


class Logs:
    """Logs 1.0 under ``metric`` at its ticks and declares ``declared`` (default: ``metric``) as what
    it produces."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        metric: str = "custom/value"
        declared: str | None = None

    def __init__(self, config: Config) -> None:
        self.config = config

    @staticmethod
    def produces(config: Config, run_config: Any) -> list[str]:
        return [config.declared or config.metric]

    @hookimpl
    def at_eval(self, trainer: Run) -> None:
        trainer.writer.add_scalar(self.config.metric, 1.0)


class AlsoLogs(Logs):
    """:class:`Logs` under another kind."""
