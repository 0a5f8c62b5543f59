"""Process-group plumbing for running the trainer under ``torchrun`` (PyTorch DDP).

One process per device: gloo on CPU, NCCL on CUDA. Launched by plain ``python``, everything
here degrades to a single process (rank 0 of 1) and no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world() -> World:
    """The current process's place: joins the process group when launched by ``torchrun``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, size, device)


def is_main_process() -> bool:
    """Rank 0, or not launched by ``torchrun`` at all (only it writes outputs)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics): DDP hands them out
    before each forward, but each process then updates its own on its share of the batch, so
    after the last step they differ from the model rank 0 saves."""
    if world.distributed:
        for buffer in module.buffers():
            if buffer.is_floating_point():  # packed codes and counters do not drift apart
                dist.broadcast(buffer.data, src=0)


def mean_across(value: torch.Tensor, world: World) -> torch.Tensor:
    """Average a scalar tensor over every process (identity on one process)."""
    if not world.distributed:
        return value
    out = value.detach().clone().to(world.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world.size


def shard(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This process's share of one global batch (strided, as DistributedSampler does)."""
    return indices[world.rank :: world.size]
