"""Datasets from config: the bundled synthetic data and import paths to any map-style ``Dataset``."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset


class Blobs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Gaussian blobs: ``num_classes`` clusters in ``dim`` dimensions, ``size`` samples, fixed by ``seed``.

    The cluster centres depend only on ``num_classes``, ``dim`` and ``centers_seed``, so ``train``,
    ``val`` and ``test`` made with different ``seed`` draw from the same distribution.
    """

    def __init__(
        self,
        size: int = 1024,
        num_classes: int = 4,
        dim: int = 2,
        noise: float = 0.6,
        seed: int = 0,
        centers_seed: int = 1234,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        centres_gen = torch.Generator().manual_seed(centers_seed)
        angles = torch.arange(num_classes, dtype=torch.float32) * (2 * math.pi / num_classes)
        centres = torch.zeros(num_classes, dim)
        centres[:, 0] = 2.0 * torch.cos(angles)
        if dim > 1:
            centres[:, 1] = 2.0 * torch.sin(angles)
        if dim > 2:
            centres[:, 2:] = torch.randn(num_classes, dim - 2, generator=centres_gen)
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, num_classes, (size,), generator=gen)
        self.x = centres[self.y] + noise * torch.randn(size, dim, generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: the whole set in memory, as a ``TensorDataset`` holds it; training reads a batch
        of it per call (indexed at once) instead of a sample at a time."""
        return self.x, self.y


#: Bundled dataset kinds; any other kind is an import path ``package.module:factory``.
BUNDLED_DATASETS = {"blobs": Blobs}

__all__ = ["BUNDLED_DATASETS", "Blobs"]
