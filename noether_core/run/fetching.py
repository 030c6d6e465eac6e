"""Reading a whole batch per call from datasets that can: tensors in memory are indexed with the batch's
indices at once instead of one sample at a time and stacked.

A batch read this way holds exactly the values, dtypes and structure ``default_collate`` would make of
the same samples read one by one (a list ``[x, y]`` for a dataset of ``(x, y)`` tuples), so switching
between the two paths changes nothing a run computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from noether_core.run.datasets import Blobs

#: Reads the samples at a 1-D ``int64`` index tensor as one collated batch.
BatchReader = Callable[[torch.Tensor], list[torch.Tensor]]

#: Bytes of samples the in-memory path gathers in one indexing call: large enough that the call's fixed
#: cost vanishes per micro-batch, small enough that the chunk is still in the CPU's cache when its
#: batches are used (16 MiB chunks made the 256-wide benchmark's batches about a third slower).
CHUNK_BYTES = 2**20


def batch_reader(dataset: Dataset[Any]) -> BatchReader | None:
    """How to read ``dataset`` a batch at a time, ``None`` when it can only be read sample by sample.

    Readable at once: a :class:`~torch.utils.data.TensorDataset`, the bundled ``blobs``, and a
    :class:`~torch.utils.data.Subset` of either. (A dataset with ``__getitems__`` is read a batch per
    call by ``DataLoader`` itself; it needs nothing from here.)
    """
    if isinstance(dataset, (TensorDataset, Blobs)):
        return _TensorReader(dataset.tensors)
    if isinstance(dataset, Subset):
        inner = batch_reader(dataset.dataset)
        if inner is None:
            return None
        return _SubsetReader(inner, torch.as_tensor(dataset.indices, dtype=torch.int64))
    return None


# classes, not closures: a loader's worker processes may receive the reader pickled
class _TensorReader:
    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __call__(self, index: torch.Tensor) -> list[torch.Tensor]:
        # index_select copies rows two to four times as fast as t[index] (advanced indexing) on the CPU
        return [t.index_select(0, index) for t in self.tensors]


class _SubsetReader:
    def __init__(self, inner: BatchReader, positions: torch.Tensor) -> None:
        self.inner = inner
        self.positions = positions

    def __call__(self, index: torch.Tensor) -> list[torch.Tensor]:
        return self.inner(self.positions.index_select(0, index))


def sample_bytes(dataset: Dataset[Any]) -> int:
    """Bytes one sample of a :func:`batch_reader`-readable dataset takes (at least 1)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    tensors: Sequence[torch.Tensor] = dataset.tensors  # type: ignore[attr-defined]
    return max(1, sum(t[0].numel() * t.element_size() for t in tensors))


class BatchView(Dataset[Any]):
    """``dataset`` for a ``DataLoader`` to read a batch per call: its fetcher calls ``__getitems__`` with
    each batch's indices (in the main process or in a worker), and ``collate_fn=as_is`` passes the batch
    on as read."""

    def __init__(self, dataset: Dataset[Any], reader: BatchReader) -> None:
        self.dataset = dataset
        self._reader = reader

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        return self._reader(torch.as_tensor(indices, dtype=torch.int64))


def as_is(batch: Any) -> Any:
    """The collate function of a :class:`BatchView` loader: the reader already made the batch."""
    return batch


def in_memory_batches(
    reader: BatchReader, order: torch.Tensor, batch_size: int, *, chunk_samples: int, pin: bool
) -> Iterator[list[torch.Tensor]]:
    """The batches of ``batch_size`` samples at ``order`` (a multiple of ``batch_size`` long), with no
    loader: ``chunk_samples`` at a time are gathered in one call, and each batch is a view into its
    chunk. ``pin``: chunks go to page-locked memory, so copies to the GPU can be asynchronous."""
    chunk = max(batch_size, chunk_samples - chunk_samples % batch_size)
    for start in range(0, len(order), chunk):
        gathered = reader(order[start : start + chunk])
        if pin:
            gathered = [t.pin_memory() for t in gathered]
        # split makes all of a chunk's views in one call, at half the cost of slicing each batch
        for parts in zip(*(torch.split(t, batch_size) for t in gathered), strict=True):
            yield list(parts)


__all__ = [
    "CHUNK_BYTES",
    "BatchReader",
    "BatchView",
    "as_is",
    "batch_reader",
    "in_memory_batches",
    "sample_bytes",
]
