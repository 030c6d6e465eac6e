"""``LrCallback``: the learning rate and weight decay of every optimizer parameter group.

The trainer adds it on the track interval (``track_every_n_*``). When its interval is due it logs, per
parameter group,

* ``optim/lr/{group}`` when ``optimizer.lr_schedule`` is set (a built-in schedule or a torch
  scheduler), and
* ``optim/wd/{group}`` when ``optimizer.wd_schedule`` is set,

where ``{group}`` is the group's name: the model part it optimizes (``classifier.encoder``), or the
model's name for a plain model; a group of ``optimizer.param_groups`` is ``{model}/{name}``, and the
parameters ``optimizer.no_weight_decay_on`` takes out of a group ``{group}/no_decay``. Without
schedules the values are constants of the config and nothing is logged. The values are the ones the
update that just finished used.

The first update is logged too, also when the interval does not fall on it, so a warmup's start is on
record: ``before_training`` of a run that starts at update 0 asks for it with
``trainer.after_this_step`` (which, called before the first update, runs after it), unless the
scheduler says the interval is due there. So the plugin has no per-update hook at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from noether_core import CallbackConfig, hookimpl

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run


def _group_name(group: Mapping[str, Any], index: int, model_name: str, groups: int) -> str:
    name = group.get("name")
    if isinstance(name, str) and name:
        return name
    return model_name if groups == 1 else f"{model_name}/{index}"


class LrCallback:
    """Logs ``optim/lr/{group}`` and ``optim/wd/{group}`` on its interval and at update 1."""

    #: It never runs the model: its ticks leave the model in train mode.
    needs_eval_mode = False

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig) -> None:
        self.config = config
        # (group index, "lr"/"weight_decay", metric key), worked out once per run
        self._keys: list[tuple[int, str, str]] | None = None

    def _plan(self, trainer: Run) -> list[tuple[int, str, str]]:
        optimizer = trainer.optimizer
        if optimizer is None:  # every part is frozen: nothing is optimized
            return []
        cfg = trainer.config.optimizer
        groups = optimizer.param_groups
        keys = []
        for i, group in enumerate(groups):
            name = _group_name(group, i, trainer.model_name, len(groups))
            if cfg.lr_schedule is not None:
                keys.append((i, "lr", f"optim/lr/{name}"))
            if cfg.wd_schedule is not None and "weight_decay" in group:
                keys.append((i, "weight_decay", f"optim/wd/{name}"))
        return keys

    def _log(self, trainer: Run) -> None:
        if self._keys is None:
            self._keys = self._plan(trainer)
        optimizer = trainer.optimizer
        if not self._keys or optimizer is None:
            return
        groups = optimizer.param_groups
        writer = trainer.writer
        for i, field, key in self._keys:
            writer.add_scalar(key, float(groups[i][field]))

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """Learning rate and weight decay per parameter group (when scheduled)."""
        return ["optim/lr/*", "optim/wd/*"]

    @hookimpl
    def before_training(self, trainer: Run, counter: Counter, config: CallbackConfig) -> None:
        # update 1 is logged whatever the interval; where the interval is due there, at_eval does it
        interval = config.interval
        if counter.update == 0 and (interval is None or not trainer.scheduler.is_due(interval, 1)):

            def first_update() -> None:
                if counter.update == 1:  # not when the run ended before its first update
                    self._log(trainer)

            trainer.after_this_step(first_update)

    @hookimpl
    def at_eval(self, trainer: Run, interval: EvalInterval) -> None:
        if interval == "eval":  # no update happened: there is no learning rate to report
            return
        self._log(trainer)
