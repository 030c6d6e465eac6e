"""The run's data: the named datasets plugins reach as ``trainer.data``, their evaluation loaders, and
the training batches, in an order reproducible from ``(seed, epoch)`` alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Dataset

from noether_core.config.schema import DatasetConfig
from noether_core.errors import ConfigError, ConfigIssue
from noether_core.run.counter import Counter
from noether_core.run.distributed import DistInfo
from noether_core.run.fetching import (
    CHUNK_BYTES,
    BatchReader,
    BatchView,
    as_is,
    batch_reader,
    in_memory_batches,
    sample_bytes,
)
from noether_core.run.sampling import EpochSampler, ShardBatches, generator_seed


def micro_batch_size(batch_size: int, dist_info: DistInfo, accumulation_steps: int) -> int:
    """Samples per forward pass on one rank: the effective ``batch_size`` split over the ranks and the
    micro-batches of an update; a config error when it does not divide evenly."""
    parts = dist_info.world_size * accumulation_steps
    if batch_size % parts:
        problem = (
            f"{batch_size} is not divisible by world size {dist_info.world_size} x "
            f"accumulation_steps {accumulation_steps}"
        )
        raise ConfigError([ConfigIssue("trainer.batch_size", problem)])
    return batch_size // parts


@attrs.frozen(kw_only=True)
class LoaderOptions:
    """How the loaders of one dataset read it: its ``datasets`` section resolved for the run's device."""

    num_workers: int = 0
    #: ``None``: evaluation loaders keep their workers, the training loader does not
    persistent_workers: bool | None = None
    prefetch_factor: int | None = None
    pin_memory: bool = False
    batched_fetch: bool = True

    @classmethod
    def from_config(cls, config: DatasetConfig, device: torch.device) -> LoaderOptions:
        """``config``'s options; pinning only where a CUDA device can use it (anywhere else torch
        would warn and pin nothing)."""
        pin = config.pin_memory is not False and device.type == "cuda"
        return cls(
            num_workers=config.num_workers,
            persistent_workers=config.persistent_workers,
            prefetch_factor=config.prefetch_factor,
            pin_memory=pin,
            batched_fetch=config.batched_fetch,
        )

    def reader(self, dataset: Dataset[Any]) -> BatchReader | None:
        """How to read ``dataset`` a batch per call, when batched fetching is on and it can."""
        return batch_reader(dataset) if self.batched_fetch else None

    def loader_kwargs(self, *, keep_workers: bool) -> dict[str, Any]:
        """``DataLoader`` arguments; ``keep_workers``: the default for ``persistent_workers``."""
        workers = self.num_workers
        persistent = keep_workers if self.persistent_workers is None else self.persistent_workers
        kwargs: dict[str, Any] = {
            "num_workers": workers,
            "persistent_workers": persistent and workers > 0,
            "pin_memory": self.pin_memory,
        }
        if workers and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs


def sequential_loader(
    dataset: Dataset[Any], batch_size: int, workers: int | LoaderOptions, dist_info: DistInfo
) -> DataLoader[Any]:
    """A loader over ``dataset`` in order (``workers``: a worker count, or the dataset's options); when
    distributed, this rank's share (:class:`ShardBatches`: the tail is padded so every rank has as many
    samples, in batches of their own; gathers drop them). A dataset readable a batch per call is read
    so, in the same batches."""
    options = workers if isinstance(workers, LoaderOptions) else LoaderOptions(num_workers=workers)
    kwargs = options.loader_kwargs(keep_workers=True)
    reader = options.reader(dataset)
    if reader is not None:
        # loader.dataset stays a view of the same length: evaluation counts samples with it
        kwargs.update(dataset=BatchView(dataset, reader), collate_fn=as_is)
    else:
        kwargs.update(dataset=dataset)
    if dist_info.is_distributed:
        shard = ShardBatches(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        return DataLoader(batch_sampler=shard, **kwargs)
    return DataLoader(batch_size=batch_size, shuffle=False, **kwargs)


class DataContainer:
    """The run's named datasets (``trainer.data``), and evaluation loaders that live as long as the run.

    An evaluation loader is built once per (dataset, batch size) and reused, so worker processes start
    once, and it never shares an iterator with training.
    """

    def __init__(
        self,
        datasets: Mapping[str, Dataset[Any]],
        configs: Mapping[str, DatasetConfig],
        dist_info: DistInfo,
        device: torch.device | None = None,
    ) -> None:
        self.datasets = dict(datasets)
        self._configs = configs
        self._dist = dist_info
        self._device = device or torch.device("cpu")
        self._loaders: dict[tuple[str, int], DataLoader[Any]] = {}

    def __getitem__(self, name: str) -> Dataset[Any]:
        try:
            return self.datasets[name]
        except KeyError:
            raise KeyError(f"no dataset {name!r}; the config has {', '.join(self.datasets)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.datasets

    def lengths(self) -> dict[str, int]:
        """Samples in each dataset, by name."""
        return {name: len(ds) for name, ds in self.datasets.items()}  # type: ignore[arg-type]

    def workers(self, name: str) -> int:
        """Loader worker processes the config asks for ``name``."""
        return self._configs[name].num_workers

    def options(self, name: str) -> LoaderOptions:
        """How the loaders of ``name`` read it (its ``datasets`` section, for the run's device)."""
        return LoaderOptions.from_config(self._configs[name], self._device)

    def loader(self, dataset: Dataset[Any], batch_size: int, name: str) -> DataLoader[Any]:
        """A new sequential loader over ``dataset`` (a view of dataset ``name``: a subset, fewer
        properties) with ``name``'s loader options, this rank's share when distributed."""
        return sequential_loader(dataset, batch_size, self.options(name), self._dist)

    def eval_loader(self, name: str, batch_size: int) -> DataLoader[Any]:
        """A sequential loader over ``name`` (this rank's share when distributed), kept for reuse."""
        key = (name, batch_size)
        loader = self._loaders.get(key)
        if loader is None:
            loader = self._loaders[key] = self.loader(self[name], batch_size, name)
        return loader


class TrainBatches:
    """The training micro-batches of every remaining update.

    Each epoch visits the ``train`` dataset in a seeded order that depends on ``(seed, epoch)`` alone, so
    a run resumed part-way through an epoch needs only the counter: it skips what was consumed.

    A dataset readable a batch per call (:func:`~noether_core.run.fetching.batch_reader`) is read so:
    with no workers straight from memory (no loader at all), with workers through a ``DataLoader``
    whose fetcher asks a :class:`~noether_core.run.fetching.BatchView` for each batch at once. Either
    way each micro-batch holds the samples, in the order, that reading sample by sample gives.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        micro_batch_size: int,
        accumulation_steps: int,
        updates_per_epoch: int,
        seed: int,
        workers: int = 0,
        dist_info: DistInfo,
        pin_memory: bool = False,
        options: LoaderOptions | None = None,
    ) -> None:
        if options is None:
            options = LoaderOptions(num_workers=workers, pin_memory=pin_memory)
        self._steps = accumulation_steps
        self._micro = micro_batch_size
        self._seed = seed
        self._pin = options.pin_memory
        self._sampler = EpochSampler(
            len(dataset),  # type: ignore[arg-type]
            samples_per_rank=updates_per_epoch * accumulation_steps * micro_batch_size,
            seed=seed,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        self._generator = torch.Generator()
        self._reader = options.reader(dataset)
        self._loader: DataLoader[Any] | None = None
        self._chunk = 0
        kwargs = options.loader_kwargs(keep_workers=False)
        if self._reader is not None and options.num_workers == 0:
            self._chunk = CHUNK_BYTES // sample_bytes(dataset)
        else:
            if self._reader is not None:
                kwargs.update(dataset=BatchView(dataset, self._reader), collate_fn=as_is)
            else:
                kwargs.update(dataset=dataset)
            self._loader = DataLoader(
                batch_size=micro_batch_size,
                sampler=self._sampler,
                drop_last=True,
                generator=self._generator,
                **kwargs,
            )

    @property
    def batched(self) -> bool:
        """Whether the dataset is read a batch per call."""
        return self._reader is not None

    def _epoch(self, epoch: int, skip_micro_batches: int) -> Iterator[Any]:
        skip = skip_micro_batches * self._micro
        self._sampler.set_epoch(epoch, skip=skip)
        if self._loader is None:
            assert self._reader is not None
            order = self._sampler.index_tensor(epoch)[skip:]
            return in_memory_batches(
                self._reader, order, self._micro, chunk_samples=self._chunk, pin=self._pin
            )
        # workers draw their seeds from this generator, not the global RNG, so resuming mid-epoch
        # leaves the global RNG stream exactly where an uninterrupted run has it
        self._generator.manual_seed(generator_seed(self._seed * 7919 + epoch))
        return iter(self._loader)

    def updates(self, counter: Counter) -> Iterator[list[tuple[Any, float]]]:
        """The micro-batches of each remaining update, with the seconds spent waiting for each; reads
        ``counter`` (which the trainer advances between two updates) to know where it is."""
        steps = self._steps
        clock = time.perf_counter
        while not counter.is_finished:
            epoch = counter.epoch
            it = self._epoch(epoch, counter.update_in_epoch * steps)
            while counter.epoch == epoch and not counter.is_finished:
                batches = []
                for _ in range(steps):
                    start = clock()
                    batch = next(it)
                    batches.append((batch, clock() - start))
                yield batches


__all__ = ["DataContainer", "LoaderOptions", "TrainBatches", "micro_batch_size", "sequential_loader"]
