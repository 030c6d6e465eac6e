"""``optimizer.kind`` and ``optimizer.lr_schedule.kind``: ``torch.optim`` optimizers and
``torch.optim.lr_scheduler`` schedulers by name or import path, and the checks of their arguments.

A name is matched against the classes of ``torch.optim`` (or ``torch.optim.lr_scheduler``) in any
case (``radam`` is ``torch.optim.RAdam``); anything with a dot is an import path to a class
(``torch.optim.Adagrad``, ``package.module.Lion``, or ``package.module:Lion``).

:func:`optimizer_issues` finds every mistake of the ``optimizer`` section that needs no model: an
unknown kind (with the close names), an argument the class does not take (with the ones it takes), a
value it refuses, a setting the optimizer has no use for. It builds the optimizer and the scheduler
once, over a single stand-in parameter, so that their own checks run too (``Invalid beta parameter``)
before a run starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch.optim import lr_scheduler

from noether_core.config.schema import OptimizerConfig, ScheduleConfig
from noether_core.errors import ConfigIssue, ImportPathError
from noether_core.lookup import close_matches, import_object

#: Arguments that are no ``kwargs`` entry, with where they go instead.
OPTIMIZER_FIELDS = {
    "params": "noether passes the parameters (pick them with param_groups)",
    "lr": "set optimizer.lr instead",
    "weight_decay": "set optimizer.weight_decay instead",
    "betas": "set optimizer.betas instead",
    "momentum": "set optimizer.momentum instead",
}
GROUP_FIELDS = {
    "params": "set the group's params patterns instead",
    "lr": "set the group's lr_scale instead",
    "weight_decay": "set the group's weight_decay instead",
}
SCHEDULER_FIELDS = {
    "optimizer": "noether passes the optimizer",
    "last_epoch": "noether restores the scheduler's position on resume",
}

#: ``betas`` and ``momentum`` as ``config.yaml`` of runs before any optimizer could be named recorded
#: them for every kind; those values are ignored by an optimizer without such an argument.
LEGACY_DEFAULTS: dict[str, Any] = {"betas": (0.9, 0.999), "momentum": 0.0}

T = TypeVar("T")


class KindProblem(Exception):
    """A user-facing reason a kind or its arguments do not work, and the field it concerns."""

    def __init__(self, message: str, field: str = "kind") -> None:
        super().__init__(message)
        self.field = field


def _classes(module: Any, base: type) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base and not name.startswith("_")
    }


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """The optimizers of ``torch.optim`` by class name (``AdamW``, ``RAdam``...)."""
    return _classes(torch.optim, torch.optim.Optimizer)


def scheduler_classes() -> dict[str, type[lr_scheduler.LRScheduler]]:
    """The schedulers of ``torch.optim.lr_scheduler`` by class name (``OneCycleLR``...)."""
    return _classes(lr_scheduler, lr_scheduler.LRScheduler)


def _resolve(kind: str, classes: Mapping[str, type], base: type, what: str, module: str) -> Any:
    if ":" not in kind and "." not in kind:
        by_lower = {name.lower(): cls for name, cls in classes.items()}
        found = by_lower.get(kind.lower())
        if found is not None:
            return found
        close = close_matches(kind.lower(), by_lower, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise KindProblem(
            f"unknown {what.split()[-1]} {kind!r}; {hint}the names of {module} (any case) are "
            f"{', '.join(sorted(by_lower))}; anything else is an import path 'package.module.Class'"
        )
    path = kind if ":" in kind else "{}:{}".format(*kind.rsplit(".", 1))
    try:
        target = import_object(path)
    except ImportPathError as exc:
        hint = f"; did you mean {exc.suggestion.replace(':', '.')!r}?" if exc.suggestion else ""
        raise KindProblem(f"cannot import {kind!r}: {exc.reason}{hint}") from exc
    except Exception as exc:
        raise KindProblem(f"cannot import {kind!r}: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, base)):
        raise KindProblem(f"{kind!r} is not {what} class (a subclass of {module}.{base.__name__})")
    return target


def optimizer_class(kind: str) -> type[torch.optim.Optimizer]:
    """The optimizer class ``kind`` names; raises :class:`KindProblem`."""
    cls: type[torch.optim.Optimizer] = _resolve(
        kind, optimizer_classes(), torch.optim.Optimizer, "an optimizer", "torch.optim"
    )
    step = inspect.signature(cls.step).parameters.get("closure")
    if step is not None and step.default is inspect.Parameter.empty:
        # LBFGS evaluates the loss several times per step through a closure
        raise KindProblem(
            f"{display_name(cls)} needs a closure that recomputes the loss in step(); noether's update calls "
            "step() once after the backward pass, so it cannot drive it"
        )
    return cls


def scheduler_class(kind: str) -> type[lr_scheduler.LRScheduler]:
    """The scheduler class ``kind`` names; raises :class:`KindProblem`."""
    cls: type[lr_scheduler.LRScheduler] = _resolve(
        kind, scheduler_classes(), lr_scheduler.LRScheduler, "a scheduler", "torch.optim.lr_scheduler"
    )
    if issubclass(cls, lr_scheduler.ReduceLROnPlateau):
        raise KindProblem(
            f"{display_name(cls)} needs a metric at every step(); noether steps schedulers by the update "
            "count alone, so it is not supported"
        )
    return cls


def display_name(cls: type) -> str:
    """``torch.optim.RAdam`` for a class of ``torch.optim`` (not ``torch.optim.radam.RAdam``)."""
    for public, classes in (
        ("torch.optim", optimizer_classes()),
        ("torch.optim.lr_scheduler", scheduler_classes()),
    ):
        if classes.get(cls.__name__) is cls:
            return f"{public}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def accepted_arguments(cls: type) -> list[str]:
    """The keyword arguments ``cls``'s constructor takes, by its signature (``[]`` if unreadable)."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def takes(cls: type, argument: str) -> bool:
    """Whether ``cls``'s constructor takes ``argument`` (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _check_names(cls: type, kwargs: Mapping[str, Any], own: Mapping[str, str]) -> None:
    # lr, weight_decay... are named: they are the optimizer's, set in fields of their own
    accepted = [a for a in accepted_arguments(cls) if a != "params" and a not in SCHEDULER_FIELDS]
    for key in kwargs:
        if key in own:
            raise KindProblem(f"{key!r} is not a kwargs entry: {own[key]}", "kwargs")
        if not takes(cls, key):
            close = close_matches(key, accepted)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes_ = ", ".join(accepted) or "nothing"
            raise KindProblem(
                f"{display_name(cls)} takes no argument {key!r}; {hint}it takes {takes_}", "kwargs"
            )


def optimizer_arguments(cls: type[torch.optim.Optimizer], cfg: OptimizerConfig) -> dict[str, Any]:
    """The keyword arguments of ``cls`` for ``cfg``: ``lr``, and ``weight_decay``, ``betas``, ``momentum``
    where the optimizer takes them and they are set, then ``kwargs``. Raises :class:`KindProblem` for a
    setting the optimizer has no argument for."""
    out: dict[str, Any] = {"lr": cfg.lr}
    if takes(cls, "weight_decay"):
        out["weight_decay"] = cfg.weight_decay
    elif cfg.weight_decay:
        raise KindProblem(_no_argument(cls, "weight_decay", "weight decay"), "weight_decay")
    for field in ("betas", "momentum"):
        value = getattr(cfg, field)
        if value is None:
            continue
        if takes(cls, field):
            out[field] = value
        elif value != LEGACY_DEFAULTS[field]:
            raise KindProblem(_no_argument(cls, field, field), field)
    _check_names(cls, cfg.kwargs, OPTIMIZER_FIELDS)
    out.update(cfg.kwargs)
    return out


def _no_argument(cls: type, argument: str, what: str) -> str:
    takes_ = ", ".join(a for a in accepted_arguments(cls) if a != "params")
    return f"{display_name(cls)} has no {what} (it takes {takes_}); remove {argument}"


def _stand_in() -> list[dict[str, Any]]:
    return [{"params": [torch.nn.Parameter(torch.zeros(2, 2))]}]


def _built(factory: Callable[[], T], cls: type, field: str) -> T:
    try:
        return factory()
    except Exception as exc:
        raise KindProblem(
            f"{display_name(cls)} refuses these arguments: {type(exc).__name__}: {exc}", field
        ) from exc


def optimizer_issues(cfg: OptimizerConfig, path: str = "optimizer") -> list[ConfigIssue]:
    """Every problem of the ``optimizer`` section that shows without the model (see the module)."""
    issues: list[ConfigIssue] = []
    torch_schedule = cfg.lr_schedule if cfg.lr_schedule is not None and not cfg.lr_schedule.builtin else None
    try:
        cls = optimizer_class(cfg.kind)
        arguments = optimizer_arguments(cls, cfg)
    except KindProblem as exc:
        issues.append(ConfigIssue(f"{path}.{exc.field}", str(exc)))
        if torch_schedule is not None:
            issues += scheduler_issues(torch_schedule, None, f"{path}.lr_schedule")
        return issues
    decays = takes(cls, "weight_decay")
    for i, group in enumerate(cfg.param_groups):
        where = f"{path}.param_groups[{i}]"
        if group.weight_decay and not decays:
            issues.append(
                ConfigIssue(f"{where}.weight_decay", _no_argument(cls, "weight_decay", "weight decay"))
            )
        try:
            _check_names(cls, group.kwargs, GROUP_FIELDS)
        except KindProblem as exc:
            issues.append(ConfigIssue(f"{where}.{exc.field}", str(exc)))
    if cfg.no_weight_decay_on and not decays:
        issues.append(
            ConfigIssue(f"{path}.no_weight_decay_on", _no_argument(cls, "no_weight_decay_on", "weight decay"))
        )
    if cfg.wd_schedule is not None:
        if not decays:
            issues.append(
                ConfigIssue(f"{path}.wd_schedule", _no_argument(cls, "wd_schedule", "weight decay"))
            )
        issues += _builtin_only(cfg.wd_schedule, f"{path}.wd_schedule")
    if cfg.lr_schedule is not None and cfg.lr_schedule.builtin:
        issues += _builtin_only(cfg.lr_schedule, f"{path}.lr_schedule")
    if issues:
        if torch_schedule is not None:
            issues += scheduler_issues(torch_schedule, None, f"{path}.lr_schedule")
        return issues
    try:
        optimizer = _built(lambda: cls(_stand_in(), **arguments), cls, "kwargs")
        for i, group in enumerate(cfg.param_groups):
            groups = [{**_stand_in()[0], **group.kwargs}]
            _built(lambda g=groups: cls(g, **arguments), cls, f"param_groups[{i}].kwargs")  # type: ignore[misc]
    except KindProblem as exc:
        issues.append(ConfigIssue(f"{path}.{exc.field}", str(exc)))
        if torch_schedule is not None:
            issues += scheduler_issues(torch_schedule, None, f"{path}.lr_schedule")
        return issues
    if torch_schedule is not None:
        issues += scheduler_issues(torch_schedule, optimizer, f"{path}.lr_schedule")
    return issues


def _builtin_only(cfg: ScheduleConfig, path: str) -> list[ConfigIssue]:
    if cfg.builtin:
        issues = []
        if cfg.kwargs:
            issues.append(
                ConfigIssue(f"{path}.kwargs", f"the built-in {cfg.kind!r} schedule takes no kwargs")
            )
        if cfg.interval != "update":
            issues.append(
                ConfigIssue(f"{path}.interval", f"the built-in {cfg.kind!r} schedule changes at every update")
            )
        return issues
    return [
        ConfigIssue(
            f"{path}.kind",
            f"expected 'constant', 'cosine' or 'linear', got {cfg.kind!r} (a torch scheduler sets the "
            "learning rate only: it is for lr_schedule)",
        )
    ]


def scheduler_arguments(cls: type[lr_scheduler.LRScheduler], cfg: ScheduleConfig) -> dict[str, Any]:
    """``cfg.kwargs``, checked against ``cls``'s signature; raises :class:`KindProblem`."""
    _check_names(cls, cfg.kwargs, SCHEDULER_FIELDS)
    return dict(cfg.kwargs)


def scheduler_issues(
    cfg: ScheduleConfig, optimizer: torch.optim.Optimizer | None, path: str = "optimizer.lr_schedule"
) -> list[ConfigIssue]:
    """The problems of a torch scheduler's config: its kind, its arguments' names and, by building it
    on ``optimizer`` (a stand-in; ``None`` when the optimizer cannot be built), their values."""
    unused = [
        name
        for name, value, default in (
            ("warmup_updates", cfg.warmup_updates, 0),
            ("warmup_fraction", cfg.warmup_fraction, None),
            ("end_factor", cfg.end_factor, 0.0),
        )
        if value != default
    ]
    if unused:
        return [
            ConfigIssue(
                f"{path}.{unused[0]}",
                f"applies to the built-in schedules only; a torch scheduler ({cfg.kind!r}) takes its "
                "settings in kwargs",
            )
        ]
    try:
        cls = scheduler_class(cfg.kind)
        arguments = scheduler_arguments(cls, cfg)
        if optimizer is not None:
            _built(lambda: cls(optimizer, **arguments), cls, "kwargs")
    except KindProblem as exc:
        return [ConfigIssue(f"{path}.{exc.field}", str(exc))]
    return []


__all__ = [
    "KindProblem",
    "accepted_arguments",
    "display_name",
    "optimizer_arguments",
    "optimizer_class",
    "optimizer_classes",
    "optimizer_issues",
    "scheduler_arguments",
    "scheduler_class",
    "scheduler_classes",
    "scheduler_issues",
    "takes",
]
