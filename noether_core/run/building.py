"""Turning the ``model``, ``datasets`` and ``trainer.train_step`` sections into objects.

Kinds are bundled names or import paths ``package.module:attr``. :func:`check_buildable` finds the
mistakes a user makes here (unknown kind, an argument the factory does not take, no ``train`` dataset)
before anything is built, so ``noether config validate`` reports them with their paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from noether_core.config.schema import DatasetConfig, ModelConfig, RunConfig
from noether_core.errors import ConfigError, ConfigIssue, ImportPathError
from noether_core.lookup import did_you_mean, import_object, kwargs_problem
from noether_core.run.datasets import BUNDLED_DATASETS
from noether_core.run.models import BUNDLED_MODELS, CompositeModel
from noether_core.run.param_groups import named_parameters, pattern_issues
from noether_core.run.torch_kinds import optimizer_issues
from noether_core.run.train_step import TrainStep, default_train_step

COMPOSITE = "composite"
#: The kind of a model or dataset given as a Python object (``noether_core.train(model=..., datasets=...)``)
#: instead of built from the config.
OBJECT = "object"


class _Problem(Exception):
    """A user-facing reason, and which field of the section it concerns."""

    def __init__(self, message: str, field: str = "kind") -> None:
        super().__init__(message)
        self.field = field


def resolve(kind: str, bundled: Mapping[str, Any], what: str) -> Callable[..., Any]:
    """The factory a kind names; raises ``_Problem`` with a user-facing reason."""
    if kind in bundled:
        factory: Callable[..., Any] = bundled[kind]
        return factory
    if ":" not in kind:
        hint = did_you_mean(kind, bundled)
        raise _Problem(
            f"unknown {what} kind {kind!r}; {hint + ' ' if hint else ''}bundled kinds are "
            f"{', '.join(sorted(bundled))}, anything else is an import path 'package.module:factory'"
        )
    try:
        target = import_object(kind)
    except ImportPathError as exc:
        hint = f"; did you mean {exc.suggestion!r}?" if exc.suggestion else ""
        raise _Problem(f"cannot import {kind!r}: {exc.reason}{hint}") from exc
    except Exception as exc:
        raise _Problem(f"cannot import {kind!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(target):
        raise _Problem(f"{kind!r} is not callable")
    return target  # type: ignore[no-any-return]


def _check_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    problem = kwargs_problem(factory, kwargs)
    if problem is not None:
        raise _Problem(problem, "kwargs")


_PART_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


def _model_issues(cfg: ModelConfig, path: str, issues: list[ConfigIssue]) -> None:
    if cfg.parts is not None:
        if cfg.kind != COMPOSITE:
            issues.append(
                ConfigIssue(f"{path}.kind", f"a model with parts has kind {COMPOSITE!r}, got {cfg.kind!r}")
            )
        if not cfg.parts:
            issues.append(ConfigIssue(f"{path}.parts", "a composite model needs at least one part"))
        for name, part in cfg.parts.items():
            if not _PART_NAME.fullmatch(str(name)):
                issues.append(
                    ConfigIssue(
                        f"{path}.parts.{name}",
                        "a part's name is 1 to 100 letters, digits, '_' and '-' (it is part of its "
                        "checkpoint files' names)",
                    )
                )
            _model_issues(part, f"{path}.parts.{name}", issues)
        return
    if cfg.kind == COMPOSITE:  # the default kind, without parts: the user left out the kind
        issues.append(
            ConfigIssue(
                f"{path}.kind",
                f"required (a bundled kind: {', '.join(sorted(BUNDLED_MODELS))}, or an import path "
                "'package.module:factory'), unless the model is a composite with 'parts'",
            )
        )
        return
    try:
        _check_kwargs(resolve(cfg.kind, BUNDLED_MODELS, "model"), cfg.kwargs)
    except _Problem as exc:
        issues.append(ConfigIssue(f"{path}.{exc.field}", str(exc)))


def check_buildable(
    config: RunConfig,
    source: str | None = None,
    *,
    given_model: bool = False,
    given_datasets: Collection[str] = (),
    model: nn.Module | None = None,
) -> None:
    """Raise :class:`ConfigError` listing every model/dataset/train-step/optimizer problem with its
    path; ``source`` (the config file) is named in the message. A model or dataset of kind ``object``
    must be among those given as objects (``given_model``, ``given_datasets``): nothing else can build
    it. ``model`` is the model given as an object, whose parameter names the ``param_groups`` patterns
    are checked against (see :func:`param_group_issues`)."""
    issues: list[ConfigIssue] = []
    if config.model.kind == OBJECT or given_model:
        if not given_model:
            issues.append(ConfigIssue("model.kind", _no_object("model", "model=")))
    else:
        _model_issues(config.model, "model", issues)
    if not issues:
        issues += param_group_issues(config, model)
    if "train" not in config.datasets:
        have = ", ".join(config.datasets) or "none"
        issues.append(ConfigIssue("datasets", f"a 'train' dataset is required (have: {have})"))
    for name, ds in config.datasets.items():
        if ds.kind == OBJECT or name in given_datasets:
            if name not in given_datasets:
                issues.append(
                    ConfigIssue(f"datasets.{name}.kind", _no_object("dataset", f"datasets={{{name!r}: ...}}"))
                )
            continue
        try:
            _check_kwargs(resolve(ds.kind, BUNDLED_DATASETS, "dataset"), ds.kwargs)
        except _Problem as exc:
            issues.append(ConfigIssue(f"datasets.{name}.{exc.field}", str(exc)))
    if config.trainer.train_step is not None:
        try:
            resolve(config.trainer.train_step, {}, "train step")
        except _Problem as exc:
            issues.append(ConfigIssue("trainer.train_step", str(exc)))
    issues += optimizer_issues(config.optimizer)
    if issues:
        raise ConfigError(issues, source)


def param_group_issues(config: RunConfig, model: nn.Module | None = None) -> list[ConfigIssue]:
    """The patterns of ``optimizer.param_groups`` that match no parameter of the model, and group
    names used twice: ``model``, else the config's model built on the ``meta`` device (no memory, no
    random numbers drawn). A model whose factory cannot build on ``meta`` is checked when the run
    builds it."""
    if not config.optimizer.param_groups:
        return []
    if model is None:
        try:
            with torch.device("meta"):
                model = build_model(config.model)
        except Exception:
            return []
    return pattern_issues(config.optimizer, [p.name for p in named_parameters(model, config.model.name)])


def _no_object(what: str, argument: str) -> str:
    return (
        f"kind {OBJECT!r} stands for a {what} given as a Python object (noether_core.train({argument})), "
        "and none was given; the command line cannot build one"
    )


def _call(kind: str, kwargs: Mapping[str, Any], bundled: Mapping[str, Any], what: str, path: str) -> Any:
    """What the factory ``kind`` names returns for ``kwargs``; a kind that names nothing, and a factory
    that raises, are config problems at ``path``."""
    try:
        factory = resolve(kind, bundled, what)
        return factory(**kwargs)
    except _Problem as exc:
        raise ConfigError([ConfigIssue(f"{path}.kind", str(exc))]) from None
    except Exception as exc:
        reason = f"building {what} {kind!r} failed: {type(exc).__name__}: {exc}"
        raise ConfigError([ConfigIssue(path, reason)]) from exc


def build_model(cfg: ModelConfig, path: str = "model") -> nn.Module:
    """Build the configured model; a factory that raises is reported as a config problem at ``path``."""
    if cfg.parts is not None:
        model: nn.Module = CompositeModel(
            {n: build_model(p, f"{path}.parts.{n}") for n, p in cfg.parts.items()}
        )
    else:
        model = _call(cfg.kind, cfg.kwargs, BUNDLED_MODELS, "model", path)
        if not isinstance(model, nn.Module):
            raise ConfigError(
                [
                    ConfigIssue(
                        f"{path}.kind", f"{cfg.kind!r} returned {type(model).__name__}, not an nn.Module"
                    )
                ]
            )
    if cfg.frozen:
        model.requires_grad_(False)
    return model


def build_dataset(name: str, cfg: DatasetConfig) -> Dataset[Any]:
    """Build dataset ``name``; it must be map-style (have a length) and not empty."""
    path = f"datasets.{name}"
    dataset = _call(cfg.kind, cfg.kwargs, BUNDLED_DATASETS, "dataset", path)
    try:
        length = len(dataset)
    except TypeError:
        raise ConfigError(
            [ConfigIssue(path, f"{cfg.kind!r} is not a map-style dataset (it has no len())")]
        ) from None
    if length == 0:
        raise ConfigError([ConfigIssue(path, f"dataset {name!r} is empty")])
    return dataset  # type: ignore[no-any-return]


def build_train_step(config: RunConfig) -> TrainStep:
    if config.trainer.train_step is None:
        return default_train_step
    try:
        return resolve(config.trainer.train_step, {}, "train step")
    except _Problem as exc:
        raise ConfigError([ConfigIssue("trainer.train_step", str(exc))]) from None


def updates_per_epoch(train_len: int, config: RunConfig) -> int:
    """Full updates one pass over ``train`` gives; a dataset smaller than one batch is a config error."""
    ebs = config.trainer.batch_size
    if train_len < ebs:
        raise ConfigError(
            [
                ConfigIssue(
                    "trainer.batch_size",
                    f"the train dataset has {train_len} samples, fewer than one batch ({ebs}); "
                    "lower batch_size or use more data",
                )
            ]
        )
    return train_len // ebs


__all__ = [
    "build_dataset",
    "build_model",
    "build_train_step",
    "check_buildable",
    "param_group_issues",
    "resolve",
    "updates_per_epoch",
]
