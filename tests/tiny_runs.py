"""The tiny runs the tests share: their configs, and helpers that run them in this process or in a real
subprocess of the ``noether`` command.

* :func:`tiny_config` is the run most trainer tests start from: an MLP on 256 blobs, batch 16, so
  :data:`UPE` updates per epoch; :func:`ramp_config` is the evaluation tests' run, whose losses can be
  worked out by hand (a frozen doubler on the ramp ``0..n-1``).
* :func:`make_trainer` builds the :class:`~noether_core.run.trainer.Trainer` of a config the way
  ``noether train`` does (one plan), :func:`fit` also trains it, with a :class:`MemoryTracker`;
  :func:`train` is ``noether train`` itself, in this process; :func:`run_noether` is the real console
  script in a subprocess.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from noether_core.cli import main
from noether_core.config.loader import structure_config
from noether_core.io.paths import RunPaths
from noether_core.plugins.registry import PluginRegistry
from noether_core.run.metric_dependencies import check_metric_dependencies
from noether_core.run.plan import RunPlan
from noether_core.run.trainer import Trainer

#: Updates per epoch of :func:`tiny_config`: 256 samples / batch 16.
UPE = 16


def tiny_config(**trainer: Any) -> dict[str, Any]:
    """Two epochs of a small MLP on blobs (train 256, val 64), batch 16, no default plugins."""
    return {
        "trainer": {
            "max_epochs": 2,
            "batch_size": 16,
            "seed": 3,
            "num_threads": 1,
            "add_default_callbacks": False,
            **trainer,
        },
        "model": {
            "kind": "mlp",
            "kwargs": {"in_features": 2, "out_features": 4, "hidden": 16, "dropout": 0.1},
        },
        "optimizer": {"kind": "adamw", "lr": 0.01, "lr_schedule": {"kind": "cosine", "warmup_updates": 3}},
        "datasets": {
            "train": {"kind": "blobs", "kwargs": {"size": 256, "seed": 0}},
            "val": {"kind": "blobs", "kwargs": {"size": 64, "seed": 1}},
        },
        "callbacks": [],
    }


def composite_model(frozen_encoder: bool = False) -> dict[str, Any]:
    """The ``model`` section of a composite ``clf`` for :func:`tiny_config`: an ``encoder`` (2 -> 8) and
    a ``head`` (8 -> 4), each saved to its own checkpoint files."""
    return {
        "kind": "composite",
        "name": "clf",
        "parts": {
            "encoder": {
                "kind": "mlp",
                "kwargs": {"in_features": 2, "out_features": 8, "hidden": 8, "depth": 1},
                "frozen": frozen_encoder,
            },
            "head": {"kind": "mlp", "kwargs": {"in_features": 8, "out_features": 4, "hidden": 8, "depth": 1}},
        },
    }


# ------------------------------------------------------------------------------ the ramp run


def ramp(size: int = 10) -> TensorDataset:
    """``x = 0..size-1`` with targets ``y = 0``: with :func:`doubler`, sample ``x`` has squared error
    ``4 x^2``."""
    x = torch.arange(size, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(x, torch.zeros(size, 1))


def doubler() -> nn.Module:
    """A frozen ``y = 2x``."""
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    return layer


#: Calls of :func:`nan_on_rank_1_step` in this process.
_STEP_CALLS = {"n": 0}


def nan_on_rank_1_step(model: nn.Module, batch: Any) -> Any:
    """The default train step, whose loss is NaN in the third call on rank 1 (``RANK``) alone."""
    from noether_core.run.train_step import default_train_step

    _STEP_CALLS["n"] += 1
    out = default_train_step(model, batch)
    if os.environ.get("RANK") == "1" and _STEP_CALLS["n"] == 3:
        out = type(out)(total=out.total * float("nan"), losses=out.losses, outputs=out.outputs)
    return out


def ramp_config(max_updates: int = 4, batch_size: int = 4, **trainer: Any) -> dict[str, Any]:
    """A frozen doubler on ramps (train 8, val 10): every loss is known by hand."""
    return {
        "trainer": {
            "max_updates": max_updates,
            "batch_size": batch_size,
            "seed": 0,
            "num_threads": 1,
            "add_default_callbacks": False,
            **trainer,
        },
        "model": {"kind": "tiny_runs:doubler", "frozen": True},
        "datasets": {
            "train": {"kind": "tiny_runs:ramp", "kwargs": {"size": 8}},
            "val": {"kind": "tiny_runs:ramp", "kwargs": {"size": 10}},
        },
        "callbacks": [],
    }


# ------------------------------------------------------------------------------ running them


class MemoryTracker:
    """A tracker that keeps what it is given: the flushed records, the summaries, the final status."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.status: str | None = None

    def start(self, paths: Any, config: Any) -> None:
        pass

    def log(self, record: Mapping[str, float | int]) -> None:
        self.records.append(dict(record))

    def set_summary(self, key: str, value: Any) -> None:
        self.summary[key] = value

    def close(self, status: str) -> None:
        self.status = status

    def record_at(self, update: int) -> dict[str, Any]:
        """The one record flushed at ``update``."""
        (record,) = [r for r in self.records if r["update"] == update]
        return record

    def values(self, key: str) -> dict[int, float]:
        """``{update: value}`` of ``key`` (the last one when an update was flushed twice)."""
        return {r["update"]: r[key] for r in self.records if key in r}


def write_config(path: Path, raw: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(raw), sort_keys=False))
    return path


def plan(raw: Mapping[str, Any], *, check: bool = False) -> RunPlan:
    """The run plan of ``raw`` (with the metric-dependency check ``noether train`` makes, if ``check``)."""
    registry = PluginRegistry.from_environment()
    run_plan = RunPlan(structure_config(raw, registry), registry)
    if check:
        check_metric_dependencies(run_plan)
    return run_plan


def make_trainer(
    tmp_path: Path, raw: Mapping[str, Any], run_id: str = "run", *, check: bool = False, **kwargs: Any
) -> Trainer:
    """The trainer ``noether train`` would build for ``raw``, in ``tmp_path/run_id``; ``kwargs`` go to
    :class:`Trainer` (``trackers``, ``resume_tag``...)."""
    return Trainer(plan(raw, check=check), RunPaths.create(tmp_path, run_id), **kwargs)


def fit(
    tmp_path: Path, raw: Mapping[str, Any], run_id: str = "run", *, expect: str | None = None
) -> tuple[Trainer, MemoryTracker]:
    """Train ``raw`` in this process (metric dependencies checked first) and keep its records; with
    ``expect``, assert the run ends with that status."""
    records = MemoryTracker()
    trainer = make_trainer(tmp_path, raw, run_id, check=True, trackers=[records])
    status = trainer.fit()
    if expect is not None:
        assert status == expect
    return trainer, records


def entry(trainer: Trainer, which: int | str = 0) -> Any:
    """The plugin object of an entry, by its position among the trainer's entries or by its name."""
    slots = trainer.plugins.slots
    if isinstance(which, int):
        return slots[which].obj
    return next(s.obj for s in slots if s.key == which)


@contextlib.contextmanager
def noether_loggers_restored() -> Iterator[None]:
    """Put the ``noether`` loggers back as they were when the block ends. A run in this process leaves
    handlers on the stdout it had: pytest's capture stream of that test, closed after it (a later
    record then ends in "I/O operation on closed file" and a traceback printed by logging), or a
    buffer that keeps every later record of the session (heap growth in test_flat_memory)."""
    loggers = [logging.getLogger(name) for name in ("noether", "noether.file")]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    try:
        yield
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def train(tmp_path: Path, raw: Mapping[str, Any], run_id: str = "r", *args: str) -> int:
    """``noether train`` of ``raw`` (written to ``tmp_path/{run_id}.yaml``) into ``tmp_path/run_id``, in
    this process; returns the exit status. ``args`` are more command-line arguments. The ``noether``
    loggers are put back afterwards, so a module's shared run leaves nothing for the later tests."""
    cfg = write_config(tmp_path / f"{run_id}.yaml", raw)
    with noether_loggers_restored():
        return main(["train", str(cfg), "--output-dir", str(tmp_path), "--run-id", run_id, *args])


def noether_script() -> Path:
    """The ``noether`` console script of the environment running the tests."""
    script = Path(sys.executable).parent / ("noether.exe" if os.name == "nt" else "noether")
    if not script.exists():
        pytest.fail(f"{script} is missing; install the project: pip install -c constraints.txt -e '.[test]'")
    return script


def run_noether(
    args: Sequence[str | os.PathLike[str]],
    *,
    pythonpath: str = "",
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``noether`` CLI in a subprocess, with ``pythonpath`` in front of ``PYTHONPATH`` so
    that ``importlib.metadata`` finds the distributions installed there. Never raises on exit status."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, full_env.get("PYTHONPATH", "")) if p)
    # plain, unwrapped output so assertions see whole names
    full_env.update(NO_COLOR="1", COLUMNS="200", TERM="dumb")
    return subprocess.run(
        [str(noether_script()), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
