"""Super-batches: N examples at a time, in a deterministic, resumable, rank-disjoint order.

The order of epoch ``e`` is a pure function of ``(seed, e)`` and the split's validated index:

1. the shards are permuted (``np_generator(seed, "shard-order", e)``);
2. the records, in that shard order and tar order within a shard, are shuffled within consecutive
   windows of ``window`` records (``np_generator(seed, "window", e)``);
3. the first ``C * world_size * N`` positions are cut into super-batches of N
   (``C = len // (world_size * N)``; the few left over differ every epoch) and super-batch ``k`` goes
   to rank ``k % world_size``. With DataLoader workers, a rank's super-batch ``j`` is built by
   worker ``j % num_workers``, and PyTorch's in-order round robin hands them back in order.

So the sequence a rank sees does not depend on the backend or the number of workers; ranks never
share an example within an epoch; and the cursor ``(epoch, examples consumed)`` is all a resume
needs. Two backends: ``in_memory`` decodes the split once into a ``uint8`` array (the fast path
for small datasets: a super-batch is a gather) and streaming reads each super-batch's records by
offset from the tars (bounded memory: one super-batch at a time, plus the index).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jestkit.data.shards import ShardIndex, build_index
from jestkit.errors import JestkitError
from jestkit.rng import np_generator

DEFAULT_WINDOW = 8192
DEFAULT_MAX_MEMORY = 2 << 30  # in_memory=None: decode into RAM when the split fits in this


@dataclass
class SuperBatch:
    """N examples: ``images`` uint8 ``[N, C, H, W]``, captions, uids, metadata columns."""

    uids: list[str]
    images: torch.Tensor
    captions: list[str]
    meta: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.uids)

    def index(self, idx: torch.Tensor | np.ndarray | Sequence[int]) -> SuperBatch:
        """The sub-batch at ``idx`` (e.g. the examples a selector chose), in that order."""
        if isinstance(idx, torch.Tensor):
            rows = idx.detach().to("cpu", torch.int64).numpy()
            image_idx = idx.to(self.images.device, torch.int64)
        else:
            rows = np.asarray(idx, dtype=np.int64).reshape(-1)
            image_idx = torch.from_numpy(rows).to(self.images.device)
        return SuperBatch(
            uids=[self.uids[i] for i in rows],
            images=self.images[image_idx],
            captions=[self.captions[i] for i in rows],
            meta={k: v[rows] for k, v in self.meta.items()},
        )


def epoch_order(
    shard_of: np.ndarray, n_shards: int, seed: int, epoch: int, window: int, shuffle: bool = True
) -> np.ndarray:
    """Record positions of one epoch (see the module docstring); ``shard_of`` is in index order."""
    n = len(shard_of)
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    perm = np_generator(seed, "shard-order", epoch).permutation(n_shards)
    place = np.empty(n_shards, np.int64)
    place[perm] = np.arange(n_shards)
    stream = np.argsort(place[shard_of], kind="stable")  # records in permuted shard order
    keys = np_generator(seed, "window", epoch).random(n)
    return stream[np.lexsort((keys, np.arange(n) // window))]


class _Plan:
    """Which records make up a rank's j-th super-batch (picklable; shared with workers)."""

    def __init__(
        self,
        index: ShardIndex,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        window: int,
        shuffle: bool,
    ):
        self.index, self.n, self.seed = index, batch_size, seed
        self.rank, self.world, self.window, self.shuffle = rank, world_size, window, shuffle
        self.per_epoch = len(index) // (world_size * batch_size)
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    def rows(self, j: int) -> np.ndarray:
        epoch, k = divmod(j, self.per_epoch)
        if epoch != self._epoch:
            self._order = epoch_order(
                self.index.shard,
                len(self.index.shards),
                self.seed,
                epoch,
                self.window,
                self.shuffle,
            )
            self._epoch = epoch
        start = (k * self.world + self.rank) * self.n
        return self._order[start : start + self.n]


def _batch(
    index: ShardIndex, rows: np.ndarray, images: np.ndarray, captions: list[str]
) -> SuperBatch:
    return SuperBatch(
        uids=index.uids(rows),
        images=torch.from_numpy(images),
        captions=captions,
        meta={k: v[rows] for k, v in index.meta.items()},
    )


class _WorkerStream(torch.utils.data.IterableDataset):
    """Inside DataLoader worker w of K: super-batches start + w, start + w + K, ... (streaming)."""

    def __init__(self, plan: _Plan, start: int):
        super().__init__()
        self.plan, self.start = plan, start

    def __iter__(self) -> Iterator[SuperBatch]:
        info = torch.utils.data.get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        j = self.start + w
        while True:
            rows = self.plan.rows(j)
            images, captions = self.plan.index.read(rows)
            yield _batch(self.plan.index, rows, images, captions)
            j += k


def _identity(x: Any) -> Any:
    return x


class SuperBatchLoader:
    """Infinite iterator of :class:`SuperBatch` of exactly ``batch_size`` examples from one split.

    ``in_memory=None`` chooses the in-memory backend when the decoded split fits in
    ``max_memory_bytes``. ``num_workers`` applies to streaming (in memory a super-batch is a gather
    and needs none). Bad records are skipped and counted (:attr:`skipped`, and a warning), or raise
    with ``strict=True``. ``state_dict()``/``load_state_dict()`` save and restore the cursor.
    Use one iterator at a time: each ``iter()`` continues from the current cursor.
    """

    def __init__(
        self,
        split_dir: str | os.PathLike,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        in_memory: bool | None = None,
        shuffle: bool = True,
        window: int = DEFAULT_WINDOW,
        strict: bool = False,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY,
        prefetch_factor: int = 2,
        progress: bool = True,
    ):
        for name, value, lo in (
            ("batch_size", batch_size, 1),
            ("world_size", world_size, 1),
            ("num_workers", num_workers, 0),
            ("window", window, 1),
            ("seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise JestkitError(f"{name}: must be an integer >= {lo}, got {value!r}")
        if not 0 <= rank < world_size:
            raise JestkitError(f"rank: must be in [0, world_size={world_size}), got {rank!r}")
        self.index = build_index(split_dir, strict=strict, progress=progress)
        self.split_dir = Path(self.index.split_dir)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers, self.prefetch_factor = int(num_workers), prefetch_factor
        if len(self.index) < world_size * batch_size:
            raise JestkitError(
                f"{self.split_dir}: {len(self.index)} usable examples cannot fill one super-batch of "
                f"batch_size={batch_size} on each of world_size={world_size} rank(s)"
            )
        self._plan = _Plan(
            self.index, self.batch_size, self.seed, self.rank, self.world_size, int(window), shuffle
        )
        nbytes = len(self.index) * int(np.prod(self.index.shape))
        self.in_memory = bool(nbytes <= max_memory_bytes) if in_memory is None else bool(in_memory)
        self._images: np.ndarray | None = None
        self._captions: list[str] = []
        if self.in_memory:
            self._images, self._captions = self.index.read_all(progress=progress)
        self._next = 0  # the rank's super-batches consumed so far, over all epochs

    # -- information ----------------------------------------------------------------------------

    @property
    def batches_per_epoch(self) -> int:
        return self._plan.per_epoch

    @property
    def num_examples(self) -> int:
        """Usable examples in the split (after skipping bad records)."""
        return len(self.index)

    @property
    def skipped(self) -> dict[str, int]:
        """Bad records skipped, by reason."""
        return dict(self.index.bad.counts)

    @property
    def epoch(self) -> int:
        return self._next // self.batches_per_epoch

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.index.shape

    def captions(self) -> list[str]:
        """Every usable caption of the split, in shard order (e.g. to train a tokenizer)."""
        if self._images is not None:
            return list(self._captions)
        return self.index.read_captions()

    # -- iteration ------------------------------------------------------------------------------

    def batch(self, j: int) -> SuperBatch:
        """The rank's j-th super-batch (counting over epochs), without moving the cursor."""
        rows = self._plan.rows(j)
        if self._images is not None:
            return _batch(self.index, rows, self._images[rows], [self._captions[r] for r in rows])
        images, captions = self.index.read(rows)
        return _batch(self.index, rows, images, captions)

    def __iter__(self) -> Iterator[SuperBatch]:
        if self.in_memory or self.num_workers == 0:
            while True:
                sb = self.batch(self._next)
                self._next += 1
                yield sb
        loader = torch.utils.data.DataLoader(
            _WorkerStream(self._plan, self._next),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=self.prefetch_factor,
        )
        for sb in loader:
            self._next += 1
            yield sb

    # -- resume ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The cursor: epoch and examples this rank consumed in it, plus what must not change."""
        epoch, k = divmod(self._next, self.batches_per_epoch)
        return {
            "epoch": epoch,
            "examples": k * self.batch_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_examples": len(self.index),
            "fingerprint": self.index.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (the next super-batch is the same)."""
        mine = self.state_dict()
        for key in ("seed", "num_examples", "fingerprint"):
            if key in state and state[key] != mine[key]:
                raise JestkitError(
                    f"loader state: {key}={state[key]!r} does not match this loader's "
                    f"{key}={mine[key]!r}; the order cannot be resumed exactly"
                )
        # Step j's global super-batch is positions [j*W*n, (j+1)*W*n) of the epoch's order, whatever
        # the world size W: a run may resume on another number of ranks if W*n (N) is unchanged.
        old_n, old_world = state.get("batch_size", self.batch_size), state.get("world_size", 1)
        try:
            old_n, old_world = int(old_n), int(old_world)
        except (TypeError, ValueError):
            raise JestkitError(f"loader state: bad batch_size/world_size in {state!r}") from None
        if old_n * old_world != self.batch_size * self.world_size:
            raise JestkitError(
                f"loader state: a global super-batch of {old_n * old_world} "
                f"(batch_size={old_n} x world_size={old_world}) cannot continue as "
                f"{self.batch_size * self.world_size} (batch_size={self.batch_size} x "
                f"world_size={self.world_size}); the order cannot be resumed exactly"
            )
        try:
            epoch, examples = int(state["epoch"]), int(state["examples"])
        except (KeyError, TypeError, ValueError):
            raise JestkitError(
                f"loader state: expected 'epoch' and 'examples', got {state!r}"
            ) from None
        if old_n and examples % old_n == 0:
            examples = examples // old_n * self.batch_size  # the same count of global steps
        if (
            epoch < 0
            or examples < 0
            or examples % self.batch_size
            or examples // self.batch_size >= self.batches_per_epoch
        ):
            raise JestkitError(
                f"loader state: epoch={epoch}, examples={examples} is not a super-batch boundary of this split"
            )
        self._next = epoch * self.batches_per_epoch + examples // self.batch_size


def load_split(
    split_dir: str | os.PathLike, strict: bool = False, progress: bool = False
) -> SuperBatch:
    """A whole (small) split in memory, in shard order: eval sets, zero-shot sets, tests."""
    index = build_index(split_dir, strict=strict, progress=progress)
    images, captions = index.read_all(progress=progress)
    if not images.flags.writeable:  # the memory-mapped decoded cache: a tensor needs its own copy
        images = np.array(images)
    return _batch(index, np.arange(len(index)), images, captions)


def read_captions(split_dir: str | os.PathLike, strict: bool = False) -> list[str]:
    """Every usable caption of a split in shard order, without decoding images (tokenizer training)."""
    return build_index(split_dir, strict=strict, progress=False).read_captions()


def iter_split(
    split_dir: str | os.PathLike, batch_size: int, strict: bool = False, progress: bool = False
) -> Iterator[SuperBatch]:
    """Every good record of a split once, in shard order, ``batch_size`` at a time (streaming)."""
    index = build_index(split_dir, strict=strict, progress=progress)
    for start in range(0, len(index), batch_size):
        rows = np.arange(start, min(start + batch_size, len(index)))
        images, captions = index.read(rows)
        yield _batch(index, rows, images, captions)
