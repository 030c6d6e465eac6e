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
    """Raises ``RuntimeError`` in ``after_update`` at ``update`` (on rank ``rank`` alone when given)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        update: int = 1
        rank: int | None = None

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def after_update(self, trainer: Any, counter: Any) -> None:
        if counter.update == self.config.update and self.config.rank in (None, trainer.rank):
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


# ------------------------------------------------------------------------------ signals and endings


def _send(signals: list[str]) -> None:
    import os
    import signal

    for name in signals:
        os.kill(os.getpid(), getattr(signal, name))


class SignalIn:
    """Sends itself ``signals`` (in that order) in ``hook`` at update ``update`` (any update when
    ``None``): real signals at points a test chooses (``after_training`` comes after the stop's save)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        hook: str = "after_training"
        update: int | None = None
        signals: list[str] = attrs.Factory(lambda: ["SIGTERM", "SIGINT"])

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sent = False

    def _maybe(self, hook: str, counter: Any) -> None:
        due = self.config.update is None or counter.update == self.config.update
        if hook == self.config.hook and due and not self.sent:
            self.sent = True
            _send(self.config.signals)

    @hookimpl
    def after_update(self, counter: Any) -> None:
        self._maybe("after_update", counter)

    @hookimpl
    def after_training(self, counter: Any) -> None:
        self._maybe("after_training", counter)


#: Signals a :class:`SignallingLinear` sends itself the next time its weights are saved.
SIGNALS_ON_SAVE: list[str] = []


class SignalOnSave(SignalIn):
    """Like :class:`SignalIn` (SIGTERM by default), and arms every :class:`SignallingLinear` with
    ``on_save``: the second signal then arrives while the checkpoint of the stop is being written,
    between two of its files."""

    @attrs.frozen(kw_only=True)
    class Config(SignalIn.Config):
        hook: str = "after_update"
        signals: list[str] = attrs.Factory(lambda: ["SIGTERM"])
        on_save: list[str] = attrs.Factory(lambda: ["SIGINT"])

    def _maybe(self, hook: str, counter: Any) -> None:
        if not self.sent and hook == self.config.hook and counter.update == self.config.update:
            SIGNALS_ON_SAVE.extend(self.config.on_save)
        super()._maybe(hook, counter)


class SignallingLinear(torch.nn.Linear):
    """A linear layer (a model part) that sends itself the signals of :data:`SIGNALS_ON_SAVE` when its
    ``state_dict()`` is taken: its file is written after the parts listed before it."""

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        signals = list(SIGNALS_ON_SAVE)
        SIGNALS_ON_SAVE.clear()
        _send(signals)
        return super().state_dict(*args, **kwargs)


class Hang:
    """Never returns from ``hook`` at update ``update`` (any update when ``None``), after sending
    itself ``signal`` if given: a hung plugin, for the stop watchdog. With ``in_c``, it waits in C code
    that never returns to the interpreter, as a CUDA or NCCL wait does: a shell it waits for sends the
    signal, so the Python signal handler never gets to run."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        hook: str = "at_eval"
        update: int | None = 1
        signal: str | None = None
        in_c: bool = False
        every_n_updates: int | None = 1
        rank: int | None = None  # only this rank hangs (None: every rank)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rank = 0

    @hookimpl
    def before_training(self, trainer: Any) -> None:
        self.rank = trainer.rank

    def _maybe(self, hook: str, counter: Any) -> None:
        import os
        import time

        due = self.config.update is None or counter.update == self.config.update
        if hook != self.config.hook or not due or self.config.rank not in (None, self.rank):
            return
        if self.config.in_c:
            send = (
                f"kill -{self.config.signal.removeprefix('SIG')} {os.getpid()}; "
                if self.config.signal
                else ""
            )
            # a signal interrupts neither system() nor its waitpid(); the sleep keeps no pipe of the test open
            os.system(f"{send}exec sleep 20 </dev/null >/dev/null 2>&1")
        elif self.config.signal is not None:
            _send([self.config.signal])
        while True:
            time.sleep(0.05)

    @hookimpl
    def after_update(self, counter: Any) -> None:
        self._maybe("after_update", counter)

    @hookimpl
    def at_eval(self, counter: Any) -> None:
        self._maybe("at_eval", counter)

    @hookimpl
    def after_training(self, counter: Any) -> None:
        self._maybe("after_training", counter)


class RaiseIn:
    """Raises in ``hook`` at update ``update``: ``SystemExit(code)`` (a plugin calling ``sys.exit``),
    ``KeyboardInterrupt`` or ``RuntimeError``."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        hook: str = "after_update"
        update: int | None = 1
        error: str = "SystemExit"
        code: int = 0

    def __init__(self, config: Config) -> None:
        self.config = config

    def _maybe(self, hook: str, counter: Any) -> None:
        import sys

        due = self.config.update is None or counter.update == self.config.update
        if hook != self.config.hook or not due:
            return
        if self.config.error == "SystemExit":
            sys.exit(self.config.code)
        if self.config.error == "KeyboardInterrupt":
            raise KeyboardInterrupt
        raise RuntimeError(f"{self.config.error} in {hook}")

    @hookimpl
    def after_update(self, counter: Any) -> None:
        self._maybe("after_update", counter)

    @hookimpl
    def after_training(self, counter: Any) -> None:
        self._maybe("after_training", counter)


class StateFails:
    """A stateful plugin whose ``state_dict()`` raises from its ``after``-th call on (``which:
    state_dict``), or whose ``load_state_dict()`` raises (``which: load_state_dict``)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        which: str = "state_dict"
        after: int = 1

    def __init__(self, config: Config) -> None:
        self.config = config
        self.calls = 0

    @hookimpl
    def before_training(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        self.calls += 1
        if self.config.which == "state_dict" and self.calls > self.config.after:
            raise RuntimeError("cannot serialize the cache")
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.config.which == "load_state_dict":
            raise KeyError("'calls' has another layout now")


class LogAtEnd:
    """Logs ``end/value`` in ``after_training`` (two entries log the same key: an error at the flush)."""

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @hookimpl
    def after_training(self, trainer: Any) -> None:
        trainer.writer.add_scalar("end/value", 1.0)


class WrapperFreed:
    """Prints, when the trainer's DistributedDataParallel wrapper is freed (or the process ends with it
    alive), whether the process group was still up then: ``rank R: DDP freed with the process group
    up: True``."""

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config

    @hookimpl
    def before_training(self, trainer: Any) -> None:
        import sys
        import weakref

        import torch.distributed as dist

        wrapper = trainer.train_model
        if not isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            return
        rank = trainer.rank

        def report() -> None:
            up = dist.is_initialized()
            print(f"rank {rank}: DDP freed with the process group up: {up}", file=sys.stderr)

        weakref.finalize(wrapper, report)
