"""Data iteration for evaluation: a plugin base that runs over a whole dataset at its ``at_eval``.

Subclass :class:`PeriodicDataIteratorCallback`, give it a ``Config`` extending
:class:`PeriodicDataIteratorConfig`, and implement two methods::

    class AccuracyCallback(PeriodicDataIteratorCallback):
        @attrs.frozen(kw_only=True)
        class Config(PeriodicDataIteratorConfig):
            pass

        def process_data(self, batch, *, model, trainer):
            x, y = batch
            return {"correct": (model(x).argmax(1) == y).float()}      # one row per sample

        def process_results(self, results, *, trainer, model, counter, interval):
            trainer.writer.add_scalar(f"accuracy/{self.config.dataset_key}", results["correct"].mean())

        @staticmethod
        def produces(config, run_config):                                # for config validation
            return [f"accuracy/{config.dataset_key}"]

When the entry is due, the trainer calls ``at_eval`` with the model in eval mode under
:func:`torch.no_grad`; the base iterates the dataset (this rank's share when distributed) with a loader
of its own that lives as long as the run and never touches the training iterator, moves each batch to
the trainer's device, calls :meth:`~PeriodicDataIteratorCallback.process_data`, collates the per-batch
results (:func:`collate`), gathers them from every rank in dataset order without the sampler's padding
(:func:`gather_results`), and hands the whole to :meth:`~PeriodicDataIteratorCallback.process_results`.

Collation, for each position of the (nested) result structure:

* a tensor with a leading dimension holds **one row per sample**: rows are concatenated, and under
  several ranks put back in dataset order with the padding dropped (a rank's share is padded with the
  first samples to as many as the others hold, in batches of their own:
  :class:`~noether_core.run.sampling.ShardBatches`);
* a 0-dim tensor or a Python/NumPy number is **one value per batch**: values are stacked into a 1-D
  tensor (under several ranks: rank 0's batches first, then rank 1's, ...; per-batch values cannot be
  de-padded, so prefer per-sample rows, e.g. ``loss.expand(batch_size)``: since no batch mixes real
  samples and padding, a batch mean repeated per sample is exact for every sample kept);
* dicts, tuples and lists are collated position by position and keep their type; ``None`` stays
  ``None``; anything else (strings) becomes a list with one item per batch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import numpy as np
import torch
from attrs import validators as v
from torch.utils.data import DataLoader, Dataset, Subset

from noether_core.config.schema import CallbackConfig
from noether_core.plugins.markers import hookimpl
from noether_core.run.device import to_device
from noether_core.run.distributed import DistInfo

if TYPE_CHECKING:
    from noether_core.config.schema import RunConfig
    from noether_core.plugins.hookspecs import EvalInterval
    from noether_core.run.counter import Counter
    from noether_core.run.protocol import Run

log = logging.getLogger("noether.evaluation")

_LeafKind = Literal["sample", "batch", "object", "none"]


# ---------------------------------------------------------------------------------------- batches


def batch_length(batch: Any) -> int | None:
    """Samples in ``batch``: the leading size of its first tensor with a leading dimension, or ``None``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    values: Iterable[Any] = ()
    if isinstance(batch, Mapping):
        values = batch.values()
    elif isinstance(batch, (list, tuple)):
        values = batch
    for value in values:
        n = batch_length(value)
        if n is not None:
            return n
    return None


# -------------------------------------------------------------------------------------- collation


@attrs.frozen
class _Leaf:
    """A collated value and what its rows mean (how ranks are merged)."""

    kind: _LeafKind
    value: Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.number, np.bool_))


def _collate(batches: Sequence[Any], where: str = "result") -> Any:
    """The per-batch results as one structure whose leaves are :class:`_Leaf`."""
    first = batches[0]
    if isinstance(first, Mapping):
        keys = list(first)
        for b in batches:
            if not isinstance(b, Mapping) or list(b) != keys:
                raise ValueError(
                    f"{where}: every batch must return a dict with the keys {keys}, got {_brief(b)}"
                )
        return {k: _collate([b[k] for b in batches], f"{where}[{k!r}]") for k in keys}
    if isinstance(first, (list, tuple)):
        for b in batches:
            if type(b) is not type(first) or len(b) != len(first):
                raise ValueError(
                    f"{where}: every batch must return a {type(first).__name__} of {len(first)} items, "
                    f"got {_brief(b)}"
                )
        return type(first)(_collate([b[i] for b in batches], f"{where}[{i}]") for i in range(len(first)))
    if first is None:
        return _Leaf("none", None)
    if isinstance(first, torch.Tensor):
        if not all(isinstance(b, torch.Tensor) and b.ndim == first.ndim for b in batches):
            raise ValueError(f"{where}: every batch must return a tensor with {first.ndim} dimensions")
        if first.ndim == 0:
            return _Leaf("batch", torch.stack(list(batches)))
        return _Leaf("sample", torch.cat(list(batches)))
    if _is_number(first):
        return _Leaf("batch", torch.tensor([b.item() if isinstance(b, np.generic) else b for b in batches]))
    return _Leaf("object", list(batches))


def _brief(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict with keys {list(value)}"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _map_leaves(tree: Any, fn: Callable[[_Leaf], Any]) -> Any:
    if isinstance(tree, _Leaf):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _map_leaves(x, fn) for k, x in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_leaves(x, fn) for x in tree)
    raise TypeError(f"not a collated structure: {type(tree).__name__}")


def _leaves(tree: Any) -> list[_Leaf]:
    out: list[_Leaf] = []
    _map_leaves(tree, out.append)
    return out


def _replace_leaves(tree: Any, leaves: Sequence[_Leaf]) -> Any:
    it = iter(leaves)
    return _map_leaves(tree, lambda _: next(it))


def _unwrap(tree: Any) -> Any:
    return _map_leaves(tree, lambda leaf: leaf.value)


def collate(batches: Sequence[Any]) -> Any:
    """Collate the per-batch results of one process (see the module docs for the rules)."""
    if not batches:
        raise ValueError("nothing to collate: the dataset yielded no batches")
    return _unwrap(_collate(batches))


def restore_dataset_order(per_rank: Sequence[torch.Tensor], dataset_len: int) -> torch.Tensor:
    """Per-sample rows of every rank (in rank order) back in dataset order, without padding.

    The evaluation loaders (:class:`~noether_core.run.sampling.ShardBatches`, as a non-shuffling
    ``DistributedSampler``) deal sample ``i`` to rank ``i % world_size`` and pad the tail by repeating
    the first samples, so every rank holds the same number of rows; row ``j`` of rank ``r`` is sample
    ``j * world_size + r``, and everything from ``dataset_len`` on is padding.
    """
    lengths = {len(t) for t in per_rank}
    if len(lengths) != 1:
        raise ValueError(f"every rank must hold the same number of rows, got {[len(t) for t in per_rank]}")
    rows = lengths.pop()
    if rows * len(per_rank) < dataset_len:
        raise ValueError(
            f"{len(per_rank)} ranks x {rows} rows cannot cover {dataset_len} samples; "
            "process_data must return one row per sample"
        )
    interleaved = torch.stack(list(per_rank), dim=1).reshape(rows * len(per_rank), *per_rank[0].shape[1:])
    return interleaved[:dataset_len]


def _merge(per_rank: Sequence[Any], dataset_len: int) -> Any:
    """One collated structure from each rank's (same-shaped) structure."""
    per_rank_leaves = [_leaves(tree) for tree in per_rank]
    if len({len(leaves) for leaves in per_rank_leaves}) != 1:
        raise ValueError(
            "the ranks' results have different structures; process_data must return the same shape"
        )
    merged: list[_Leaf] = []
    for column in zip(*per_rank_leaves, strict=True):
        kind = column[0].kind
        if any(leaf.kind != kind for leaf in column):
            raise ValueError(
                f"the ranks' results disagree: {[leaf.kind for leaf in column]} values at one position"
            )
        values = [leaf.value for leaf in column]
        if kind == "sample":
            merged.append(_Leaf(kind, restore_dataset_order(values, dataset_len)))
        elif kind == "batch":
            merged.append(_Leaf(kind, torch.cat(values)))
        elif kind == "object":
            merged.append(_Leaf(kind, [item for value in values for item in value]))
        else:
            merged.append(_Leaf(kind, None))
    return _replace_leaves(per_rank[0], merged)


def merge_rank_results(per_rank_batches: Sequence[Sequence[Any]], dataset_len: int) -> Any:
    """The result several ranks' per-batch results gather into, computed in one process.

    ``per_rank_batches[r]`` is what ``process_data`` returned for each batch of rank ``r``. This is
    exactly what :func:`gather_results` computes across processes, minus the transport: use it to test a
    ``process_data`` / ``process_results`` pair for several ranks without starting any.
    """
    return _unwrap(_merge([_collate(batches) for batches in per_rank_batches], dataset_len))


def _all_gather_trees(local: Any, dist_info: DistInfo) -> list[Any]:
    """Every rank's collated structure, on every rank. Tensors travel as tensors when their shapes
    agree across ranks, everything else as pickled objects."""
    import torch.distributed as dist

    world = dist_info.world_size
    leaves = _leaves(local)
    meta = [
        (leaf.kind, tuple(leaf.value.shape)[1:], str(leaf.value.dtype))
        if isinstance(leaf.value, torch.Tensor)
        else (leaf.kind, None, None)
        for leaf in leaves
    ]
    metas: list[Any] = [None] * world
    dist.all_gather_object(metas, meta)
    if any(len(m) != len(meta) for m in metas):
        raise ValueError(
            "the ranks' results have different structures; process_data must return the same shape"
        )
    comm_device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    columns: list[list[_Leaf]] = [[] for _ in range(world)]
    for i, leaf in enumerate(leaves):
        uniform = all(m[i] == meta[i] for m in metas)
        if isinstance(leaf.value, torch.Tensor) and uniform:
            tensor = leaf.value.contiguous().to(comm_device)
            sizes = torch.tensor([len(tensor)], device=comm_device)
            all_sizes = [torch.empty_like(sizes) for _ in range(world)]
            dist.all_gather(all_sizes, sizes)
            if len({int(s.item()) for s in all_sizes}) == 1:
                parts = [torch.empty_like(tensor) for _ in range(world)]
                dist.all_gather(parts, tensor)
                values: list[Any] = [p.to(leaf.value.device) for p in parts]
            else:
                values = [None] * world
                dist.all_gather_object(values, leaf.value.cpu())
        else:
            payload = leaf.value.cpu() if isinstance(leaf.value, torch.Tensor) else leaf.value
            values = [None] * world
            dist.all_gather_object(values, payload)
        for rank in range(world):
            columns[rank].append(_Leaf(leaf.kind, values[rank]))
    return [_replace_leaves(local, column) for column in columns]


def gather_results(
    batches: Sequence[Any], dist_info: DistInfo, dataset_len: int, *, local_samples: int | None = None
) -> Any:
    """Collate this rank's per-batch results and, when distributed, merge every rank's in dataset order.

    A collective call: every rank calls it with its own share. ``local_samples`` (the samples this rank
    iterated) lets per-sample values be checked: a tensor with a leading dimension must hold exactly one
    row per sample.
    """
    if not batches:
        raise ValueError("nothing to gather: the dataset yielded no batches")
    local = _collate(batches)
    if local_samples is not None:
        for leaf in _leaves(local):
            if leaf.kind == "sample" and len(leaf.value) != local_samples:
                raise ValueError(
                    f"process_data returned tensors with {len(leaf.value)} rows in all for "
                    f"{local_samples} samples; return one row per sample, or a 0-dim tensor (one value "
                    "per batch)"
                )
    if not dist_info.is_distributed:
        return _unwrap(local)
    return _unwrap(_merge(_all_gather_trees(local, dist_info), dataset_len))


# ------------------------------------------------------------------------------------ the base


@attrs.frozen(kw_only=True)
class PeriodicDataIteratorConfig(CallbackConfig):
    """Fields of an entry that iterates a dataset.

    ``dataset_key`` names a dataset of the config's ``datasets``; ``batch_size`` is per process (default:
    the trainer's micro batch size); ``max_size`` keeps the first ``max_size`` samples; ``properties``
    asks the dataset for a subset of what each sample holds, for datasets with a
    ``with_properties(properties)`` method returning the reduced dataset.
    """

    dataset_key: str = attrs.field(validator=v.min_len(1))
    """The dataset to iterate: a name in the config's ``datasets``."""
    batch_size: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
    """Samples per batch on each process. Unset: the trainer's micro-batch size."""
    max_size: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
    """Iterate only the first this many samples of the dataset. Unset: all of them."""
    properties: list[str] | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    """Ask the dataset for only these parts of each sample (its ``with_properties`` method)."""


class PeriodicDataIteratorCallback:
    """Base for plugins that iterate a dataset when due: implement :meth:`process_data` (per batch) and
    :meth:`process_results` (the collated whole). See :mod:`noether_core.run.evaluation`.

    A subclass that implements ``before_training`` itself calls ``super().before_training(trainer)`` to
    keep the early check of its dataset (otherwise it happens at the first evaluation).
    """

    Config = PeriodicDataIteratorConfig

    def __init__(self, config: PeriodicDataIteratorConfig) -> None:
        self.config = config
        self._loader: DataLoader[Any] | None = None
        #: seconds spent waiting for evaluation batches over the run, on this rank
        self.data_seconds = 0.0

    # the methods a subclass implements

    def process_data(self, batch: Any, *, model: torch.nn.Module, trainer: Run) -> Any:
        """Process one batch (already on the trainer's device) and return what to collate."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_data")

    def process_results(
        self,
        results: Any,
        *,
        trainer: Run,
        model: torch.nn.Module,
        counter: Counter,
        interval: EvalInterval,
    ) -> None:
        """Use the collated results of the whole dataset (every rank gets them), e.g. log metrics."""

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str] | None:
        """Metric keys (``fnmatch`` patterns) this entry logs at its ticks; ``None``: not declared.

        See :mod:`noether_core.run.metric_dependencies`.
        """
        return None

    # hooks

    @hookimpl
    def before_training(self, trainer: Run) -> None:
        self.loader(trainer)

    @hookimpl
    def at_eval(self, trainer: Run, model: torch.nn.Module, counter: Counter, interval: EvalInterval) -> None:
        results = self.iterate(trainer, model)
        self.process_results(results, trainer=trainer, model=model, counter=counter, interval=interval)

    # the machinery

    def dataset(self, trainer: Run) -> Dataset[Any]:
        """The dataset this entry iterates: ``dataset_key`` with ``properties`` and ``max_size`` applied."""
        cfg = self.config
        if cfg.dataset_key not in trainer.data:
            raise LookupError(
                f"no dataset {cfg.dataset_key!r} for {cfg.key!r}; "
                f"the config has {', '.join(trainer.data.datasets)}"
            )
        dataset = trainer.data[cfg.dataset_key]
        if cfg.properties is not None:
            select = getattr(dataset, "with_properties", None)
            if not callable(select):
                raise TypeError(
                    f"{cfg.key!r} asks dataset {cfg.dataset_key!r} ({type(dataset).__name__}) for the "
                    f"properties {cfg.properties}, but it has no with_properties(properties) method"
                )
            dataset = select(frozenset(cfg.properties))
        if cfg.max_size is not None and cfg.max_size < len(dataset):  # type: ignore[arg-type]
            dataset = Subset(dataset, range(cfg.max_size))
        return dataset

    def loader(self, trainer: Run) -> DataLoader[Any]:
        """This entry's evaluation loader, built once and reused at every evaluation."""
        if self._loader is None:
            cfg = self.config
            batch_size = cfg.batch_size or trainer.micro_batch_size
            if cfg.properties is None and cfg.max_size is None:
                self._loader = trainer.data.eval_loader(cfg.dataset_key, batch_size)
            else:
                self._loader = trainer.data.loader(self.dataset(trainer), batch_size, cfg.dataset_key)
        return self._loader

    def iterate(self, trainer: Run, model: torch.nn.Module) -> Any:
        """Run :meth:`process_data` over this rank's share and return the gathered, collated results."""
        loader = self.loader(trainer)
        device = trainer.device
        outputs: list[Any] = []
        samples: int | None = 0
        waited = 0.0
        clock = time.perf_counter
        start = clock()
        for batch in _progress(loader, f"{self.config.key} [{self.config.dataset_key}]", trainer.is_main):
            n = batch_length(batch)
            samples = None if samples is None or n is None else samples + n
            batch = to_device(batch, device)
            waited += clock() - start
            outputs.append(self.process_data(batch, model=model, trainer=trainer))
            start = clock()
        self.data_seconds += waited
        log.debug("%s waited %.2fs for data", self.config.key, waited)
        return gather_results(outputs, trainer.dist, len(loader.dataset), local_samples=samples)  # type: ignore[arg-type]


def _progress(loader: DataLoader[Any], description: str, is_main: bool) -> Iterator[Any]:
    """``loader``'s batches, with a transient progress bar when rank 0 writes to a terminal."""
    if not (is_main and sys.stdout.isatty()):
        yield from loader
        return
    from rich.progress import track

    yield from track(loader, description=description, total=len(loader), transient=True)


__all__ = [
    "PeriodicDataIteratorCallback",
    "PeriodicDataIteratorConfig",
    "batch_length",
    "collate",
    "gather_results",
    "merge_rank_results",
    "restore_dataset_order",
]
