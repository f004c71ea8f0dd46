"""torch.distributed set-up from the torchrun environment; a no-op world of one otherwise.

The training loop uses only what is here plus :class:`jestkit.losses.SigLipLoss` and
:class:`jestkit.distributed_selection.DistributedSelector`: join the group (NCCL on GPU, gloo on
CPU), check every rank runs the same config, let rank 0 run the stages first, wrap the learner
in DistributedDataParallel, and reduce logged values. With one process every helper returns at
once.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from jestkit.devices import resolve_device
from jestkit.errors import JestkitError

T = TypeVar("T")


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


def rank_device(name: str, world: World) -> torch.device:
    """This rank's device for ``train.device=name`` (one GPU per local rank), made current."""
    device = resolve_device(name, "train.device", world.local_rank if world.distributed else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_from_env() -> World:
    """Join the process group that torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if dist.is_available() and dist.is_initialized():  # a caller set the group up itself
            return World(dist.get_rank(), dist.get_world_size(), dist.get_rank())
        return World()
    try:
        world = World(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise JestkitError(
            f"RANK={os.environ['RANK']!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r} / "
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}: expected integers (set by torchrun)"
        ) from None
    if world.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend=backend,
            store=_attempt_store(world),
            rank=world.rank,
            world_size=world.world_size,
        )
    return world


def _attempt_store(world: World) -> dist.Store | None:
    """torchrun's store, namespaced by restart attempt (None: let torch read the environment).

    After `--max-restarts` restarts a failed group, the new workers must not read the dead
    workers' gloo addresses still in the agent's store (seen here: "connectFullMesh failed ...
    Connection refused", then a hang); a per-attempt prefix keeps each attempt's keys apart.
    """
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if host is None or port is None:
        return None
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host,
        int(port),
        world.world_size,
        is_master=not agent_store and world.rank == 0,
        timeout=datetime.timedelta(minutes=10),
        multi_tenant=not agent_store,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"jestkit/attempt-{attempt}", store)


def barrier(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def main_first(world: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (which then find its files ready)."""
    if not world.is_main:
        barrier(world)
    try:
        return fn()
    finally:
        if world.is_main:
            barrier(world)


def check_same_config(world: World, config: dict) -> None:
    """Every rank must train the same run: compare each rank's config with rank 0's at start."""
    if not world.distributed:
        return
    configs: list = [None] * world.world_size
    dist.all_gather_object(configs, config)

    def flat(cfg: dict) -> dict[str, object]:
        return {
            f"{section}.{key}" if isinstance(values, dict) else section: value
            for section, values in cfg.items()
            for key, value in (values.items() if isinstance(values, dict) else [("", values)])
        }

    first = flat(configs[0])
    diffs = [
        f"{key}: rank 0 has {first.get(key)!r}, rank {rank} has {value!r}"
        for rank, cfg in enumerate(configs[1:], start=1)
        for key, value in flat(cfg).items()
        if first.get(key) != value
    ]
    if diffs:
        raise JestkitError("the ranks were started with different configs: " + "; ".join(diffs))


def wrap_model(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: the model itself on one process, else wrapped in
    DistributedDataParallel (it starts every rank from rank 0's weights, buckets the gradients
    and overlaps their all-reduce with the backward pass). The model's forward does the
    multi-resolution encoding, so DDP sees one forward per step."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def all_sum(world: World, values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over ranks (one small collective; identity on one process)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
