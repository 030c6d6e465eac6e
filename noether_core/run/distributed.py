"""Process-group helpers. A run is distributed when started by ``torchrun`` (``WORLD_SIZE`` > 1);
CPU runs use the gloo backend, CUDA runs NCCL."""

from __future__ import annotations

import datetime
import os
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn


@attrs.frozen
class DistInfo:
    """This process's place in the run: its rank, the number of processes, its rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str, timeout: float | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (no-op for one process).
    ``timeout``: seconds a collective waits for the other ranks before it fails
    (``trainer.process_group_timeout``; torch's default when ``None``); the first call sets it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device_type == "cuda" else "gloo",
            timeout=None if timeout is None else datetime.timedelta(seconds=timeout),
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


#: What gloo and NCCL say when another process of the group closed its connections (it ended).
_PEER_GONE = ("closed by peer", "reset by peer", "broken pipe", "communicator was aborted")


def peer_ended(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process of the run ended (and reports
    its own failure), not because this process did anything wrong. A collective that timed out is not:
    the rank it waited for may hang without a word."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _PEER_GONE)


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that waited longer than the process group's timeout."""
    return isinstance(exc, RuntimeError) and "timed out" in str(exc).lower()


def any_rank(flag: bool, info: DistInfo, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on any. ``device``: where the collective runs (NCCL
    needs the rank's GPU)."""
    if not info.is_distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def any_rank_each(flags: tuple[bool, ...], info: DistInfo, group: Any = None) -> tuple[bool, ...]:
    """For each of ``flags``: whether it is true on any rank, in one collective on the CPU (``group``:
    a gloo group when the run itself communicates over NCCL, so agreeing costs no GPU sync)."""
    if not info.is_distributed:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return tuple(bool(f) for f in t.tolist())


def gather_to_main(value: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``value`` (picklable), in rank order, on rank 0; ``None`` on the other ranks (a
    collective: every rank calls it). ``[value]`` with one process."""
    if not info.is_distributed:
        return [value]
    gathered: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over all ranks (a collective: every rank calls it); ``value`` itself with
    one process."""
    if not info.is_distributed:
        return value
    out = value.detach().clone().float()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def for_training(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` as the forward/backward passes should see it: wrapped in ``DistributedDataParallel``
    when several processes train it (and it has anything to train)."""
    if info.is_distributed and any(p.requires_grad for p in model.parameters()):
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistInfo",
    "any_rank",
    "any_rank_each",
    "barrier",
    "for_training",
    "gather_to_main",
    "init_from_env",
    "mean_over_ranks",
    "peer_ended",
    "shutdown",
    "timed_out",
]
