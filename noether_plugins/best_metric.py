"""BestMetricCallback: other metrics at the step where a source metric was best.

Whenever ``source_metric_key`` (logged earlier in the same step) improves on its best value so far, the
callback logs every ``target_metric_keys`` value (which must be present) and every
``optional_target_metric_keys`` value present now as ``{target}/at_best/{source}``, and remembers them; at
its other evaluations it logs the remembered values again, so the curves stay continuous. Example: the
test loss at the epoch with the best validation loss, which is what early stopping would have kept.

"Better" is the direction of ``trainer.metrics`` for the source key; a NaN is never better. The best
value and the remembered targets are kept across resume.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import attrs
from attrs import validators as v

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from noether_core import EvalInterval, Run, RunConfig

log = logging.getLogger("noether.best_metric")

_keys = v.optional(v.deep_iterable(v.min_len(1)))


class BestMetricCallback:
    """Logs ``{target}/at_best/{source}`` for the step where ``source_metric_key`` was best."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        source_metric_key: str = attrs.field(validator=v.min_len(1))
        """The metric whose best value picks the step, e.g. ``loss/val/total``; logged this step by an
        earlier entry."""
        target_metric_keys: list[str] | None = attrs.field(default=None, validator=_keys)
        """Metrics logged as ``{target}/at_best/{source}``; each must be logged whenever the source is."""
        optional_target_metric_keys: list[str] | None = attrs.field(default=None, validator=_keys)
        """Metrics logged like ``target_metric_keys`` when present, skipped when not; set this or
        ``target_metric_keys``."""

        def __attrs_post_init__(self) -> None:
            if not self.target_metric_keys and not self.optional_target_metric_keys:
                raise ValueError(
                    "set target_metric_keys or optional_target_metric_keys "
                    "(the metrics to log at the best step)"
                )

    def __init__(self, config: Config) -> None:
        self.config = config
        self.best: float | None = None
        self.at_best: dict[str, float] = {}

    @hookimpl
    def at_eval(self, trainer: Run, interval: EvalInterval) -> None:
        cfg = self.config
        writer = trainer.writer
        source = writer.get(cfg.source_metric_key)
        if source is None:
            message = (
                f"{cfg.source_metric_key!r} was not logged in this step; "
                f"list its producer before {cfg.key!r}, due at the same updates"
            )
            if interval == "eval":
                log.warning("%s: %s; skipped", cfg.key, message)
                return
            raise LookupError(message)
        higher = trainer.metrics.higher_is_better(cfg.source_metric_key)
        improved = not math.isnan(source) and (
            self.best is None or (source > self.best if higher else source < self.best)
        )
        if improved:
            values: dict[str, float] = {}
            for key in cfg.target_metric_keys or ():
                value = writer.get(key)
                if value is None:
                    raise LookupError(
                        f"target metric {key!r} was not logged in this step "
                        f"(logged: {', '.join(writer.keys()) or 'nothing'})"
                    )
                values[key] = value
            for key in cfg.optional_target_metric_keys or ():
                value = writer.get(key)
                if value is not None:
                    values[key] = value
            if trainer.is_main:
                previous = "none" if self.best is None else f"{self.best:.6f}"
                log.info("new best %s%s: %s -> %.6f", writer.prefix, cfg.source_metric_key, previous, source)
            self.best = source
            self.at_best = values
        for key, value in self.at_best.items():
            writer.add_scalar(f"{key}/at_best/{cfg.source_metric_key}", value)
            if improved and trainer.is_main:
                log.info("%s%s/at_best/%s: %.6f", writer.prefix, key, cfg.source_metric_key, value)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "at_best": dict(self.at_best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.at_best = dict(state["at_best"])

    @classmethod
    def consumes(cls, config: Config) -> list[str]:
        return [config.source_metric_key, *(config.target_metric_keys or ())]

    @classmethod
    def produces(cls, config: Config, run_config: RunConfig) -> list[str]:
        targets = [*(config.target_metric_keys or ()), *(config.optional_target_metric_keys or ())]
        return [f"{t}/at_best/{config.source_metric_key}" for t in targets]


__all__ = ["BestMetricCallback"]
