"""``ModelSummaryCallback``: a table of the model's layers (name, type, parameters, trainable).

Before training it prints the table through the ``noether`` logger (stdout and ``log.txt``) and writes it
to the run summary ``model_summary`` (under ``summary:`` in ``summary.yaml``): one row per module down to
``depth`` levels below the model, each ``{name, type, params, trainable}`` where ``params`` counts the
module's parameter elements (a tensor shared inside the module once) and ``trainable`` those of them
with ``requires_grad``. ``depth: 1`` (the default) lists the model's top-level children; for a composite
model the parts are the top level (``encoder``, ``head``), so ``depth: 2`` lists their children too
(``encoder.0``). Names are paths below the model, as in the model's ``state_dict``, without ``parts.``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
from torch import nn

from noether_core import CallbackConfig, CompositeModel, hookimpl

if TYPE_CHECKING:
    from noether_core import Run

log = logging.getLogger("noether")

#: The summary key the table is written under.
SUMMARY_KEY = "model_summary"


def _children(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # a composite's ModuleDict is plumbing: its parts are what a user named in the config
    if isinstance(module, CompositeModel):
        yield from module.parts.items()
    else:
        yield from module.named_children()


def layer_rows(model: nn.Module, depth: int) -> list[dict[str, Any]]:
    """``{name, type, params, trainable}`` for every module of ``model`` down to ``depth`` levels, in
    depth-first order (a module before its children)."""
    rows: list[dict[str, Any]] = []

    def walk(module: nn.Module, prefix: str, level: int) -> None:
        for name, child in _children(module):
            path = f"{prefix}{name}"
            params = trainable = 0
            for p in child.parameters():
                params += p.numel()
                if p.requires_grad:
                    trainable += p.numel()
            rows.append(
                {"name": path, "type": type(child).__name__, "params": params, "trainable": trainable}
            )
            if level < depth:
                walk(child, f"{path}.", level + 1)

    walk(model, "", 1)
    return rows


def format_table(rows: list[dict[str, Any]], total: int, trainable: int) -> str:
    """The rows as a fixed-width text table, with the model's totals under it."""
    header = ("name", "type", "params", "trainable")
    cells = [header, *((r["name"], r["type"], f"{r['params']:,}", f"{r['trainable']:,}") for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"total params: {total:,}, trainable: {trainable:,}, frozen: {total - trainable:,}")
    return "\n".join(lines)


class ModelSummaryCallback:
    """Prints a table of the model's layers before training and writes it to the summary
    ``model_summary``."""

    needs_eval_mode = False

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        depth: int = attrs.field(default=1, validator=attrs.validators.ge(1))
        """How many levels of modules below the model the table lists (1: its top-level children)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @staticmethod
    def produces(config: CallbackConfig, run_config: Any) -> list[str]:
        """A summary only (``model_summary``), no metrics."""
        return []

    @hookimpl
    def before_training(self, trainer: Run, model: nn.Module) -> None:
        rows = layer_rows(model, self.config.depth)
        params = list(model.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        trainer.writer.add_summary(SUMMARY_KEY, rows)
        log.info("Model summary of %s:\n%s", trainer.model_name, format_table(rows, total, trainable))
