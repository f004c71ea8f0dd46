"""Selection with global context across ranks: the batch one process would pick from the union.

Under ``torchrun`` each of the P ranks holds an equal slice of the global super-batch of N (the
loader cuts step j's N examples into P slices, in rank order). :class:`DistributedSelector` wraps
any :class:`~jestkit.selection.Selector` so that every rank returns the **same global indices**,
those a single process would pick from the whole super-batch with the same generator state:

1. The learner's and the reference's embeddings are all-gathered (``N x 2d`` per model: small,
   and the joint scores need every pair anyway).
2. ``uniform`` and ``independent`` then run unchanged on the gathered embeddings on every rank
   (O(N d) work, no further communication).
3. ``jest`` runs Algorithm 1 sharded: each rank keeps the conditional scores of its own N/P
   candidates against the selected set (the O(N k d) part, divided by P). Every rank draws the
   Gumbel noise of the whole super-batch from the shared generator and uses its slice, so each
   candidate gets the noise it would get on one process. Per chunk, each rank proposes its local
   best perturbed scores; an all-gather of those (score, index) pairs gives every rank the global
   top-c, i.e. the chunk (:func:`global_top`: about ``c/P + 6 sqrt(c/P)`` proposals per rank,
   all ``c`` only when a rank may hold more). The newly selected examples' embeddings are already on every rank.

Communication per step: the all-gather of embeddings (``N * 2d`` floats per model received by each
rank) plus ``n_chunks`` all-gathers of about ``c + 6 sqrt(cP)`` (score, index) pairs in all. The selected examples stay where they are:
each rank trains on the selected examples it holds (counts differ slightly between ranks), and
:class:`~jestkit.losses.SigLipLoss` gathers their embeddings for the global loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from jestkit.errors import JestkitError
from jestkit.scoring import Embeddings
from jestkit.selection import (
    JestSelector,
    Selector,
    Shard,
    joint_sample_embeddings,
    selection_stats,
    size_stats,
)

__all__ = ["DistributedSelector", "gather_embeddings", "global_top"]


def gather_embeddings(e: Embeddings | None, world_size: int) -> Embeddings | None:
    """Every rank's embeddings, concatenated in rank order (equal counts per rank)."""
    if e is None or world_size == 1:
        return e
    both = torch.cat([e.image, e.text], dim=1).contiguous()
    parts = [torch.empty_like(both) for _ in range(world_size)]
    dist.all_gather(parts, both)
    full = torch.cat(parts)
    d = e.image.shape[1]
    return Embeddings(full[:, :d], full[:, d:], e.scale, e.bias)


def _gather_top(
    local_logits: Tensor, m: int, offset: int, world_size: int
) -> tuple[Tensor, Tensor]:
    """Every rank's ``m`` best (logit, global index) pairs, [P, m] each, descending per rank."""
    have = min(m, local_logits.numel())
    values, local = torch.topk(local_logits, have, sorted=True)
    pairs = torch.full((2, m), float("-inf"), dtype=torch.float64, device=local_logits.device)
    pairs[0, :have] = values.double()
    pairs[1, :have] = (local + offset).double()  # exact: indices < 2**53
    parts = [torch.empty_like(pairs) for _ in range(world_size)]
    dist.all_gather(parts, pairs)
    both = torch.stack(parts)  # [P, 2, m]
    return both[:, 0], both[:, 1]


def proposals_per_rank(c: int, world_size: int) -> int:
    """How many candidates each rank proposes per chunk: its expected share of the chunk, c / P,
    plus six standard deviations of a binomial share (the data order is shuffled), at most c."""
    mean = c / world_size
    return min(c, math.ceil(mean + 6 * math.sqrt(mean)) + 2)


def global_top(
    local_logits: Tensor, c: int, offset: int, world_size: int, m: int | None = None
) -> Tensor:
    """The ``c`` global indices with the highest logits over all ranks, descending (a collective).

    Each rank first proposes its best ``m`` (default :func:`proposals_per_rank`). If some rank's
    proposals all made the global top-c, that rank may hold more of it, and every rank proposes
    its full top-c instead (the union of the local top-c's always holds the global top-c). The
    answer is exact either way; the decision is taken on gathered data, so all ranks agree.
    """
    m = proposals_per_rank(c, world_size) if m is None else m
    m = min(c, max(m, math.ceil(c / world_size)))  # P * m >= c: the first round can fill a chunk
    while True:
        values, indices = _gather_top(local_logits, m, offset, world_size)
        top = torch.topk(values.flatten(), c, sorted=True).indices
        if m == c or not bool((values[:, -1] >= values.flatten()[top[-1]]).any()):
            return indices.flatten()[top].long()
        m = c


@dataclass
class DistributedSelector:
    """Wraps a selector so that P ranks select jointly from the union of their candidates.

    ``select`` takes this rank's embeddings (``n`` examples, the same on every rank) and returns
    global indices into the super-batch of ``n * world_size`` (rank r holds ``[r*n, (r+1)*n)``),
    identical on every rank, with the selector's stats over the whole super-batch.
    """

    inner: Selector
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise JestkitError(
                f"DistributedSelector(world_size={self.world_size}) needs an initialised "
                "torch.distributed process group"
            )
        if dist.get_world_size() != self.world_size:
            raise JestkitError(
                f"DistributedSelector world_size={self.world_size} but the process group has "
                f"{dist.get_world_size()} ranks"
            )

    @property
    def needs_learner(self) -> bool:
        return self.inner.needs_learner

    @property
    def needs_reference(self) -> bool:
        return self.inner.needs_reference

    def select(
        self,
        learner: Embeddings | None,
        reference: Embeddings | None,
        k: int,
        generator: torch.Generator | None,
        *,
        n: int | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        local = next((len(e) for e in (learner, reference) if e is not None), n)
        if local is None:
            raise JestkitError("DistributedSelector.select: pass n=... (this rank's pool size)")
        total = local * self.world_size
        learner = gather_embeddings(learner, self.world_size)
        reference = gather_embeddings(reference, self.world_size)
        inner = self.inner
        if not (isinstance(inner, JestSelector) and inner.streaming):
            return inner.select(learner, reference, k, generator, n=total)
        offset = self.rank * local

        def pick(logits: Tensor, c: int) -> Tensor:
            return global_top(logits, c, offset, self.world_size)

        idx = joint_sample_embeddings(
            learner,
            reference,
            k,
            inner.n_chunks,
            inner.criterion,
            generator,
            inner.temperature,
            shard=Shard(offset, local, total, pick),
            joint_weight=inner.joint_weight,
        )
        if inner.stats:
            return idx, selection_stats(learner, reference, idx, inner.criterion)
        return idx, size_stats(total, idx.numel())
