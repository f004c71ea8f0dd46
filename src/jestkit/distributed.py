"""torch.distributed set-up from the torchrun environment; a no-op world of one otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from jestkit.errors import check


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, world: World | None = None) -> torch.device:
    """`auto` picks CUDA when present (one GPU per local rank), else CPU."""
    world = world or World()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.distributed:
        name = f"cuda:{world.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        check(torch.cuda.is_available(), f"train.device={name!r}: CUDA is not available here")
        torch.cuda.set_device(device)
    return device


def init_from_env() -> World:
    """Join the process group that torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    world = World(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if world.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return world


def barrier(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
