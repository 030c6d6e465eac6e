"""Models from config: bundled kinds, import paths to any ``nn.Module`` factory, composites.

A composite model holds named parts (``encoder``, ``head``); each part is saved to its own checkpoint
file (``{model}.{part}_cp={tag}_model.th``) and can be frozen on its own. Its forward pass applies the
parts in order, which covers encoder/head stacks; a custom composite subclasses :class:`CompositeModel`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn


class MLP(nn.Sequential):
    """A small fully connected network: ``depth`` hidden layers of ``hidden`` units with GELU."""

    def __init__(
        self,
        in_features: int = 2,
        out_features: int = 4,
        hidden: int = 64,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


def linear(in_features: int = 2, out_features: int = 4, bias: bool = True) -> nn.Module:
    """A single linear layer (the benchmark's tiny model)."""
    return nn.Linear(in_features, out_features, bias=bias)


class CompositeModel(nn.Module):
    """Named parts applied in order. ``parts`` keeps the config's order."""

    def __init__(self, parts: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(dict(parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts.values():
            x = part(x)
        return x


#: Bundled model kinds; any other kind is an import path ``package.module:factory``.
BUNDLED_MODELS = {"mlp": MLP, "linear": linear}


def named_models(model: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
    """The leaf models that get their own checkpoint files, with their names (``model.encoder``)."""
    if isinstance(model, CompositeModel):
        for part_name, part in model.parts.items():
            yield from named_models(part, f"{name}.{part_name}")
    else:
        yield name, model


__all__ = ["BUNDLED_MODELS", "MLP", "CompositeModel", "linear", "named_models"]
