"""Data-parallel training under torchrun: process group set-up and cross-rank reductions.

`torchrun --nproc_per_node N stages/train.py` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them training is a single process (world size 1) and every helper here is a no-op. Each rank
trains on its shard of every epoch (see cxr.training.pixels.EpochSampler) and DDP averages
gradients, so all ranks hold the same weights; only rank 0 (`is_writer`) writes files or talks to
MLflow.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from cxr.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The torchrun world of this process (rank 0 of 1 when not launched by torchrun)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def device_for(world: World, device: torch.device) -> torch.device:
    """One GPU per local rank; CPU and MPS are shared."""
    if device.type == "cuda" and world.distributed:
        gpus = torch.cuda.device_count()
        if world.local_rank >= gpus:
            # NCCL refuses two ranks on one GPU: say so before anything is loaded
            raise ConfigError(
                f"torchrun started more processes on this machine than it has GPUs ({gpus}): "
                f"local rank {world.local_rank} has none. Use --nproc_per_node {gpus}, or "
                "train.device: cpu for CPU processes."
            )
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """NCCL between GPUs, gloo on CPU; torn down however training ends."""
    if not world.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_ranks_agree(model: torch.nn.Module) -> str:
    """The weights' fingerprint, after checking every rank holds exactly the same weights
    (DDP keeps them in step; a divergence means a broken run, not a result to save)."""
    mine = weights_fingerprint(model)
    if not (dist.is_available() and dist.is_initialized()):
        return mine
    every: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if len(set(every)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights: {every}")
    return mine


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks, broadcast the rest.

    DDP syncs buffers only at the start of a forward pass, so after an epoch's last step each
    rank holds statistics of its own last batch; validation and checkpoints need one set.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(dist.get_world_size())
        else:
            dist.broadcast(buffer, src=0)


def writer_first(world: World, load: Callable[[bool], T]) -> T:
    """`load(build=True)` on rank 0 (e.g. decoding into the pixel store once), then
    `load(build=False)` on the other ranks after rank 0 is done, so no image is decoded twice."""
    if world.is_writer:
        result = load(True)
    barrier()
    if not world.is_writer:
        result = load(False)
    return result
