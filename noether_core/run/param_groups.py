"""The optimizer's parameter groups: one per trainable model part, and groups picked by name pattern.

**Names.** A parameter's name is its name in the model as ``named_parameters()`` gives it, with a
composite's part names in front instead of its ``parts.`` container: ``0.weight`` in a plain MLP,
``encoder.0.weight`` in a composite's ``encoder`` part. Patterns are ``fnmatch`` patterns (``*`` also
matches dots) matched against the whole name.

**Groups.** Each ``optimizer.param_groups`` entry takes the trainable parameters whose name matches
one of its patterns and no earlier entry's; every other trainable parameter goes to the default group
of its model part, as without ``param_groups``. A pattern that matches no parameter of the model is a
config error naming it. With ``no_weight_decay_on``, every group's parameters that it names go into a
companion group ``{group}/no_decay`` with weight decay 0 (and the group's other settings).

**Group names** (the ``{group}`` of ``optim/lr/{group}``): a model part's default group is named after
the part (``model``, ``clf.encoder``), an entry of ``param_groups`` ``{model}/{name}`` (``name``
defaults to its index in the list). A group left without trainable parameters is left out.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

import attrs
from torch import nn

from noether_core.config.schema import OptimizerConfig
from noether_core.errors import ConfigError, ConfigIssue
from noether_core.run.models import named_models

#: The ``torch.nn`` normalization layers whose parameters ``no_weight_decay_on: [norm]`` names
#: (``RMSNorm`` from torch 2.4).
NORM_LAYERS: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, name)
    for name in (
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LayerNorm",
        "GroupNorm",
        "RMSNorm",
        "LocalResponseNorm",
    )
    if hasattr(nn, name)
)

#: The suffix of the group name of a group's parameters without weight decay.
NO_DECAY = "no_decay"


@attrs.frozen
class NamedParameter:
    """A parameter of the model with its name (see the module), its model part and its owner module."""

    name: str
    part: str
    parameter: nn.Parameter
    owner: nn.Module


def named_parameters(model: nn.Module, model_name: str) -> Iterator[NamedParameter]:
    """Every parameter of ``model`` once, part by part, in ``parameters()`` order within a part."""
    seen: set[int] = set()
    for part_name, part in named_models(model, model_name):
        prefix = part_name[len(model_name) + 1 :]
        owners = {
            id(p): module for _, module in part.named_modules() for p in module.parameters(recurse=False)
        }
        for name, parameter in part.named_parameters():
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            full = f"{prefix}.{name}" if prefix else name
            yield NamedParameter(full, part_name, parameter, owners[id(parameter)])


def without_decay(param: NamedParameter, kinds: list[str]) -> bool:
    """Whether ``no_weight_decay_on: kinds`` names ``param``: ``bias`` a parameter whose own name is
    ``bias``, ``norm`` a parameter of a :data:`NORM_LAYERS` layer, ``1d`` one with fewer than 2 dims."""
    return (
        ("bias" in kinds and param.name.rsplit(".", 1)[-1] == "bias")
        or ("norm" in kinds and isinstance(param.owner, NORM_LAYERS))
        or ("1d" in kinds and param.parameter.ndim < 2)
    )


def _first_match(name: str, cfg: OptimizerConfig) -> int | None:
    for i, group in enumerate(cfg.param_groups):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in group.params):
            return i
    return None


def pattern_issues(cfg: OptimizerConfig, names: list[str], path: str = "optimizer") -> list[ConfigIssue]:
    """Patterns of ``cfg.param_groups`` that match none of ``names``, and group names used twice."""
    issues = []
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    for i, group in enumerate(cfg.param_groups):
        for j, pattern in enumerate(group.params):
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                issues.append(
                    ConfigIssue(
                        f"{path}.param_groups[{i}].params[{j}]",
                        f"{pattern!r} matches no parameter of the model; its parameters are {shown}",
                    )
                )
    seen: dict[str, int] = {}
    for i in range(len(cfg.param_groups)):
        name = group_name(cfg, i)
        if name in seen:
            issues.append(
                ConfigIssue(
                    f"{path}.param_groups[{i}].name",
                    f"the group name {name!r} is already used by param_groups[{seen[name]}]",
                )
            )
        seen.setdefault(name, i)
        if cfg.no_weight_decay_on and name == NO_DECAY:
            issues.append(
                ConfigIssue(
                    f"{path}.param_groups[{i}].name",
                    f"{NO_DECAY!r} names the groups no_weight_decay_on makes; choose another name",
                )
            )
    return issues


def group_name(cfg: OptimizerConfig, index: int) -> str:
    """The name of ``param_groups[index]`` without the model's name: its ``name``, else its index."""
    name = cfg.param_groups[index].name
    return name if name is not None else str(index)


def parameter_groups(
    model: nn.Module, model_name: str, cfg: OptimizerConfig, *, decays: bool = True
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups for ``cfg`` (see the module): dicts with ``params``, ``name``,
    ``lr``, ``base_lr``, ``base_wd``, ``weight_decay`` (when the optimizer ``decays``) and the group's
    ``kwargs``. Raises :class:`ConfigError` for a pattern that matches nothing."""
    params = list(named_parameters(model, model_name))
    if cfg.param_groups:
        issues = pattern_issues(cfg, [p.name for p in params])
        if issues:
            raise ConfigError(issues)
    # explicit groups first, in config order, then the parts' default groups in part order; each
    # followed by its companion without weight decay
    owners = [f"#{i}" for i in range(len(cfg.param_groups))]
    owners += [part for part, _ in named_models(model, model_name)]
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {
        (owner, no_decay): [] for owner in owners for no_decay in (False, True)
    }
    for param in params:
        if param.parameter.requires_grad:
            index = _first_match(param.name, cfg) if cfg.param_groups else None
            no_decay = bool(cfg.no_weight_decay_on) and without_decay(param, list(cfg.no_weight_decay_on))
            groups[(f"#{index}" if index is not None else param.part, no_decay)].append(param.parameter)
    return [
        {**_group_settings(cfg, owner, model_name, no_decay, decays), "params": members}
        for (owner, no_decay), members in groups.items()
        if members
    ]


def _group_settings(
    cfg: OptimizerConfig, owner: str, model_name: str, no_decay: bool, decays: bool
) -> dict[str, Any]:
    """The settings of the group of ``owner`` (``#{index}`` of ``param_groups``, else a part's name)."""
    if not owner.startswith("#"):
        name, lr, wd, extra = owner, cfg.lr, cfg.weight_decay, {}
    else:
        index = int(owner[1:])
        group = cfg.param_groups[index]
        name = f"{model_name}/{group_name(cfg, index)}"
        lr = cfg.lr * group.lr_scale
        wd = cfg.weight_decay if group.weight_decay is None else group.weight_decay
        extra = dict(group.kwargs)
    if no_decay:
        name, wd = f"{name}/{NO_DECAY}", 0.0
    settings: dict[str, Any] = {"name": name, "lr": lr, "base_lr": lr, **extra}
    settings["base_wd"] = wd if decays else 0.0
    if decays:
        settings["weight_decay"] = wd
    return settings


__all__ = [
    "NORM_LAYERS",
    "NO_DECAY",
    "NamedParameter",
    "group_name",
    "named_parameters",
    "parameter_groups",
    "pattern_issues",
    "without_decay",
]
