"""Choosing the training batch from a super-batch: joint (JEST), independent, or uniform.

Joint example selection is the paper's Algorithm 1 ("blocked Gibbs"): the batch of ``k`` is built
in ``n_chunks`` chunks; each chunk is drawn without replacement from ``softmax(s(. | S) / T)``, the
conditional scores given the examples already selected,

    s(j | S) = A[j, j] + sum_{i in S} A[i, j] + sum_{i in S} A[j, i],

kept up to date incrementally (O(N * k) work in all). ``joint_weight`` (lambda) scales the two
sums: 1 is the paper's algorithm; lambda = N_paper / N emulates the weight the joint terms carry in
a super-batch that many times larger (an analysis, not the paper's algorithm; 0 drops them). Sampling without replacement from a softmax
is Gumbel-top-k. Every sampler draws its noise the same way, one ``torch.rand(N)`` per chunk from
the caller's generator, so :func:`joint_sample` (dense ``A``) and :func:`joint_sample_embeddings`
(streaming, never N×N) return the same indices from the same generator state, and
``n_chunks=1`` is exactly :func:`independent_sample` on the diagonal. ``temperature=0`` is the
deterministic greedy mode (no noise, the generator is not used).

Indices are returned in selection order (chunk by chunk; within a chunk, by perturbed score).
``generator=None`` falls back to torch's default generator (library callers always pass one).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from jestkit.errors import JestkitError
from jestkit.losses import pair_logits, sigmoid_pair_losses, sigmoid_positive_losses
from jestkit.scoring import (
    SCORE_MODES,
    BlockScorer,
    Embeddings,
    all_finite,
    criterion_weights,
    example_scores,
    normalize_criterion,
    prepare_embeddings,
    score_matrix,
)

__all__ = [
    "SELECTORS",
    "IndependentSelector",
    "JestSelector",
    "Selector",
    "Shard",
    "UniformSelector",
    "independent_sample",
    "joint_sample",
    "joint_sample_embeddings",
    "make_selector",
    "selection_stats",
    "size_stats",
    "super_batch_size",
    "uniform_sample",
]

INDEPENDENT_METHODS = ("softmax", "topk")

# Streaming joint selection stops computing the sums of selected examples once they are this
# fraction of the columns still computed: a gather of the operands against that much saved work.
_COMPACT_FRACTION = 0.05


# ----------------------------------------------------------------------------- validation


def _check_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool):
        raise JestkitError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise JestkitError(f"{name} must be an integer, got {value!r}") from None
    if v < lo:
        raise JestkitError(f"{name} must be >= {lo}, got {v}")
    return v


def _check_k(k, n: int, n_chunks=None) -> tuple[int, int]:
    k = _check_int("k", k)
    if k > n:
        raise JestkitError(f"k must be <= the pool size N={n}, got k={k}")
    if n_chunks is None:
        return k, 1
    n_chunks = _check_int("n_chunks", n_chunks)
    if k % n_chunks:
        raise JestkitError(
            f"k={k} is not divisible by n_chunks={n_chunks}: joint selection draws k / n_chunks "
            "examples per chunk and does not round; pick a batch size that is a multiple of "
            "n_chunks, or an n_chunks that divides it"
        )
    return k, n_chunks


def _check_joint_weight(joint_weight) -> float:
    try:
        w = float(joint_weight)
    except (TypeError, ValueError):
        raise JestkitError(f"joint_weight must be a number >= 0, got {joint_weight!r}") from None
    if isinstance(joint_weight, bool) or not math.isfinite(w) or w < 0:
        raise JestkitError(f"joint_weight must be a finite number >= 0, got {joint_weight!r}")
    return w


def _check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise JestkitError(f"temperature must be a number >= 0, got {temperature!r}") from None
    if isinstance(temperature, bool) or not math.isfinite(t) or t < 0:
        raise JestkitError(
            f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}"
        )
    return t


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise JestkitError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    gd = torch.device(generator.device)
    if gd.type != device.type or (
        gd.index is not None and device.index is not None and gd.index != device.index
    ):
        raise JestkitError(f"generator is on {generator.device} but the scores are on {device}")


def _check_scores(scores, name: str, ndim: int) -> Tensor:
    """Shape and dtype checks, then one finite check (a single device sync)."""
    if not isinstance(scores, Tensor):
        raise JestkitError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != ndim or (ndim == 2 and scores.shape[0] != scores.shape[1]):
        want = "a square [N, N] matrix" if ndim == 2 else "a 1-D [N] vector"
        raise JestkitError(f"{name} must be {want}, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise JestkitError(f"{name} must be floating point, got dtype {scores.dtype}")
    if scores.shape[0] == 0:
        raise JestkitError(f"{name} is empty (N = 0)")
    if not all_finite(scores)[0]:
        bad = (~torch.isfinite(scores)).nonzero()
        first = tuple(bad[0].tolist())
        raise JestkitError(
            f"{name} has {bad.shape[0]} non-finite values (NaN/inf); first at {list(first)} = "
            f"{scores[first].item()}"
        )
    return scores.to(_work_dtype(scores.dtype))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def super_batch_size(batch_size: int, filter_ratio: float) -> int:
    """Super-batch size ``N = round(b / (1 - f))`` for batch size ``b`` and filtering ratio ``f``.

    At least ``b + 1`` so that something is always filtered. f = 0.5, 0.8, 0.9 give 2x, 5x, 10x.
    """
    b = _check_int("batch_size", batch_size)
    try:
        f = float(filter_ratio)
    except (TypeError, ValueError):
        raise JestkitError(
            f"filter_ratio must be a number in (0, 1), got {filter_ratio!r}"
        ) from None
    if isinstance(filter_ratio, bool) or not (0.0 < f < 1.0):
        raise JestkitError(
            f"filter_ratio must be in (0, 1) (the fraction filtered out), got {filter_ratio!r}"
        )
    return max(b + 1, round(b / (1.0 - f)))


# ----------------------------------------------------------------------------- samplers


def _gumbel(
    n: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """``n`` i.i.d. standard Gumbel variates from exactly one ``torch.rand(n)`` draw."""
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    # u = 0 would give -inf (tied with masked entries): clamp to the smallest normal number.
    return u.clamp_(min=torch.finfo(dtype).tiny).log_().neg_().log_().neg_()


def _perturbed(
    cond: Tensor, temperature: float, generator: torch.Generator | None, shard: Shard | None = None
) -> Tensor:
    """Logits ``cond / T + Gumbel`` (plain ``cond`` when T = 0), finite everywhere.

    With a ``shard``, ``cond`` is this rank's slice: the noise of the whole super-batch is drawn
    (the same on every rank) and sliced, so each example gets the noise one process would give it.
    """
    if temperature == 0:
        logits = cond.clone()
    else:
        logits = cond / temperature if temperature != 1.0 else cond.clone()
        if shard is None:
            logits += _gumbel(cond.shape[0], cond.dtype, cond.device, generator)
        else:
            noise = _gumbel(shard.total, cond.dtype, cond.device, generator)
            logits += noise[shard.offset : shard.offset + shard.size]
    # Huge scores / tiny temperatures can overflow; keep unselected logits finite so that the
    # -inf of already-selected items always loses (no duplicates, ever).
    big = torch.finfo(cond.dtype).max
    return logits.nan_to_num_(nan=-big, posinf=big, neginf=-big)


@dataclass(frozen=True)
class Shard:
    """This rank's slice ``[offset, offset + size)`` of a super-batch of ``total`` examples.

    ``pick(local_logits, c)`` is a collective that returns the ``c`` global indices with the
    highest perturbed logits over all ranks, in descending order (the same on every rank):
    :mod:`jestkit.distributed_selection` builds it on ``torch.distributed``.
    """

    offset: int
    size: int
    total: int
    pick: Callable[[Tensor, int], Tensor]


def _blocked_gibbs(
    cond: Tensor,
    k: int,
    n_chunks: int,
    update: Callable[[Tensor, Tensor, Tensor, int], None],
    generator: torch.Generator | None,
    temperature: float,
    shard: Shard | None = None,
) -> Tensor:
    """The shared loop of Algorithm 1.

    ``update(cond, idx, taken, n_left)`` adds the chunk ``idx``'s terms to the conditional sums
    of (at least) the ``n_left`` items not yet ``taken``, in place. With a ``shard``, ``cond`` and
    ``taken`` cover this rank's examples only, and ``idx`` (returned too) holds global indices.
    """
    n = cond.shape[0]
    c = k // n_chunks
    taken = torch.zeros(n, dtype=torch.bool, device=cond.device)
    out = torch.empty(k, dtype=torch.long, device=cond.device)
    for chunk in range(n_chunks):
        logits = _perturbed(cond, temperature, generator, shard).masked_fill_(taken, float("-inf"))
        if shard is None:
            idx = local = torch.topk(logits, c, sorted=True).indices
        else:
            idx = shard.pick(logits, c)
            local = idx[(idx >= shard.offset) & (idx < shard.offset + n)] - shard.offset
        out[chunk * c : (chunk + 1) * c] = idx
        if chunk + 1 < n_chunks:  # nothing reads the sums after the last chunk
            taken[local] = True
            n_left = n - (chunk + 1) * c if shard is None else n - int(taken.sum())
            update(cond, idx, taken, n_left)
    return out


@torch.no_grad()
def joint_sample(
    scores: Tensor,
    k: int,
    n_chunks: int = 16,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    joint_weight: float = 1.0,
) -> Tensor:
    """JEST's blocked sampling of ``k`` indices from a dense score matrix ``scores`` [N, N].

    Row = image, column = text; see the module docstring. O(N^2) memory for ``scores`` itself;
    use :func:`joint_sample_embeddings` for large N.
    """
    a = _check_scores(scores, "scores", 2)
    k, n_chunks = _check_k(k, a.shape[0], n_chunks)
    t = _check_temperature(temperature)
    w = _check_joint_weight(joint_weight)
    _check_generator(generator, a.device)

    def update(cond: Tensor, idx: Tensor, taken: Tensor, n_left: int) -> None:
        cond.add_(a.index_select(0, idx).sum(0) + a.index_select(1, idx).sum(1), alpha=w)

    return _blocked_gibbs(a.diagonal().clone(), k, n_chunks, update, generator, t)


@torch.no_grad()
def joint_sample_embeddings(
    learner: Embeddings | None,
    reference: Embeddings | None,
    k: int,
    n_chunks: int = 16,
    criterion: str = "learnability",
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    block_elems: int | None = None,
    shard: Shard | None = None,
    joint_weight: float = 1.0,
) -> Tensor:
    """:func:`joint_sample` computed from the two models' embeddings, never holding N×N.

    Per chunk C only the blocks ``A[C, U]`` and ``A[U, C]`` are computed, U the items not yet
    selected (two ``|C|×d×|U|`` products per model, bias folded into the matmul, softplus in place
    in one reused workspace of at most ``block_elems`` elements): time O(N * k * d), extra memory
    O(N * k / n_chunks + N * d). Same generator state, same indices as the dense version (up to
    floating-point ties).

    ``shard`` (distributed selection): the embeddings are the whole super-batch's (all-gathered),
    and this rank keeps the conditional scores of its own slice only (time O(N * k * d / ranks));
    every rank returns the same global indices, those one process would pick.
    """
    scorer = BlockScorer(learner, reference, criterion, block_elems=block_elems)
    k, n_chunks = _check_k(k, scorer.n, n_chunks)
    t = _check_temperature(temperature)
    w = _check_joint_weight(joint_weight)
    _check_generator(generator, scorer.device)
    offset = 0
    if shard is not None:
        if shard.total != scorer.n or not 0 <= shard.offset <= shard.total - shard.size:
            raise JestkitError(
                f"shard {shard.offset}:{shard.offset + shard.size} of {shard.total} does not fit "
                f"the {scorer.n} gathered embeddings"
            )
        offset = shard.offset
        scorer.restrict_columns(torch.arange(offset, offset + shard.size, device=scorer.device))

    def update(cond: Tensor, idx: Tensor, taken: Tensor, n_left: int) -> None:
        # Only the unselected need their sums. Once the selected make up a fair share of the
        # columns still computed, drop them (one gather of the operands; the count is known, so
        # nonzero_static needs no device sync).
        width = scorer.n if scorer.columns is None else scorer.columns.numel()
        if width - n_left > _COMPACT_FRACTION * width:
            keep = torch.nonzero_static(~taken, size=n_left).squeeze(1)
            scorer.restrict_columns(keep + offset if offset else keep)
        if scorer.columns is None:
            cond.add_(scorer.chunk_sums(idx), alpha=w)
        else:
            cols = scorer.columns - offset if offset else scorer.columns
            cond.index_add_(0, cols, scorer.chunk_sums(idx), alpha=w)

    diagonal = scorer.diagonal()
    if shard is not None:
        diagonal = diagonal[offset : offset + shard.size].clone()
    return _blocked_gibbs(diagonal, k, n_chunks, update, generator, t, shard)


@torch.no_grad()
def independent_sample(
    scores: Tensor,
    k: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    method: str = "softmax",
) -> Tensor:
    """``k`` indices from per-example ``scores`` [N], each example on its own merits.

    ``"softmax"``: without replacement from ``softmax(scores / T)`` (Gumbel-top-k; greedy at T = 0).
    ``"topk"``: the ``k`` highest scores, deterministic (RHO-LOSS style; ignores T and generator).
    """
    s = _check_scores(scores, "scores", 1)
    k, _ = _check_k(k, s.shape[0])
    t = _check_temperature(temperature)
    if method not in INDEPENDENT_METHODS:
        raise JestkitError(
            f"method must be one of {', '.join(INDEPENDENT_METHODS)}, got {method!r}"
        )
    if method == "topk":
        return torch.topk(s, k, sorted=True).indices
    _check_generator(generator, s.device)
    return torch.topk(_perturbed(s, t, generator), k, sorted=True).indices


def uniform_sample(
    n: int,
    k: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A uniformly random ``k``-subset of ``range(n)`` (ordinary training).

    Lands on ``device``, else on the generator's device, else torch's default device.
    """
    n = _check_int("n", n)
    k, _ = _check_k(k, n)
    if device is None and generator is not None:
        device = generator.device
    dev = torch.device(device) if device is not None else torch.get_default_device()
    _check_generator(generator, dev)
    return torch.randperm(n, generator=generator, device=dev)[:k]


# ----------------------------------------------------------------------------- stats


POOL_PROBE = 512  # candidates probed for `pool_joint_term_spread` (cost O(POOL_PROBE * k * d))


def _neg_losses(e: Embeddings, rows: Tensor, cols: Tensor) -> Tensor:
    """Negative-pair losses ``L[i, j]`` of images ``rows`` with texts ``cols`` (disjoint sets)."""
    return torch.nn.functional.softplus(pair_logits(e.image[rows], e.text[cols], e.scale, e.bias))


@torch.no_grad()
def selection_stats(
    learner: Embeddings | None,
    reference: Embeddings | None,
    indices: Tensor,
    criterion: str = "learnability",
) -> dict[str, float]:
    """Diagnostics of a chosen batch, for any selector (floats, one device sync).

    Per model present (``learner_*``, ``reference_*``): ``loss_pool``/``loss_selected`` (mean
    positive-pair loss of the pool / the chosen), ``neg_loss_selected`` (mean off-diagonal pair
    loss within the chosen k×k block). When the criterion's models are present (``A`` over the
    pool's diagonal and the chosen block only): ``score_pool_mean``, ``score_selected_mean``
    (mean ``A[i, i]``), ``example_score_spread`` (std of ``A[i, i]`` over the chosen),
    ``joint_term_spread`` (std over the chosen of their within-batch off-diagonal row + column
    sums of ``A``), ``batch_score_selected`` (``s(S) / k``), ``neg_score_selected`` (mean
    off-diagonal ``A`` in the chosen block: one joint term), ``pool_example_score_spread`` (std of
    ``A[p, p]`` over the pool) and ``pool_joint_term_spread`` (std, over up to ``POOL_PROBE``
    examples that were not chosen, of ``sum_{i in S} A[i, p] + A[p, i]``: how much the joint
    terms could reorder candidates, to compare with the per-example spread). Also ``pool_size``
    and ``batch_size``.
    """
    weights = criterion_weights(criterion)
    terms = prepare_embeddings(learner=learner, reference=reference)
    if not terms:
        raise JestkitError("selection_stats needs learner or reference embeddings, got both None")
    first = next(iter(terms.values()))
    n, device = len(first), first.device
    idx = torch.as_tensor(indices, device=device)
    if idx.ndim != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise JestkitError(
            f"indices must be a non-empty 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}"
        )
    idx = idx.long()
    k = idx.numel()

    names: list[str] = []
    values: list[Tensor] = []
    diag, block = {}, {}
    for name, e in terms.items():
        pos = sigmoid_positive_losses(e.image, e.text, e.scale, e.bias)
        blk = sigmoid_pair_losses(e.image[idx], e.text[idx], e.scale, e.bias)
        diag[name], block[name] = pos, blk
        names += [f"{name}_loss_pool", f"{name}_loss_selected"]
        values += [pos.mean(), pos[idx].mean()]
        if k > 1:
            names.append(f"{name}_neg_loss_selected")
            values.append((blk.sum() - blk.diagonal().sum()) / (k * (k - 1)))

    if all(m in terms for m, _ in weights):
        a_diag = sum(w * diag[m] for m, w in weights)
        a_blk = sum(w * block[m] for m, w in weights)
        chosen = a_diag[idx]
        joint = a_blk.sum(0) + a_blk.sum(1) - 2 * a_blk.diagonal()
        names += [
            "score_pool_mean",
            "score_selected_mean",
            "example_score_spread",
            "joint_term_spread",
            "batch_score_selected",
        ]
        values += [
            a_diag.mean(),
            chosen.mean(),
            chosen.std(correction=0),
            joint.std(correction=0),
            a_blk.sum() / k,
        ]
        names.append("pool_example_score_spread")
        values.append(a_diag.std(correction=0))
        if k > 1:
            names.append("neg_score_selected")
            values.append((a_blk.sum() - a_blk.diagonal().sum()) / (k * (k - 1)))
        # A fixed-size probe of the candidates that lost (the pool's order is already random):
        # the joint part of their conditional score given the whole chosen set.
        rest = torch.ones(n, dtype=torch.bool, device=device)
        rest[idx] = False
        probe = rest.nonzero().squeeze(1)[:POOL_PROBE]
        if probe.numel():
            cross = sum(
                w
                * (
                    _neg_losses(terms[m], idx, probe).sum(0)
                    + _neg_losses(terms[m], probe, idx).sum(1)
                )
                for m, w in weights
            )
            names.append("pool_joint_term_spread")
            values.append(cross.std(correction=0))
    out = dict(zip(names, torch.stack([v.double() for v in values]).tolist(), strict=True))
    return out | size_stats(n, k)


def size_stats(pool_size: int, batch_size: int) -> dict[str, float]:
    """The diagnostics every selector reports, also when ``stats`` is off or there are no scores."""
    return {"pool_size": float(pool_size), "batch_size": float(batch_size)}


# ----------------------------------------------------------------------------- selectors


class Selector(Protocol):
    """Anything that picks ``k`` of the super-batch; the training loop knows only this."""

    needs_learner: bool
    needs_reference: bool

    def select(
        self,
        learner: Embeddings | None,
        reference: Embeddings | None,
        k: int,
        generator: torch.Generator | None,
        *,
        n: int | None = None,
    ) -> tuple[Tensor, dict[str, float]]: ...


def _needs(criterion: str) -> tuple[bool, bool]:
    crit = normalize_criterion(criterion)
    return crit in ("learnability", "hard_learner"), crit in ("learnability", "easy_reference")


def _pool_size(learner: Embeddings | None, reference: Embeddings | None, n: int | None) -> int:
    sizes = {len(e) for e in (learner, reference) if e is not None}
    if n is not None:
        sizes.add(_check_int("n", n))
    if not sizes:
        raise JestkitError(
            "the pool size is unknown: pass n=... when learner and reference are None"
        )
    if len(sizes) > 1:
        raise JestkitError(f"learner, reference and n disagree on the pool size: {sorted(sizes)}")
    return sizes.pop()


@dataclass
class UniformSelector:
    """A uniformly random batch. ``criterion`` only names the score the stats report."""

    criterion: str = "learnability"
    stats: bool = True
    needs_learner = False
    needs_reference = False

    def __post_init__(self) -> None:
        self.criterion = normalize_criterion(self.criterion)

    def select(self, learner, reference, k, generator=None, *, n=None):
        pool = _pool_size(learner, reference, n)
        device = next((e.device for e in (learner, reference) if e is not None), None)
        idx = uniform_sample(pool, k, generator, device=device)
        if self.stats and (learner is not None or reference is not None):
            return idx, selection_stats(learner, reference, idx, self.criterion)
        return idx, size_stats(pool, idx.numel())


@dataclass
class IndependentSelector:
    """Each example on its own score: ``A[k, k]`` (``score_mode="diagonal"``) or its row + column."""

    criterion: str = "learnability"
    temperature: float = 1.0
    method: str = "softmax"
    score_mode: str = "diagonal"
    stats: bool = True

    def __post_init__(self) -> None:
        self.criterion = normalize_criterion(self.criterion)
        self.temperature = _check_temperature(self.temperature)
        if self.method not in INDEPENDENT_METHODS:
            raise JestkitError(
                f"method must be one of {', '.join(INDEPENDENT_METHODS)}, got {self.method!r}"
            )
        if self.score_mode not in SCORE_MODES:
            raise JestkitError(
                f"score_mode must be one of {', '.join(SCORE_MODES)}, got {self.score_mode!r}"
            )
        self.needs_learner, self.needs_reference = _needs(self.criterion)

    def select(self, learner, reference, k, generator=None, *, n=None):
        pool = _pool_size(learner, reference, n)
        scores = example_scores(learner, reference, self.criterion, mode=self.score_mode)
        idx = independent_sample(scores, k, generator, self.temperature, self.method)
        if self.stats:
            return idx, selection_stats(learner, reference, idx, self.criterion)
        return idx, size_stats(pool, idx.numel())


@dataclass
class JestSelector:
    """Joint example selection (Algorithm 1), streaming from embeddings unless ``streaming=False``."""

    criterion: str = "learnability"
    n_chunks: int = 16
    temperature: float = 1.0
    streaming: bool = True
    stats: bool = True
    joint_weight: float = 1.0  # lambda on the joint terms (1: the paper's algorithm)

    def __post_init__(self) -> None:
        self.criterion = normalize_criterion(self.criterion)
        self.n_chunks = _check_int("n_chunks", self.n_chunks)
        self.temperature = _check_temperature(self.temperature)
        self.joint_weight = _check_joint_weight(self.joint_weight)
        if not isinstance(self.streaming, bool):
            raise JestkitError(f"streaming must be True or False, got {self.streaming!r}")
        self.needs_learner, self.needs_reference = _needs(self.criterion)

    def select(self, learner, reference, k, generator=None, *, n=None):
        pool = _pool_size(learner, reference, n)
        if self.streaming:
            idx = joint_sample_embeddings(
                learner,
                reference,
                k,
                self.n_chunks,
                self.criterion,
                generator,
                self.temperature,
                joint_weight=self.joint_weight,
            )
        else:
            a = score_matrix(learner, reference, self.criterion)
            idx = joint_sample(a, k, self.n_chunks, generator, self.temperature, self.joint_weight)
        if self.stats:
            return idx, selection_stats(learner, reference, idx, self.criterion)
        return idx, size_stats(pool, idx.numel())


# Every selection method, by the name configs and the CLI use: a new selector is added here.
# "flexi-jest" selects as "jest" does; what else it means (low-resolution scoring and
# multi-resolution training) is the training plan's business (jestkit.step.plan).
SELECTORS: dict[str, type] = {
    "uniform": UniformSelector,
    "independent": IndependentSelector,
    "jest": JestSelector,
    "flexi-jest": JestSelector,
}

# Selection-config fields whose name differs from the selector's option of the same meaning.
_CONFIG_NAMES = {"method": "independent_method"}


def make_selector(name_or_config: Any, **options: Any) -> Selector:
    """A selector by name (``uniform`` | ``independent`` | ``jest`` | ``flexi-jest``) with
    validated options, or from a selection config (any object with a ``method`` attribute and
    the selector's options as attributes, e.g. :class:`jestkit.config.SelectionConfig`)."""
    if not isinstance(name_or_config, str):
        cfg, name = name_or_config, getattr(name_or_config, "method", None)
        if name not in SELECTORS:
            raise JestkitError(
                f"selection.method must be one of {', '.join(SELECTORS)}, got {name!r}"
            )
        for f in fields(SELECTORS[name]):
            key = _CONFIG_NAMES.get(f.name, f.name)
            if hasattr(cfg, key) and f.name not in options:
                options[f.name] = getattr(cfg, key)
        return make_selector(name, **options)
    name = name_or_config
    if name not in SELECTORS:
        raise JestkitError(f"selector must be one of {', '.join(SELECTORS)}, got {name!r}")
    cls = SELECTORS[name]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise JestkitError(
            f"unknown option(s) {', '.join(unknown)} for selector {name!r}; it accepts {', '.join(allowed)}"
        )
    return cls(**options)
