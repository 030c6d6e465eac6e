"""TrackAdditionalOutputsCallback: log extra outputs of the train step.

A train step may return ``outputs`` next to its losses (see :mod:`noether_core.run.train_step`). This entry
follows the outputs named in ``keys`` and those whose name contains one of ``patterns`` (each output
once, however many of them it matches), and at its interval logs ``{name}/{I}`` (``I`` the short
interval, e.g. ``U10``):

* ``reduce: mean``: the mean over every micro-batch since the last evaluation, then over ranks;
* ``reduce: last``: the value of the last update (the mean over its micro-batches), then the mean over
  ranks, so several ranks or gradient accumulation still give one number.

With ``save_output`` the reduced value (any shape) is also saved by rank 0 as
``update_outputs/{name}_{I}_{E..._U..._S...}.th`` in the run directory (``/`` in names becomes ``.``);
``log_output: false`` skips logging (for outputs that are not single numbers).

The sums of its partial window are part of its state in the trainer checkpoint, so a resumed run logs
the same values as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
from attrs import validators as v

from noether_core import CallbackConfig, atomic_torch_save, hookimpl, mean_over_ranks

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run, RunConfig

log = logging.getLogger("noether.track_outputs")

_names = v.optional(v.deep_iterable(v.min_len(1)))


class TrackAdditionalOutputsCallback:
    """Logs the train step's extra outputs named in ``keys`` or matching ``patterns``."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        keys: list[str] | None = attrs.field(default=None, validator=_names)
        """Outputs to track by exact name; the train step must return each of them."""
        patterns: list[str] | None = attrs.field(default=None, validator=_names)
        """Also track the outputs whose name contains one of these; set this or ``keys``."""
        verbose: bool = False
        """Also print each logged value through the ``noether`` logger (stdout and ``log.txt``)."""
        reduce: Literal["mean", "last"] = "mean"
        """``mean``: over every micro-batch since the last log; ``last``: the last update's value."""
        log_output: bool = True
        """Log each tracked output as ``{name}/{I}``; turn off for outputs that are not single numbers."""
        save_output: bool = False
        """Also save the reduced value (any shape) under ``update_outputs/`` in the run directory."""

        def __attrs_post_init__(self) -> None:
            if not self.keys and not self.patterns:
                raise ValueError("set keys or patterns (the outputs to track)")

    def __init__(self, config: Config) -> None:
        self.config = config
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._relocate = False  # restored sums sit on the CPU until the first output shows the device

    def state_dict(self) -> dict[str, Any]:
        """The partial window: each tracked output's sum and count since the last log."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sums = {str(k): v for k, v in state["sums"].items()}
        self._counts = {str(k): int(v) for k, v in state["counts"].items()}
        self._relocate = bool(self._sums)

    def _tracked(self, outputs: Mapping[str, Any]) -> list[str]:
        keys = self.config.keys or []
        missing = [k for k in keys if k not in outputs]
        if missing:
            raise LookupError(
                f"the train step returned no output {missing[0]!r}; "
                f"it returned {', '.join(outputs) or 'none'}"
            )
        patterns = self.config.patterns or []
        return [name for name in outputs if name in keys or any(p in name for p in patterns)]

    @hookimpl
    def after_accumulation(self, outputs: Mapping[str, Any] | None, accumulation_step: int) -> None:
        if outputs is None:
            return
        if self.config.reduce == "last" and accumulation_step == 0:
            self._sums.clear()
            self._counts.clear()
        for name in self._tracked(outputs):
            value = outputs[name]
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            if self._relocate:
                self._sums = {k: v.to(value.device) for k, v in self._sums.items()}
                self._relocate = False
            self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
            self._counts[name] = self._counts.get(name, 0) + 1

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, interval: EvalInterval) -> None:
        if interval == "eval" or not self._sums:
            return
        cfg = self.config
        short = cfg.interval.short if cfg.interval is not None else interval
        for name in sorted(self._sums):  # every rank reduces in the same order
            value = mean_over_ranks(self._sums[name] / self._counts[name], trainer.dist)
            if cfg.log_output:
                if value.numel() != 1:
                    raise ValueError(
                        f"output {name!r} has shape {tuple(value.shape)}, not a single number; "
                        "set log_output: false (and save_output: true to keep it)"
                    )
                trainer.writer.add_scalar(f"{name}/{short}", value)
                if cfg.verbose and trainer.is_main:
                    log.info("%s/%s: %.5f", name, short, value.item())
            if cfg.save_output and trainer.is_main:
                file = (
                    trainer.paths.root
                    / "update_outputs"
                    / f"{name.replace('/', '.')}_{short}_{counter.tag}.th"
                )
                file.parent.mkdir(exist_ok=True)
                atomic_torch_save(value.cpu(), file)
        if cfg.reduce == "mean":
            self._sums.clear()
            self._counts.clear()

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        if not getattr(config, "log_output", True):
            return []
        short = config.interval.short if config.interval is not None else "*"
        return [
            *(f"{k}/{short}" for k in getattr(config, "keys", None) or ()),
            *(f"*{p}*/{short}" for p in getattr(config, "patterns", None) or ()),
        ]


__all__ = ["TrackAdditionalOutputsCallback"]
