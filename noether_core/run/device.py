"""Where the run computes: picking the device, seeding, precision, and moving batches there.

:func:`to_device` is the one batch mover: the trainer moves every training micro-batch with it, and
:class:`~noether_core.run.evaluation.PeriodicDataIteratorCallback` every evaluation batch, so a
batch type that trains also evaluates.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from noether_core.config.schema import Precision, TrainerConfig
from noether_core.errors import ConfigError, ConfigIssue
from noether_core.run.distributed import DistInfo, init_from_env

_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def pick_device(name: str) -> torch.device:
    """The device ``trainer.device`` names; ``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([ConfigIssue("trainer.device", f"{name!r} requested but CUDA is not available")])
    return device


def place_run(trainer: TrainerConfig) -> tuple[torch.device, DistInfo]:
    """This process's device and place among the run's processes (joining torchrun's process group),
    with the global generators seeded (``seed + rank``) and torch configured for ``trainer``."""
    device = pick_device(trainer.device)
    if device.type == "cuda":  # before any process group: every process refuses alike, none waits
        check_gpus_per_process(trainer.device, processes_on_this_machine())
    dist_info = init_from_env(device.type, trainer.process_group_timeout)
    if device.type == "cuda" and dist_info.is_distributed:
        # one GPU per process: torchrun's LOCAL_RANK picks it
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    seed_everything(trainer.seed + dist_info.rank)
    configure_torch(device, num_threads=trainer.num_threads, deterministic=trainer.deterministic)
    keep_freed_memory()
    return device, dist_info


def check_gpus_per_process(name: str, processes: int) -> None:
    """Refuse a run on CUDA (``trainer.device`` is ``name``) with more ``processes`` on this machine than
    it has GPUs: each process takes the GPU of its ``LOCAL_RANK``, and one past the last would fail in
    its first collective with CUDA's "invalid device ordinal"."""
    gpus = torch.cuda.device_count()
    if processes <= gpus:
        return
    picked = " (what 'auto' picks where CUDA is available)" if name == "auto" else ""
    raise ConfigError(
        [
            ConfigIssue(
                "trainer.device",
                f"{name!r} trains on CUDA{picked}, one GPU per process, but this machine runs "
                f"{processes} processes and has {gpus} GPU(s) visible: start at most {gpus} "
                f"(--nproc-per-node {gpus}), or set trainer.device=cpu to train on the CPU (gloo)",
            )
        ]
    )


def processes_on_this_machine() -> int:
    """How many processes of the run torchrun started on this machine (1 outside torchrun); read from
    the environment, the same in every one of them."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return max(int(os.environ.get("LOCAL_WORLD_SIZE", "0")), local_rank + 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_torch(device: torch.device, *, num_threads: int | None, deterministic: bool) -> None:
    """Math threads, and deterministic kernels where the device needs opting in."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    if deterministic and device.type == "cuda":
        # CPU kernels are deterministic already; on CUDA some need opting in (and cuBLAS a workspace)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


#: glibc's ``mallopt`` parameters, and the values a run sets: the largest mmap threshold glibc's own
#: adjustment ever reaches (32 MiB) from the start, and a trim threshold twice that, as glibc pairs them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: Environment variables with which a user tunes glibc's malloc (or replaces it) himself.
_MALLOC_ENVIRONMENT = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training update frees for the next one; whether it was
    set (once per process).

    torch's CPU allocator hands every tensor back to malloc when it is freed, and glibc returns the
    free top of a heap to the kernel as soon as it exceeds a threshold that starts at 128 KiB and
    grows only with the largest block it ever mapped. When anything long-lived (a plugin's running
    loss, a Python object) lands above an update's temporaries, the heap's top is freed in one piece
    a few updates later, returned, and faulted back in page by page by the updates that follow: about
    20 page faults per update on the benchmark's 256-wide MLP with the default plugins. The
    thresholds set here are where glibc's own adjustment ends anyway; a process keeps up to 64 MiB
    of freed memory per arena instead of returning it at once. Left alone where the user tunes malloc
    (``MALLOC_*_``, ``GLIBC_TUNABLES``) or replaces it (``LD_PRELOAD``), and off glibc.
    """
    global _kept
    if _kept is None:
        _kept = False
        if not any(name in os.environ for name in _MALLOC_ENVIRONMENT) and _is_glibc():
            libc = ctypes.CDLL(None)
            # the mmap threshold first: setting either turns glibc's adjustment of both off
            _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
    return _kept


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not a glibc system
        return False


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's autocast for ``precision`` (none for ``fp32``)."""
    dtype = _AUTOCAST_DTYPES[precision]
    if dtype is None:
        return NO_CONTEXT
    return torch.autocast(device.type, dtype=dtype)


#: A context that does nothing, shared: a ``nullcontext`` holds no state, and building one per
#: micro-batch costs an object.
NO_CONTEXT: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it on ``device``: tensors, and tuples, lists, namedtuples and
    mappings of them, nested to any depth; anything else is returned as it is.

    Tuples and lists keep their type (a namedtuple its fields), mappings become dicts. A tensor already
    on the CPU stays as it is when ``device`` is the CPU: even a ``.to()`` that moves nothing costs a
    dispatch, and this runs for every micro-batch.
    """
    # compared once per batch: reading device.type builds a new string at every access
    return _moved(batch, device, device == _CPU)


_CPU = torch.device("cpu")


def _moved(batch: Any, device: torch.device, to_cpu: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        if to_cpu and batch.is_cpu:
            return batch
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        moved = [_moved(v, device, to_cpu) for v in batch]
        kind = type(batch)
        if kind is list:
            return moved
        if kind is tuple:
            return tuple(moved)
        if hasattr(batch, "_fields"):  # a namedtuple takes its fields positionally
            return kind(*moved)
        return kind(moved)
    if isinstance(batch, Mapping):
        return {k: _moved(v, device, to_cpu) for k, v in batch.items()}
    return batch


__all__ = [
    "NO_CONTEXT",
    "autocast",
    "configure_torch",
    "keep_freed_memory",
    "pick_device",
    "place_run",
    "seed_everything",
    "to_device",
]
