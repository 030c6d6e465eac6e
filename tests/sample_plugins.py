"""Plugins used by the tests, referenced by import path (``sample_plugins:Recorder``).

They are deliberately small and honest: each records what it saw so tests can assert the event order,
arguments and scheduling the trainer really produced.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from noether_core import CallbackConfig, hookimpl


class Recorder:
    """Records every event it receives as ``(event, update, extra)`` and logs ``{label}/{I}`` at_eval."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        label: str = "rec"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.events: list[tuple[str, int, Any]] = []
        self.evals = 0

    @hookimpl
    def before_training(self, counter: Any) -> None:
        self.events.append(("before_training", counter.update, None))

    @hookimpl
    def after_accumulation(
        self, counter: Any, accumulation_step: int, accumulation_steps: int, losses: Any
    ) -> None:
        assert not torch.is_grad_enabled()
        self.events.append(("after_accumulation", counter.update, (accumulation_step, accumulation_steps)))

    @hookimpl
    def after_update(self, counter: Any, grad_norm: Any, times: Any) -> None:
        self.events.append(("after_update", counter.update, grad_norm is not None))

    @hookimpl
    def after_epoch(self, counter: Any) -> None:
        self.events.append(("after_epoch", counter.update, counter.epoch))

    @hookimpl
    def at_eval(self, trainer: Any, model: torch.nn.Module, counter: Any, interval: str) -> None:
        assert not model.training
        self.evals += 1
        self.events.append(("at_eval", counter.update, interval))
        short = self.config.interval.short if self.config.interval else "eval"
        trainer.writer.add_scalar(f"{self.config.label}/{short}", float(self.evals))

    @hookimpl
    def after_training(self, counter: Any, status: str) -> None:
        self.events.append(("after_training", counter.update, status))

    def state_dict(self) -> dict[str, Any]:
        return {"evals": self.evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evals = int(state["evals"])


class ModeProbe:
    """Records ``(event, update, model.training)`` in ``after_epoch`` and ``at_eval``."""

    def __init__(self, config: CallbackConfig) -> None:
        self.seen: list[tuple[str, int, bool]] = []

    @hookimpl
    def after_epoch(self, model: torch.nn.Module, counter: Any) -> None:
        self.seen.append(("after_epoch", counter.update, model.training))

    @hookimpl
    def at_eval(self, model: torch.nn.Module, counter: Any) -> None:
        self.seen.append(("at_eval", counter.update, model.training))


class TrainModeProbe(ModeProbe):
    """A :class:`ModeProbe` that says it never runs the model."""

    needs_eval_mode = False


class StopAt:
    """Requests a stop once ``counter.update >= update``."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        update: int = 1

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def after_update(self, trainer: Any, counter: Any) -> None:
        if counter.update >= self.config.update:
            trainer.request_stop(f"reached update {self.config.update}")


class Crash:
    """Raises ``RuntimeError`` in ``event`` at ``update``."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        update: int = 1

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def after_update(self, counter: Any) -> None:
        if counter.update == self.config.update:
            raise RuntimeError(f"crash at update {counter.update}")


class Misspelled:
    @hookimpl
    def after_updat(self) -> None:  # the typo is the point
        pass


class UnknownArgument:
    @hookimpl
    def after_update(self, counter: Any, lossez: Any) -> None:
        pass


class Unmarked:
    def after_update(self, counter: Any) -> None:
        pass


class NotAnAttrsConfig:
    class Config:
        pass

    @hookimpl
    def after_update(self) -> None:
        pass


class SignalAt:
    """Sends ``signal`` (SIGTERM by default) to its own process after update ``update``: a real signal,
    delivered at a known point, so interrupt/resume tests are deterministic."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        update: int = 1
        signal: str = "SIGTERM"
        times: int = 1
        rank: int | None = None  # only this rank signals itself (None: every rank)

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def after_update(self, trainer: Any, counter: Any) -> None:
        import os
        import signal

        if counter.update == self.config.update and self.config.rank in (None, trainer.dist.rank):
            for _ in range(self.config.times):
                os.kill(os.getpid(), getattr(signal, self.config.signal))


class SaveAtEnd:
    """Saves the weights as tag ``final`` in ``after_training`` (stand-in for the checkpoint plugin)."""

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @hookimpl
    def after_training(self, trainer: Any, status: str) -> None:
        trainer.save_checkpoint("final", optim=False, trainer_state=False)


class Sleepy:
    """Sleeps ``seconds`` in every ``after_update`` (to show up in the durations report)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        seconds: float = 0.01

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def after_update(self) -> None:
        import time

        time.sleep(self.config.seconds)


#: What :class:`Tracer` saw: ``("enter" | "exit" | "raised", event, update)``.
TRACE: list[tuple[str, str, int]] = []


class Tracer:
    """Wraps every event: notes when each dispatch starts and ends (or what it raised)."""

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    def _around(self, event: str, counter: Any) -> Any:
        TRACE.append(("enter", event, counter.update))
        try:
            yield
        except Exception as exc:
            TRACE.append(("raised", event, counter.update))
            raise RuntimeError(f"traced: {exc}") from exc
        TRACE.append(("exit", event, counter.update))

    @hookimpl(wrapper=True)
    def before_training(self, counter: Any) -> Any:
        return (yield from self._around("before_training", counter))

    @hookimpl(wrapper=True)
    def after_accumulation(self, counter: Any) -> Any:
        return (yield from self._around("after_accumulation", counter))

    @hookimpl(wrapper=True)
    def after_update(self, counter: Any) -> Any:
        return (yield from self._around("after_update", counter))

    @hookimpl(wrapper=True)
    def after_epoch(self, counter: Any) -> Any:
        return (yield from self._around("after_epoch", counter))

    @hookimpl(wrapper=True)
    def at_eval(self, counter: Any) -> Any:
        return (yield from self._around("at_eval", counter))

    @hookimpl(wrapper=True)
    def after_training(self, counter: Any) -> Any:
        return (yield from self._around("after_training", counter))


class Eager:
    """Asks pluggy to call it first, which noether does not do: refused when loaded."""

    @hookimpl(tryfirst=True)
    def after_update(self) -> None:
        pass


class BadState:
    """Keeps a value a checkpoint cannot hold, in its ``state`` dict (``where="state"``) or in its
    ``state_dict()`` (``where="state_dict"``)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        where: str = "state"

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def before_training(self, state: dict[str, Any]) -> None:
        import numpy as np

        if self.config.where == "state":
            state["best"] = np.float64(1.5)

    def state_dict(self) -> dict[str, Any]:
        import numpy as np

        return {"seen": np.int64(3)} if self.config.where == "state_dict" else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Refuses:
    """A constructor that raises (e.g. a setting it cannot work with)."""

    def __init__(self, config: CallbackConfig) -> None:
        raise ValueError("no GPU to profile")

    @hookimpl
    def after_update(self) -> None:
        pass


class Norm:
    """Logs ``embedding_norm`` at its interval from a script, and declares that higher is better."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        values: list[float] = attrs.Factory(list)
        declare: bool = False

    def __init__(self, config: Config) -> None:
        self.config = config
        self.calls = 0

    @hookimpl
    def at_eval(self, trainer: Any) -> None:
        trainer.writer.add_scalar("embedding_norm", self.config.values[self.calls])
        self.calls += 1

    @staticmethod
    def produces(config: Config, run_config: Any) -> list[str]:
        return ["embedding_norm"]

    @staticmethod
    def metric_directions(config: Config) -> dict[str, str]:
        return {"embedding_norm": "higher"} if config.declare else {}


def nan_at_updates(model: torch.nn.Module, batch: Any) -> Any:
    """A train step whose loss is NaN on updates listed in ``NAN_UPDATES`` (counted by calls)."""
    from noether_core.run.train_step import default_train_step

    nan_at_updates.calls += 1  # type: ignore[attr-defined]
    out = default_train_step(model, batch)
    if nan_at_updates.calls in NAN_UPDATES:  # type: ignore[attr-defined]
        return out.total * float("nan")
    return out


nan_at_updates.calls = 0  # type: ignore[attr-defined]
NAN_UPDATES: set[int] = set()
