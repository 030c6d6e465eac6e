"""The run's data: the named datasets plugins reach as ``trainer.data``, their evaluation loaders, and
the training batches, in an order reproducible from ``(seed, epoch)`` alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from noether_core.config.schema import DatasetConfig
from noether_core.errors import ConfigError, ConfigIssue
from noether_core.run.counter import Counter
from noether_core.run.distributed import DistInfo
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


def sequential_loader(
    dataset: Dataset[Any], batch_size: int, workers: int, dist_info: DistInfo
) -> DataLoader[Any]:
    """A loader over ``dataset`` in order; when distributed, this rank's share (:class:`ShardBatches`:
    the tail is padded so every rank has as many samples, in batches of their own; gathers drop them)."""
    if dist_info.is_distributed:
        shard = ShardBatches(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        return DataLoader(dataset, batch_sampler=shard, num_workers=workers, persistent_workers=workers > 0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


class DataContainer:
    """The run's named datasets (``trainer.data``), and evaluation loaders that live as long as the run.

    An evaluation loader is built once per (dataset, batch size) and reused, so worker processes start
    once, and it never shares an iterator with training.
    """

    def __init__(
        self, datasets: Mapping[str, Dataset[Any]], configs: Mapping[str, DatasetConfig], dist_info: DistInfo
    ) -> None:
        self.datasets = dict(datasets)
        self._configs = configs
        self._dist = dist_info
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

    def loader(self, dataset: Dataset[Any], batch_size: int, name: str) -> DataLoader[Any]:
        """A new sequential loader over ``dataset`` (a view of dataset ``name``: a subset, fewer
        properties) with ``name``'s workers, this rank's share when distributed."""
        return sequential_loader(dataset, batch_size, self.workers(name), self._dist)

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
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        micro_batch_size: int,
        accumulation_steps: int,
        updates_per_epoch: int,
        seed: int,
        workers: int,
        dist_info: DistInfo,
        pin_memory: bool,
    ) -> None:
        self._steps = accumulation_steps
        self._micro = micro_batch_size
        self._seed = seed
        self._sampler = EpochSampler(
            len(dataset),  # type: ignore[arg-type]
            samples_per_rank=updates_per_epoch * accumulation_steps * micro_batch_size,
            seed=seed,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        self._generator = torch.Generator()
        self._loader = DataLoader(
            dataset,
            batch_size=micro_batch_size,
            sampler=self._sampler,
            drop_last=True,
            num_workers=workers,
            generator=self._generator,
            pin_memory=pin_memory,
        )

    def _epoch(self, epoch: int, skip_micro_batches: int) -> Iterator[Any]:
        self._sampler.set_epoch(epoch, skip=skip_micro_batches * self._micro)
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


__all__ = ["DataContainer", "TrainBatches", "micro_batch_size", "sequential_loader"]
