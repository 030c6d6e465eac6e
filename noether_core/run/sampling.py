"""The order in which training samples are visited, reproducible from ``(seed, epoch)`` alone.

Because the order is a pure function of the seed and the epoch, a run resumed part-way through an
epoch needs only the counter: it skips the batches the interrupted run had already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def generator_seed(value: int) -> int:
    """``value`` as a ``torch.Generator`` seed: torch takes -2**63 .. 2**64-1; a value outside (a large
    config seed times a multiplier) is reduced modulo 2**64, values inside are kept so orders stay."""
    return value if -(2**63) <= value < 2**64 else value % 2**64


class EpochSampler(Sampler[int]):
    """Indices of one rank for one epoch: a seeded permutation (or the identity), truncated to the
    ``samples_per_rank`` that full updates use, dealt round-robin to ranks, starting ``skip`` samples in.
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        samples_per_rank: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if samples_per_rank * world_size > dataset_len:
            raise ValueError(
                f"{samples_per_rank} samples x {world_size} ranks exceed the dataset ({dataset_len})"
            )
        self.dataset_len = dataset_len
        self.samples_per_rank = samples_per_rank
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Visit ``epoch``'s order next, leaving out the first ``skip`` samples of this rank."""
        self.epoch = epoch
        self.skip = skip

    def index_tensor(self, epoch: int) -> torch.Tensor:
        """:meth:`indices` as an ``int64`` tensor (what batched reading indexes with)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(generator_seed(self.seed * 1_000_003 + epoch))
            order = torch.randperm(self.dataset_len, generator=gen)
        else:
            order = torch.arange(self.dataset_len)
        used = order[: self.samples_per_rank * self.world_size]
        return used[self.rank :: self.world_size]

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, all of them (``skip`` is not applied)."""
        indices: list[int] = self.index_tensor(epoch).tolist()
        return indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch)[self.skip :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.skip


class ShardBatches(Sampler[list[int]]):
    """One rank's batches of a dataset visited in order, as ``DistributedSampler(shuffle=False)`` deals
    it: sample ``i`` to rank ``i % world_size``, the tail padded with the first samples so that every
    rank holds ``ceil(len / world_size)`` of them. Unlike a loader over that sampler, a batch never
    mixes real samples and padding: the padding comes in batches of its own, after the real ones, so a
    batch mean (a loss) repeated for each sample of its batch is exact for every real sample, and the
    padding rows the gather drops carry no part of it."""

    def __init__(self, dataset_len: int, batch_size: int, *, rank: int, world_size: int) -> None:
        self.batch_size = batch_size
        per_rank = -(-dataset_len // world_size)
        padded = [i % dataset_len for i in range(per_rank * world_size)] if dataset_len else []
        positions = range(rank, len(padded), world_size)
        self.real = [padded[p] for p in positions if p < dataset_len]
        self.padding = [padded[p] for p in positions if p >= dataset_len]

    def __iter__(self) -> Iterator[list[int]]:
        for part in (self.real, self.padding):
            for start in range(0, len(part), self.batch_size):
                yield part[start : start + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.real) // self.batch_size) + -(-len(self.padding) // self.batch_size)


__all__ = ["EpochSampler", "ShardBatches", "generator_seed"]
