"""OfflineMetricsCallback: named torchmetrics metrics over a whole dataset, in eval mode.

Each entry of ``metrics`` names a :class:`torchmetrics.Metric` class by import path and its keyword
arguments; at every evaluation the metrics are reset, updated batch by batch and logged as
``{name}/{dataset_key}``::

    - kind: OfflineMetricsCallback
      every_n_epochs: 1
      dataset_key: val
      metrics:
        acc: {kind: torchmetrics.classification.MulticlassAccuracy, kwargs: {num_classes: 4}}

**What feeds a metric.** By default a batch is split like the default train step does (``(x, y)``, or a
dict with ``x`` and ``y``) and each metric is updated with ``metric.update(model(x), y)``. ``inputs``
names a function ``fn(model, batch) -> (preds, target)`` by import path (``my_pkg.metrics:inputs``)
for anything else (a model returning a dict, a target to transform). ``preds`` and ``target`` hold
one row per sample.

**Several processes.** Each rank updates its metrics with its share of the dataset and
``metric.compute()`` combines the ranks' states through torchmetrics' own sync. The distributed
sampler pads the last share by repeating samples; those rows are left out before ``update``, so every
sample counts exactly once and the value equals the one-process value.

**Directions.** Each metric's direction comes from its class's ``higher_is_better`` (accuracy: higher),
or from ``higher_is_better`` in its entry; it is declared for ``{name}/{dataset_key}`` (and the EMA
copies), so ``BestCheckpointCallback``, ``MetricEarlyStopper`` and the summary's ``best`` use it.

torchmetrics is an optional dependency: ``pip install 'noether[torchmetrics]'``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch
from attrs import validators as v

from noether_core import (
    PeriodicDataIteratorCallback,
    PeriodicDataIteratorConfig,
    batch_length,
    hookimpl,
    to_device,
)

if TYPE_CHECKING:
    from noether_core import CallbackConfig, Counter, EvalInterval, Run, RunConfig

log = logging.getLogger("noether.offline_metrics")

_INSTALL = "pip install 'noether[torchmetrics]'"


def _import(path: str) -> Any:
    """The object at ``path``: ``package.module.Name`` or ``package.module:name``."""
    module, sep, name = path.partition(":") if ":" in path else path.rpartition(".")
    if not sep or not module or not name:
        raise ValueError(f"{path!r} is not an import path (package.module.Name)")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"cannot import {module!r} for {path!r}: {exc}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module!r} has no {name!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def _metric_base() -> type[Any]:
    try:
        import torchmetrics
    except ImportError:
        raise ValueError(
            f"OfflineMetricsCallback needs torchmetrics, which is not installed: {_INSTALL}"
        ) from None
    return torchmetrics.Metric


@attrs.frozen(kw_only=True)
class MetricSpec:
    """One metric of an :class:`OfflineMetricsCallback` entry."""

    kind: str = attrs.field(validator=v.min_len(1))
    """Import path of a :class:`torchmetrics.Metric` class, e.g.
    ``torchmetrics.classification.MulticlassAccuracy``."""
    kwargs: dict[str, Any] = attrs.Factory(dict)
    """Keyword arguments of the class."""
    higher_is_better: bool | None = None
    """Whether higher values are better; unset: the class's own ``higher_is_better``."""

    def metric_class(self) -> type[Any]:
        base = _metric_base()
        cls = _import(self.kind)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ValueError(f"{self.kind!r} is not a torchmetrics.Metric class")
        return cls

    def build(self) -> Any:
        cls = self.metric_class()
        try:
            return cls(**self.kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.kind}(**{self.kwargs!r}) failed: {exc}") from None

    def direction(self) -> str:
        higher = self.higher_is_better
        if higher is None:
            higher = getattr(self.metric_class(), "higher_is_better", None)
        return "neutral" if higher is None else ("higher" if higher else "lower")


def _check_metrics(_: object, attribute: attrs.Attribute[Any], value: Mapping[str, MetricSpec]) -> None:
    if not value:
        raise ValueError("metrics must name at least one metric")
    for name, spec in value.items():
        if not name or "/" in name:
            raise ValueError(f"metric name {name!r} must be non-empty and contain no '/'")
        try:
            spec.build()  # a wrong path or argument: an error at validation, not at the first evaluation
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None


def _check_inputs(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not callable(_import(value)):
        raise ValueError(f"inputs {value!r} is not a function")


def split_inputs(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    """The default ``inputs``: ``(model(x), y)`` of a ``(x, y)`` batch or a dict with ``x`` and ``y``."""
    if isinstance(batch, Mapping):
        x, y = batch["x"], batch["y"]
    else:
        x, y = batch
    return model(x), y


def _keep(value: Any, mask: torch.Tensor) -> Any:
    """The rows of ``value`` (a tensor, or a dict/tuple/list of them) where ``mask`` is true."""
    if isinstance(value, torch.Tensor):
        return value[mask]
    if isinstance(value, Mapping):
        return {k: _keep(item, mask) for k, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_keep(item, mask) for item in value)
    return value


class OfflineMetricsCallback(PeriodicDataIteratorCallback):
    """torchmetrics metrics over ``dataset_key``, logged as ``{name}/{dataset_key}``."""

    @attrs.frozen(kw_only=True)
    class Config(PeriodicDataIteratorConfig):
        metrics: dict[str, MetricSpec] = attrs.field(validator=_check_metrics)
        """The metrics by name: ``{name: {kind: torchmetrics class, kwargs: {...}, higher_is_better}}``."""
        inputs: str | None = attrs.field(default=None, validator=_check_inputs)
        """Import path of ``fn(model, batch) -> (preds, target)``; unset: ``(model(x), y)``."""

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config = config
        self._metrics: dict[str, Any] | None = None
        self._inputs: Callable[[torch.nn.Module, Any], tuple[Any, Any]] = (
            split_inputs if config.inputs is None else _import(config.inputs)
        )

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        dataset = getattr(config, "dataset_key", "*")
        return [f"{name}/{dataset}" for name in getattr(config, "metrics", {})]

    @staticmethod
    def metric_directions(config: CallbackConfig) -> dict[str, str]:
        dataset = getattr(config, "dataset_key", "*")
        out: dict[str, str] = {}
        for name, spec in getattr(config, "metrics", {}).items():
            direction = spec.direction()
            out[f"{name}/{dataset}"] = direction
            out[f"ema=*/{name}/{dataset}"] = direction  # inside EmaCallback's eval_callbacks
        return out

    def metrics(self, trainer: Run) -> dict[str, Any]:
        """This entry's metric objects, on the trainer's device (built once)."""
        if self._metrics is None:
            self._metrics = {
                name: spec.build().to(trainer.device) for name, spec in self.config.metrics.items()
            }
        return self._metrics

    @hookimpl
    def before_training(self, trainer: Run) -> None:
        super().before_training(trainer)
        self.metrics(trainer)

    @hookimpl
    def at_eval(self, trainer: Run, model: torch.nn.Module, counter: Counter, interval: EvalInterval) -> None:
        metrics = self.metrics(trainer)
        for metric in metrics.values():
            metric.reset()
        loader = self.loader(trainer)
        dataset_len = len(loader.dataset)  # type: ignore[arg-type]
        world, rank = trainer.dist.world_size, trainer.dist.rank
        seen = 0  # samples of this rank so far: sample j of rank r is sample j * world + r of the dataset
        for batch in loader:
            n = batch_length(batch)
            if n is None:
                raise ValueError(f"cannot tell how many samples a batch of {self.config.dataset_key!r} holds")
            batch = to_device(batch, trainer.device)
            preds, target = self._inputs(model, batch)
            index = torch.arange(seen, seen + n, device=trainer.device) * world + rank
            seen += n
            keep = index < dataset_len  # the sampler's padding repeats samples already counted
            if not bool(keep.all()):
                if not bool(keep.any()):
                    continue
                preds, target = _keep(preds, keep), _keep(target, keep)
            for metric in metrics.values():
                metric.update(preds, target)
        dataset = self.config.dataset_key
        for name, metric in metrics.items():
            value = metric.compute()  # syncs the ranks' states when a process group exists
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"metric {name!r} of {self.config.key!r} computed {shape}, not one number; "
                    "configure it to reduce to a scalar (e.g. average='macro')"
                )
            value = value.detach().float().reshape(())
            trainer.writer.add_scalar(f"{name}/{dataset}", value)
            if trainer.is_main:
                log.info("%s%s/%s: %.5f", trainer.writer.prefix, name, dataset, value.item())

    def process_results(
        self,
        results: Any,
        *,
        trainer: Run,
        model: torch.nn.Module,
        counter: Counter,
        interval: EvalInterval,
    ) -> None:
        """Unused: :meth:`at_eval` updates the metrics batch by batch instead of collating results."""


__all__ = ["MetricSpec", "OfflineMetricsCallback", "split_inputs"]
