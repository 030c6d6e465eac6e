"""Early stopping: end a run before its configured end, as a success.

A stopper asks the trainer to stop (``trainer.request_stop``); the trainer finishes the current step
(every entry due at this update still runs and its metrics are flushed), saves a resumable
checkpoint if a checkpoint plugin does so, runs ``after_training(status="stopped")`` and exits with
status 0. Stoppers do nothing under ``noether eval``.

* :class:`FixedEarlyStopper` stops once the run reaches ``stop_at_epoch``, ``stop_at_update`` or
  ``stop_at_sample`` (exactly one). It checks after every update unless given an interval.
* :class:`MetricEarlyStopper` watches ``metric_key`` (logged earlier in the same step) and stops after
  ``tolerance`` consecutive evaluations without an improvement on the best value so far by more than
  ``min_delta`` (an equal value is no improvement), in its ``mode`` (by default the metric's declared
  direction). Its best value and count are kept across resume.
* :class:`ThresholdStopper` watches ``metric_key`` and stops once it crosses ``stop_at`` in its better
  direction (a success), or ``diverge_at`` in the other, or is not finite (a divergence); either way the
  run ends ``stopped`` with exit status 0, and ``summary.yaml`` gives the reason (``summary.stop_reason``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs
from attrs import validators as v

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run, RunConfig

log = logging.getLogger("noether.early_stopping")

_pos: Callable[..., Any] = v.optional(v.ge(1))


def _finite(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, got {value}")


def _higher_is_better(trainer: Run, key: str, mode: Literal["min", "max"] | None) -> bool:
    if mode is not None:
        return mode == "max"
    return trainer.metrics.higher_is_better(key)


def _logged_value(trainer: Run, metric_key: str, entry: str) -> float:
    """The value of ``metric_key`` logged in this step, which a stopper needs from a producer before it."""
    value = trainer.writer.get(metric_key)
    if value is None:
        raise LookupError(
            f"{metric_key!r} was not logged in this step; list its producer before {entry!r}, "
            "due at the same updates"
        )
    return value


class FixedEarlyStopper:
    """Stops the run at a fixed epoch, update or sample count."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        every_n_updates: int | None = attrs.field(default=1, validator=_pos)
        """Check every this many updates: by default after every update, so the stop is exact."""
        stop_at_epoch: int | None = attrs.field(default=None, validator=_pos)
        """Stop once this many epochs are done; set exactly one of the ``stop_at_*`` fields."""
        stop_at_update: int | None = attrs.field(default=None, validator=_pos)
        """Stop once this many updates are done."""
        stop_at_sample: int | None = attrs.field(default=None, validator=_pos)
        """Stop once this many samples were trained on."""

        def __attrs_post_init__(self) -> None:
            given = [
                f
                for f in ("stop_at_epoch", "stop_at_update", "stop_at_sample")
                if getattr(self, f) is not None
            ]
            if len(given) != 1:
                got = f"; got {', '.join(given)}" if given else ""
                raise ValueError(f"set exactly one of stop_at_epoch, stop_at_update, stop_at_sample{got}")

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, interval: EvalInterval) -> None:
        if interval == "eval" or counter.is_finished:  # at the configured end the run completes anyway
            return
        cfg = self.config
        for unit, limit, now in (
            ("epoch", cfg.stop_at_epoch, counter.epoch),
            ("update", cfg.stop_at_update, counter.update),
            ("sample", cfg.stop_at_sample, counter.sample),
        ):
            if limit is not None and now >= limit:
                trainer.request_stop(f"{cfg.key}: reached {unit} {now} (stop_at_{unit}={limit})")

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        return []


class MetricEarlyStopper:
    """Stops after ``tolerance`` consecutive evaluations in which ``metric_key`` did not improve."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        metric_key: str = attrs.field(validator=v.min_len(1))
        """The metric to watch, e.g. ``loss/val/total``; logged this step by an earlier entry."""
        tolerance: int = attrs.field(validator=v.ge(1))
        """Consecutive evaluations without a strict improvement on the best value that stop the run."""
        min_delta: float = attrs.field(default=0.0, validator=[v.ge(0.0), _finite])
        """An improvement on the best value by no more than this does not count (nor reset the count)."""
        mode: Literal["min", "max"] | None = None
        """``min`` (lower is better) or ``max``; by default the metric's declared direction."""
        on_nan: Literal["stagnate", "stop", "fail"] = "stagnate"
        """A NaN value: ``stagnate`` counts it as an evaluation without improvement, ``stop`` stops at once,
        ``fail`` ends the run with an error."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.best: float | None = None
        self.stagnant = 0

    @hookimpl
    def at_eval(self, trainer: Run, interval: EvalInterval) -> None:
        if interval == "eval":
            return
        cfg = self.config
        value = _logged_value(trainer, cfg.metric_key, cfg.key)
        if math.isnan(value):
            if cfg.on_nan == "fail":
                raise ValueError(f"{cfg.metric_key!r} is NaN (on_nan: fail)")
            if cfg.on_nan == "stop":
                trainer.request_stop(f"{cfg.key}: {cfg.metric_key} is NaN (on_nan: stop)")
                return
        higher = _higher_is_better(trainer, cfg.metric_key, cfg.mode)
        delta = cfg.min_delta
        if not math.isnan(value) and (
            self.best is None or (value - self.best > delta if higher else self.best - value > delta)
        ):
            self.best = value
            self.stagnant = 0
            return
        self.stagnant += 1
        stop = self.stagnant >= cfg.tolerance
        if trainer.is_main:
            log.info(
                "%s did not improve: best %.6g, now %.6g (%d/%d)%s",
                cfg.metric_key,
                self.best if self.best is not None else math.nan,
                value,
                self.stagnant,
                cfg.tolerance,
                " -> stopping" if stop else "",
            )
        if stop:
            trainer.request_stop(
                f"{cfg.key}: {cfg.metric_key} did not improve on {self.best} in {self.stagnant} evaluations"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stagnant": self.stagnant}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.stagnant = int(state["stagnant"])

    @classmethod
    def consumes(cls, config: Config) -> list[str]:
        return [config.metric_key]

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        return []


class ThresholdStopper:
    """Stops when ``metric_key`` reaches ``stop_at`` (success) or ``diverge_at`` / a non-finite value."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        metric_key: str = attrs.field(validator=v.min_len(1))
        """The metric to watch, e.g. ``loss/val/total``; logged this step by an earlier entry."""
        stop_at: float | None = attrs.field(default=None, validator=_finite)
        """Stop as a success once the value is this good or better (``<=`` for lower is better)."""
        diverge_at: float | None = attrs.field(default=None, validator=_finite)
        """Stop as diverged once the value is this bad or worse (``>=`` for lower is better)."""
        mode: Literal["min", "max"] | None = None
        """``min`` (lower is better) or ``max``; by default the metric's declared direction."""
        stop_on_non_finite: bool = True
        """A NaN or infinite value stops the run as diverged."""

        def __attrs_post_init__(self) -> None:
            if self.stop_at is None and self.diverge_at is None and not self.stop_on_non_finite:
                raise ValueError("set stop_at, diverge_at or stop_on_non_finite: otherwise it never stops")

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, interval: EvalInterval) -> None:
        if interval == "eval":
            return
        cfg = self.config
        value = _logged_value(trainer, cfg.metric_key, cfg.key)
        where = f"at update {counter.update}"
        if not math.isfinite(value):
            if cfg.stop_on_non_finite:
                trainer.request_stop(f"{cfg.key}: diverged: {cfg.metric_key} is {value} {where}")
            return
        higher = _higher_is_better(trainer, cfg.metric_key, cfg.mode)
        if cfg.diverge_at is not None and (value <= cfg.diverge_at if higher else value >= cfg.diverge_at):
            trainer.request_stop(
                f"{cfg.key}: diverged: {cfg.metric_key} = {value:.6g} crossed diverge_at={cfg.diverge_at} "
                f"{where}"
            )
        elif cfg.stop_at is not None and (value >= cfg.stop_at if higher else value <= cfg.stop_at):
            trainer.request_stop(
                f"{cfg.key}: reached the threshold: {cfg.metric_key} = {value:.6g} crossed "
                f"stop_at={cfg.stop_at} {where}"
            )

    @classmethod
    def consumes(cls, config: Config) -> list[str]:
        return [config.metric_key]

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        return []


__all__ = ["FixedEarlyStopper", "MetricEarlyStopper", "ThresholdStopper"]
