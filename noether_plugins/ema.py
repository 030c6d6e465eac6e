"""``EmaCallback``: exponential moving averages of the model's weights, saved and evaluated.

**The average.** After every optimizer update (``after_update``, also updates whose step was skipped
for a NaN loss) each average moves toward the live weights::

    shadow = f * shadow + (1 - f) * param        for every factor f in target_factors

for every parameter (frozen ones included) of each averaged module: the whole model, or the modules
``model_paths`` names (dotted attribute paths such as ``encoder`` or ``backbone.blocks``; for a
composite model a part's name works as well). It starts from the weights at the start of training,
with no warm-up or bias correction. All averages of one device and dtype move in a single fused
``torch._foreach_lerp_`` call, with no host sync. Buffers (batch-norm statistics) are not averaged:
files and evaluations use the live model's buffers, which is what copying them after every update
would give.

**Files** (rank 0, atomic): ``{model}_ema={f}_cp={tag}_model.th``, where ``{model}`` is the model's name,
or the part's checkpoint name (``classifier.encoder``) for a ``model_paths`` entry, else
``{model}.{path}``. The tag is the position (``E1_U10_S320``, ``save_weights``) and/or ``latest``
(``save_latest_weights``) when this entry's interval is due, and ``last`` when training ends
(``save_last_weights``; not after a failure). The file's ``state_dict`` loads into the module.

**Resume** is exact: the averages are part of this entry's state in the trainer checkpoint (so every
checkpoint with trainer state carries them, including the one saved on SIGTERM), and a resumed run
continues the very average an uninterrupted run computes. When that state is missing (the entry was
added or renamed), the averages are read from the resumed run's EMA files, ``cp=latest`` first, then
``cp=last``, preferring a file saved at the resumed update; the log says which file was used. Without
either, the average starts over from the current weights, with a warning.

**eval_callbacks**: entries of any kind, each with its own interval, run on the averaged weights. At
every update where some child is due, for each factor in turn the averages are copied into the live
model, the due children's ``at_eval`` runs with every metric key they write or read prefixed
``ema={f}/`` (``ema=0.999/loss/val/total``), and finally the live weights and buffers are restored bit
for bit, also when a child raises. Children also get ``before_training``, ``after_update``,
``after_epoch`` and ``after_training`` (once per factor, under the prefix, on the live weights); an entry
that needs ``after_accumulation`` or ``eval_at_end`` cannot be a child. The trainer calls this entry's
``at_eval`` whenever it or one of its children is due; it saves only when its own interval is due.
Evaluation-only runs (``noether eval``) do nothing here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch
from attrs import validators as v
from torch import nn

from noether_core import CallbackConfig, format_ema_factor, hookimpl, load_checkpoint

if TYPE_CHECKING:
    from noether_core import Counter, Entry, EvalInterval, Run, RunConfig, RunStatus

log = logging.getLogger("noether")


def ema_prefix(factor: float) -> str:
    """The metric-key prefix of children evaluated with factor ``factor``: ``ema=0.999/``."""
    return f"ema={format_ema_factor(factor)}/"


def _distinct(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: list[Any] | None) -> None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"{name} must be distinct, got {value}")

    return check


def _factor_in_unit_interval(_: object, attribute: attrs.Attribute[Any], value: list[float]) -> None:
    for f in value:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"each factor must be in [0, 1], got {f}")


@attrs.define(eq=False)
class _Target:
    """One averaged module: its live parameters and one shadow list per factor."""

    path: str | None
    name: str
    module: nn.Module
    params: list[torch.Tensor]
    param_names: list[str]
    #: state_dict key -> index into ``params`` (tied weights appear under several keys)
    state_keys: dict[str, int]
    shadows: dict[float, list[torch.Tensor]] = attrs.Factory(dict)

    @classmethod
    def of(cls, module: nn.Module, path: str | None, name: str) -> _Target:
        named = list(module.named_parameters())  # each parameter once, tied ones under their first name
        index = {id(p): i for i, (_, p) in enumerate(named)}
        keys = {k: index[id(t)] for k, t in module.state_dict(keep_vars=True).items() if id(t) in index}
        return cls(path, name, module, [p.detach() for _, p in named], [n for n, _ in named], keys)

    def state_dict(self, factor: float) -> dict[str, torch.Tensor]:
        """The module's state dict with the averages of ``factor`` in place of its parameters."""
        out: dict[str, torch.Tensor] = self.module.state_dict()
        shadow = self.shadows[factor]
        for key, i in self.state_keys.items():
            out[key] = shadow[i]
        return out

    def load(self, factor: float, tensors: list[torch.Tensor]) -> None:
        self.shadows[factor] = [
            torch.empty_like(p).copy_(t) for p, t in zip(self.params, tensors, strict=True)
        ]

    def from_params(self, saved: Mapping[str, torch.Tensor], what: str) -> list[torch.Tensor]:
        """Saved tensors by parameter name, checked against the live shapes."""
        missing = [n for n in self.param_names if n not in saved]
        if missing:
            raise ValueError(f"{what} has no average for {', '.join(missing[:5])} of {self.name!r}")
        out = [saved[n] for n in self.param_names]
        for n, p, t in zip(self.param_names, self.params, out, strict=True):
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{what}: {n!r} has shape {tuple(t.shape)}, the model's is {tuple(p.shape)}")
        return out

    def from_state_dict(self, saved: Mapping[str, torch.Tensor], what: str) -> list[torch.Tensor]:
        by_index: dict[int, torch.Tensor] = {}
        for key, i in self.state_keys.items():
            if key in saved:
                by_index.setdefault(i, saved[key])
        return self.from_params(
            {n: by_index[i] for i, n in enumerate(self.param_names) if i in by_index}, what
        )


class EmaCallback:
    """Keeps exponential moving averages of the weights, saves them, and evaluates children on them."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        target_factors: list[float] = attrs.field(
            validator=[v.min_len(1), _factor_in_unit_interval, _distinct("target_factors")]
        )
        """Averaging factors ``f`` (``shadow = f * shadow + (1 - f) * param``), e.g. ``[0.999, 0.9999]``."""
        model_paths: list[str | None] | None = attrs.field(
            default=None, validator=v.optional([v.min_len(1), _distinct("model_paths")])
        )
        """Dotted paths of the modules to average (``encoder``); ``None`` in the list or as the value: the
        whole model."""
        save_weights: bool = True
        """Save the averages at every due position (``E{e}_U{u}_S{s}``)."""
        save_last_weights: bool = True
        """Save the averages as ``last`` when training ends."""
        save_latest_weights: bool = False
        """Save the averages as ``latest`` at every due position (resume does not need it)."""
        eval_callbacks: list[CallbackConfig] = attrs.Factory(list)
        """Entries run on the averaged weights, once per factor, metric keys prefixed ``ema={f}/``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._targets: list[_Target] = []
        self._steps: list[tuple[list[torch.Tensor], list[torch.Tensor], float | list[float]]] = []
        self._pending: Mapping[str, Any] | None = None
        self._children: list[Entry] = []
        self._forward_updates = False

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        """It logs no metrics itself; its children's keys are theirs, under :meth:`child_prefixes`."""
        return []

    @staticmethod
    def child_prefixes(config: Config) -> list[str]:
        """The prefixes of the children's metric keys, one per factor (``ema=0.999/``)."""
        return [ema_prefix(f) for f in config.target_factors]

    # ------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        if not self._targets:  # before before_training: hand back what was loaded, unchanged
            return dict(self._pending or {})
        return {
            "averages": [
                {"path": t.path, "factor": f, "params": dict(zip(t.param_names, shadow, strict=True))}
                for t in self._targets
                for f, shadow in t.shadows.items()
            ]
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # the model is not known yet: the averages are copied into place in before_training
        self._pending = state

    # ------------------------------------------------------------------------------------ setup

    def _resolve(self, trainer: Run, model: nn.Module, path: str | None) -> _Target:
        if path is None:
            return _Target.of(model, None, trainer.model_name)
        module = None
        for candidate in (path, f"parts.{path}"):  # a composite model's parts live under .parts
            with contextlib.suppress(AttributeError):
                module = model.get_submodule(candidate)
                break
        if not isinstance(module, nn.Module):
            children = ", ".join(n for n, _ in model.named_children()) or "none"
            raise ValueError(
                f"model_paths: {path!r} did not resolve to a torch.nn.Module of the model "
                f"(its top-level modules: {children})"
            )
        names = {id(part): name for name, part in trainer.named_models()}
        return _Target.of(module, path, names.get(id(module), f"{trainer.model_name}.{path}"))

    def _restore(self, trainer: Run, counter: Counter, target: _Target, factor: float) -> str:
        """Fill ``target``'s averages of ``factor``; returns where they came from (for the log)."""
        for entry in (self._pending or {}).get("averages", ()):
            if entry["path"] == target.path and float(entry["factor"]) == factor:
                target.load(
                    factor, target.from_params(entry["params"], "the EMA state in the trainer checkpoint")
                )
                return "the trainer checkpoint"
        run = trainer.resumed_from
        if run is not None:
            found = []
            for tag in ("latest", "last"):
                file = run.checkpoint_file(target.name, tag, "model", ema=factor)
                if file.exists():
                    payload = load_checkpoint(file)
                    found.append((file, payload, int(payload["training_iteration"]["update"])))
            if found:
                exact = [f for f in found if f[2] == counter.update]
                file, payload, update = (exact or found)[0]
                target.load(factor, target.from_state_dict(payload["state_dict"], str(file)))
                if not exact:
                    log.warning(
                        "EMA %s: %s was saved at update %d, not at the resumed update %d: the average "
                        "continues from that older point",
                        factor,
                        file.name,
                        update,
                        counter.update,
                    )
                return file.name
        target.load(factor, target.params)
        if counter.update > 0:
            log.warning(
                "EMA %s of %r: no saved average to resume (no state in the trainer checkpoint, no cp=latest "
                "or cp=last file): starting over from the current weights",
                factor,
                target.name,
            )
            return "the current weights (nothing to resume)"
        return "the initial weights"

    def _build_steps(self) -> None:
        """Group every (shadow, live) pair by device and dtype: one fused lerp per group."""
        groups: dict[
            tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor], list[float]]
        ] = {}
        for target in self._targets:
            for factor, shadow in target.shadows.items():
                for s, p in zip(shadow, target.params, strict=True):
                    shadows, lives, weights = groups.setdefault((p.device, p.dtype), ([], [], []))
                    shadows.append(s)
                    lives.append(p)
                    weights.append(1.0 - factor)
        self._steps = [
            (shadows, lives, weights[0] if len(set(weights)) == 1 else weights)
            for shadows, lives, weights in groups.values()
        ]

    def _check_children(self) -> None:
        for child in self._children:
            if "after_accumulation" in child.hooks:
                raise ValueError(
                    f"eval_callbacks entry {child.key!r} ({child.kind}) watches micro-batches "
                    "(after_accumulation), which entries evaluated on EMA weights do not receive"
                )
            if child.config.eval_at_end:
                raise ValueError(
                    f"eval_callbacks entry {child.key!r}: eval_at_end is not supported inside eval_callbacks"
                )
        self._forward_updates = any("after_update" in c.hooks for c in self._children)

    @hookimpl
    def before_training(self, trainer: Run, model: nn.Module, counter: Counter, config: Config) -> None:
        self._children = list(trainer.children(config))
        self._check_children()
        paths = config.model_paths if config.model_paths is not None else [None]
        self._targets = [self._resolve(trainer, model, path) for path in paths]
        sources = {}
        for target in self._targets:
            for factor in config.target_factors:
                sources[f"{target.name} {factor}"] = self._restore(trainer, counter, target, factor)
        self._pending = None
        self._build_steps()
        n = sum(p.numel() for t in self._targets for p in t.params)
        log.info(
            "EMA: averaging %d parameters (factors %s); averages from %s",
            n,
            ", ".join(map(format_ema_factor, config.target_factors)),
            "; ".join(f"{k}: {s}" for k, s in sources.items()),
        )
        self._forward(trainer, "before_training")

    # ------------------------------------------------------------------------------------ averaging

    @hookimpl
    def after_update(
        self,
        trainer: Run,
        losses: Mapping[str, torch.Tensor],
        times: Mapping[str, float],
        grad_norm: torch.Tensor | None,
    ) -> None:
        for shadows, lives, weight in self._steps:
            torch._foreach_lerp_(shadows, lives, weight)
        if self._forward_updates:
            self._forward(trainer, "after_update", losses=losses, times=times, grad_norm=grad_norm)

    @hookimpl
    def after_epoch(self, trainer: Run) -> None:
        self._forward(trainer, "after_epoch")

    # ------------------------------------------------------------------------------------ children

    def _forward(self, trainer: Run, hook: str, **extra: Any) -> None:
        """Call ``hook`` on the children once per factor, under the factor's prefix, on live weights."""
        if not self._children:
            return
        for factor in self.config.target_factors:
            with trainer.writer.prefixed(ema_prefix(factor)):
                trainer.dispatch(hook, self._children, **extra)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[Any]:
        """Inside the block, ``use(factor)`` copies that factor's averages into the live model; on exit
        (also by an exception) the live parameters and buffers are restored exactly."""
        seen: set[int] = set()
        live: list[torch.Tensor] = []
        for target in self._targets:
            for t in (*target.params, *(b.detach() for b in target.module.buffers())):
                if id(t) not in seen:
                    seen.add(id(t))
                    live.append(t)
        backup = [t.clone() for t in live]

        def use(factor: float) -> None:
            for target in self._targets:
                torch._foreach_copy_(target.params, target.shadows[factor])

        try:
            yield use
        finally:
            torch._foreach_copy_(live, backup)

    def _evaluate(self, trainer: Run, due: list[Entry]) -> None:
        with self.swapped() as use:
            for factor in self.config.target_factors:
                use(factor)
                with trainer.writer.prefixed(ema_prefix(factor)):
                    trainer.dispatch("at_eval", due)

    # ------------------------------------------------------------------------------------ saving

    def _save(self, trainer: Run, counter: Counter, tag: str) -> None:
        if not trainer.is_main:
            return
        # one set: inside a step it joins the CheckpointCallback's set of the same tag
        with trainer.checkpoints.checkpoint_set(tag) as parts:
            for target in self._targets:
                for factor in target.shadows:
                    parts.save_model(target.name, target.state_dict(factor), position=counter, ema=factor)

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, config: Config, interval: EvalInterval) -> None:
        if interval == "eval":  # no averages are kept in an evaluation-only run
            return
        # called when this entry or one of its children is due: each part checks its own interval
        if config.interval is not None and trainer.scheduler.is_due(config.interval, counter.update):
            if config.save_weights:
                self._save(trainer, counter, counter.tag)
            if config.save_latest_weights:
                self._save(trainer, counter, "latest")
        due = trainer.scheduler.due(self._children, counter.update)
        if due:
            self._evaluate(trainer, due)

    @hookimpl
    def after_training(self, trainer: Run, counter: Counter, config: Config, status: RunStatus) -> None:
        if status != "failed" and config.save_last_weights and self._targets:
            self._save(trainer, counter, "last")
        self._forward(trainer, "after_training", status=status)


__all__ = ["EmaCallback", "ema_prefix"]
