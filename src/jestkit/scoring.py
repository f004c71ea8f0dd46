"""Score matrices for data selection: pair losses of a learner and a reference, combined by a criterion.

For a super-batch of N examples, a criterion turns the two models' sigmoid pair losses into an
N×N score matrix ``A`` (row = image, column = text)::

    learnability    A = L_learner - L_reference     (default: not yet learned, but learnable)
    hard_learner    A = L_learner
    easy_reference  A = -L_reference

A batch S scores ``s(S) = sum_{i,j in S} A[i, j]``. ``A`` is available dense (:func:`score_matrix`),
as blocks on demand (:func:`score_block`), or as the row/column sums that joint selection needs,
computed blockwise without ever holding N×N (:class:`BlockScorer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from jestkit.errors import JestkitError
from jestkit.losses import pair_logits, sigmoid_pair_losses, sigmoid_positive_losses

__all__ = [
    "CRITERIA",
    "BlockScorer",
    "Embeddings",
    "all_finite",
    "criterion_terms",
    "criterion_weights",
    "example_scores",
    "normalize_criterion",
    "prepare_embeddings",
    "score_block",
    "score_matrix",
]

CRITERIA = ("learnability", "hard_learner", "easy_reference")
SCORE_MODES = ("diagonal", "rowcol")

# Default bound on the elements of the blockwise workspace (32M = 128 MB in float32), raised for
# large N so that blocks keep at least _MIN_BLOCK_ROWS rows (thinner matmuls lose BLAS efficiency).
DEFAULT_BLOCK_ELEMS = 1 << 25
_MIN_BLOCK_ROWS = 256
_ALIGN = 16  # block widths are padded to this many columns (64 bytes of float32)


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def all_finite(*tensors: Tensor) -> list[bool]:
    """Whether each tensor is free of NaN/inf, in one device sync.

    A float64 sum is finite iff every entry is (NaN and inf propagate) and cannot overflow for
    float32/half inputs: a reduction instead of an elementwise mask. Only a non-finite sum pays
    for the exact check (a float64 input may overflow its sum while finite).
    """
    sums = torch.stack([t.sum(dtype=torch.float64) for t in tensors])
    ok = torch.isfinite(sums).tolist()
    return [good or bool(torch.isfinite(t).all()) for good, t in zip(ok, tensors, strict=True)]


def _scalar_repr(x: float | Tensor) -> str:
    return repr(x.detach().cpu().tolist()) if isinstance(x, Tensor) else repr(x)


@dataclass(eq=False)
class Embeddings:
    """One model's L2-normalised embeddings of N paired examples, with its logit scale and bias.

    ``scale`` is the multiplier ``t`` (already exponentiated), ``bias`` is ``c``; either may be a
    Python float or a 0-d tensor. Compared by identity (``==`` on tensors is elementwise).
    """

    image: Tensor
    text: Tensor
    scale: float | Tensor
    bias: float | Tensor

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.image.dtype

    @property
    def device(self) -> torch.device:
        return self.image.device

    def index(self, idx: Tensor | Sequence[int] | slice) -> Embeddings:
        """The sub-batch ``idx`` (same scale and bias)."""
        if not isinstance(idx, (Tensor, slice)):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.image.device)
        return Embeddings(self.image[idx], self.text[idx], self.scale, self.bias)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Embeddings:
        """A copy on ``device`` / in ``dtype`` (tensor scale/bias move too; floats stay floats)."""

        def move(x):
            return x.to(device=device, dtype=dtype) if isinstance(x, Tensor) else x

        return Embeddings(move(self.image), move(self.text), move(self.scale), move(self.bias))

    def detach(self) -> Embeddings:
        def det(x):
            return x.detach() if isinstance(x, Tensor) else x

        return Embeddings(det(self.image), det(self.text), det(self.scale), det(self.bias))

    def validate(self, name: str = "embeddings") -> Embeddings:
        """Raise :class:`JestkitError` unless this is a usable record; returns ``self``.

        Checks shapes, dtypes and devices (free), then all values for NaN/inf in a single
        device sync.
        """
        tensors = self._check_structure(name)
        self._raise_non_finite(name, all_finite(*tensors))
        return self

    def _check_structure(self, name: str) -> list[Tensor]:
        """Shape/dtype/device checks; returns the tensors whose values still need a finite check."""
        im, tx = self.image, self.text
        for part, t in (("image", im), ("text", tx)):
            if not isinstance(t, Tensor):
                raise JestkitError(f"{name}.{part} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != 2:
                raise JestkitError(f"{name}.{part} must be 2-D [N, d], got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise JestkitError(f"{name}.{part} must be floating point, got dtype {t.dtype}")
        if im.shape != tx.shape:
            raise JestkitError(
                f"{name}.image and {name}.text must have the same shape [N, d], got "
                f"{tuple(im.shape)} and {tuple(tx.shape)}"
            )
        if im.dtype != tx.dtype:
            raise JestkitError(
                f"{name}.image and {name}.text must have the same dtype, got {im.dtype} and {tx.dtype}"
            )
        if im.device != tx.device:
            raise JestkitError(
                f"{name}.image and {name}.text must be on the same device, got {im.device} and {tx.device}"
            )
        if im.shape[0] == 0:
            raise JestkitError(f"{name} is empty (N = 0)")
        scalars = []
        for part, s in (("scale", self.scale), ("bias", self.bias)):
            if isinstance(s, Tensor):
                if s.numel() != 1:
                    raise JestkitError(
                        f"{name}.{part} must be a scalar, got shape {tuple(s.shape)}"
                    )
                scalars.append(s.detach().reshape(()).to(device=im.device, dtype=torch.float64))
            elif isinstance(s, (int, float)) and not isinstance(s, bool):
                scalars.append(torch.tensor(float(s), dtype=torch.float64, device=im.device))
            else:
                raise JestkitError(f"{name}.{part} must be a float or a 0-d tensor, got {s!r}")
        return [im, tx, torch.stack(scalars)]

    def _raise_non_finite(self, name: str, ok: list[bool]) -> None:
        if all(ok):
            return
        for part, t, good in (("image", self.image, ok[0]), ("text", self.text, ok[1])):
            if not good:
                bad = (~torch.isfinite(t)).nonzero()
                r, c = bad[0].tolist()
                raise JestkitError(
                    f"{name}.{part} has {bad.shape[0]} non-finite values (NaN/inf); first at "
                    f"[{r}, {c}] = {t[r, c].item()}"
                )
        raise JestkitError(
            f"{name}.scale and {name}.bias must be finite, got scale={_scalar_repr(self.scale)}, "
            f"bias={_scalar_repr(self.bias)}"
        )


def normalize_criterion(criterion: str) -> str:
    """``"hard-learner"`` -> ``"hard_learner"``; unknown names raise, listing the known ones."""
    name = criterion.replace("-", "_").lower() if isinstance(criterion, str) else criterion
    if name not in CRITERIA:
        raise JestkitError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    return name


def _work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 at least (half-precision sums lose the signal), float64 if any input is."""
    out = torch.float32
    for dt in dtypes:
        out = torch.promote_types(out, dt)
    return out


def prepare_embeddings(**models: Embeddings | None) -> dict[str, Embeddings]:
    """Validate the given models (``learner=..., reference=...``; None skipped) and align them.

    Each is validated as in :meth:`Embeddings.validate`, with one device sync for all of them;
    together they must have the same N and device. All are detached and cast to one work dtype
    (float32, or float64 if any is).
    """
    present: dict[str, Embeddings] = {}
    to_check: list[list[Tensor]] = []
    for name, emb in models.items():
        if emb is None:
            continue
        if not isinstance(emb, Embeddings):
            raise JestkitError(
                f"{name} must be a jestkit.scoring.Embeddings, got {type(emb).__name__}"
            )
        to_check.append(emb._check_structure(name))
        present[name] = emb
    if len(present) > 1:
        (na, a), (nb, b) = list(present.items())[:2]
        if len(a) != len(b):
            raise JestkitError(
                f"{na} and {nb} must embed the same N examples, got N={len(a)} and N={len(b)}"
            )
        if a.device != b.device:
            raise JestkitError(
                f"{na} and {nb} must be on the same device, got {a.device} and {b.device}"
            )
    if present:
        ok = all_finite(*(t for ts in to_check for t in ts))  # the one sync
        for i, (name, emb) in enumerate(present.items()):
            emb._raise_non_finite(name, ok[3 * i : 3 * i + 3])
    dtype = _work_dtype(*(e.dtype for e in present.values()))
    return {name: e.detach().to(dtype=dtype) for name, e in present.items()}


_WEIGHTS = {
    "learnability": (("learner", 1.0), ("reference", -1.0)),
    "hard_learner": (("learner", 1.0),),
    "easy_reference": (("reference", -1.0),),
}


def criterion_weights(criterion: str) -> tuple[tuple[str, float], ...]:
    """``A = sum_m w_m * L_m``: the (model name, weight) pairs of a criterion."""
    return _WEIGHTS[normalize_criterion(criterion)]


def criterion_terms(
    learner: Embeddings | None, reference: Embeddings | None, criterion: str
) -> list[tuple[float, Embeddings]]:
    """The (weight, embeddings) terms of ``A`` for a criterion, validated and dtype-aligned.

    Only the models the criterion uses are validated; a missing one raises.
    """
    weights = criterion_weights(criterion)
    given = {"learner": learner, "reference": reference}
    for name, _ in weights:
        if given[name] is None:
            raise JestkitError(
                f"criterion {normalize_criterion(criterion)!r} needs {name} embeddings, got {name}=None"
            )
    prepared = prepare_embeddings(**{name: given[name] for name, _ in weights})
    return [(w, prepared[name]) for name, w in weights]


def _combine(terms: list[tuple[float, Embeddings]], fn) -> Tensor:
    """``sum_m w_m * fn(model_m)``, accumulated in place (fn returns fresh tensors)."""
    out = None
    for w, e in terms:
        x = fn(e)
        x = x if w == 1.0 else x.mul_(w)
        out = x if out is None else out.add_(x)
    return out


def score_matrix(
    learner: Embeddings | None, reference: Embeddings | None, criterion: str
) -> Tensor:
    """The dense N×N score matrix ``A`` (row = image, column = text). O(N^2) memory: small N only."""
    terms = criterion_terms(learner, reference, criterion)

    def pair_losses(e: Embeddings) -> Tensor:
        # sigmoid_pair_losses, with the softplus in place: one N×N buffer per model, not two.
        logits = pair_logits(e.image, e.text, e.scale, e.bias)
        logits.diagonal().neg_()
        return torch.ops.aten.softplus.out(logits, 1, 20, out=logits)

    with torch.no_grad():
        return _combine(terms, pair_losses)


def _as_index(x, n: int, name: str, device: torch.device) -> Tensor:
    idx = torch.as_tensor(x, device=device)
    if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise JestkitError(
            f"{name} must be a 1-D integer index, got {idx.dtype} shape {tuple(idx.shape)}"
        )
    idx = idx.long()
    if idx.numel() and not bool(((idx >= 0) & (idx < n)).all()):
        raise JestkitError(
            f"{name} must index [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]"
        )
    return idx


def score_block(
    learner: Embeddings | None,
    reference: Embeddings | None,
    criterion: str,
    rows: Tensor | Sequence[int],
    cols: Tensor | Sequence[int],
) -> Tensor:
    """``A[rows][:, cols]`` computed from the embeddings (positives where ``rows[a] == cols[b]``)."""
    terms = criterion_terms(learner, reference, criterion)
    n, device = len(terms[0][1]), terms[0][1].device
    r = _as_index(rows, n, "rows", device)
    c = _as_index(cols, n, "cols", device)
    positives = r[:, None] == c[None, :]
    with torch.no_grad():
        return _combine(
            terms,
            lambda e: sigmoid_pair_losses(
                e.image[r], e.text[c], e.scale, e.bias, positives=positives
            ),
        )


@dataclass(eq=False)
class _Group:
    """Block products batched over models of one width: batch b computes ``[t*u_i | c] . [v_j | 1]``.

    Per model two batches: (image rows, text columns) = the A-row block and (text rows, image
    columns) = the transposed A-column block. ``right`` holds ``[v | 1]`` for every batch; the
    left operands are gathered from the partner batch and turned into ``[t*u | c]`` by ``mul``
    and ``add``, so the bias costs no pass over the block.
    """

    right: Tensor  # [B, N, d+1]
    partner: list[int]  # batch whose right operand holds this batch's left rows
    mul: Tensor  # [B, 1, d+1]: t ... t 0
    add: Tensor  # [B, 1, d+1]: 0 ... 0 c
    weights: Tensor  # [B]: the criterion weight of each batch's model
    weight_list: list[float]  # the same on the host (no device sync to read one)

    def left(self, idx: Tensor | slice, batches: list[int] | None = None) -> Tensor:
        b = list(range(self.right.shape[0])) if batches is None else batches
        src = self.right[:, idx] if isinstance(idx, slice) else self.right.index_select(1, idx)
        return src[[self.partner[i] for i in b]].mul_(self.mul[b]).add_(self.add[b])


class BlockScorer:
    """Row and column sums of ``A`` from the embeddings, block by block, never holding N×N.

    Only negative-pair terms ``softplus(l_ij)`` are computed in the blocks; the few positive
    entries a sum touches are corrected from the O(N*d) diagonal. Models of equal width share one
    batched matmul, one in-place softplus and one weighted reduction per block. Temporaries are
    bounded by ``block_elems`` elements (default ``max(2**25, 256 * N * batches)``, 2 batches per
    model) plus the augmented operands (2 * N * (d+1) per model): memory O(N * block), not O(N^2).
    """

    def __init__(
        self,
        learner: Embeddings | None,
        reference: Embeddings | None,
        criterion: str,
        block_elems: int | None = None,
    ) -> None:
        self.terms = criterion_terms(learner, reference, criterion)
        first = self.terms[0][1]
        self.n = len(first)
        self.device = first.device
        self.dtype = first.dtype
        self._kw = {"dtype": self.dtype, "device": self.device}
        widths = {e.image.shape[1] for _, e in self.terms}
        groups = [self.terms] if len(widths) == 1 else [[t] for t in self.terms]
        self._batches = 2 * max(len(g) for g in groups)  # two block products per model
        if block_elems is None:
            block_elems = max(DEFAULT_BLOCK_ELEMS, self._batches * _MIN_BLOCK_ROWS * self.n)
        elif isinstance(block_elems, bool) or not isinstance(block_elems, int) or block_elems < 1:
            raise JestkitError(f"block_elems must be an int >= 1, got {block_elems!r}")
        self.block_elems = block_elems
        self._groups = [self._group(g) for g in groups]
        self.columns: Tensor | None = None  # the columns chunk_sums computes (None: all N)
        self._rights = [g.right for g in self._groups]
        self._cols_bufs: list[Tensor] | None = None
        self._buf: Tensor | None = None

    def _group(self, terms: list[tuple[float, Embeddings]]) -> _Group:
        kw = self._kw
        nb, d = 2 * len(terms), terms[0][1].image.shape[1]
        # Rows past N are zero padding up to a multiple of _ALIGN: block rows then start on
        # 64-byte boundaries (unaligned widths make the matmul ~25% slower); their sums are dropped.
        right = torch.zeros(nb, _aligned(self.n), d + 1, **kw)
        right[:, : self.n, d] = 1.0
        partner, scales, biases, weights = [], [], [], []
        for i, (w, e) in enumerate(terms):
            right[2 * i, : self.n, :d] = e.text  # A-row block: [t*x_i | c] . [y_j | 1]
            right[2 * i + 1, : self.n, :d] = e.image  # A-column block^T: [t*y_j | c] . [x_i | 1]
            partner += [2 * i + 1, 2 * i]
            scales += [torch.as_tensor(e.scale, **kw).reshape(())] * 2
            biases += [torch.as_tensor(e.bias, **kw).reshape(())] * 2
            weights += [w, w]
        scale = torch.stack(scales).view(nb, 1, 1)
        bias = torch.stack(biases).view(nb, 1, 1)
        zero = torch.zeros(nb, 1, 1, **kw)
        return _Group(
            right=right,
            partner=partner,
            mul=torch.cat([scale.expand(nb, 1, d), zero], 2),
            add=torch.cat([zero.expand(nb, 1, d), bias], 2),
            weights=torch.tensor(weights, **kw),
            weight_list=weights,
        )

    def _rows_per_block(self, batches: int) -> int:
        return max(1, self.block_elems // (batches * _aligned(self.n)))

    def _buffer(self, numel: int) -> Tensor:
        # One reusable workspace: allocating per chunk costs page faults on CPU.
        if self._buf is None or self._buf.numel() < numel:
            self._buf = torch.empty(numel, dtype=self.dtype, device=self.device)
        return self._buf[:numel]

    @torch.no_grad()
    def diagonal(self) -> Tensor:
        """``A[k, k]`` for every k ([N]), in O(N*d)."""
        return _combine(
            self.terms, lambda e: sigmoid_positive_losses(e.image, e.text, e.scale, e.bias)
        )

    @torch.no_grad()
    def chunk_sums(self, idx: Tensor) -> Tensor:
        """``sum_{i in idx} A[i, j] + sum_{i in idx} A[j, i]`` for every column j in :attr:`columns`.

        Returns [N] (or [len(columns)] after :meth:`restrict_columns`). Entries ``j`` in ``idx``
        are off by the positive-pair correction: joint selection never reads them again (those
        examples are already selected).
        """
        used = self.n if self.columns is None else self.columns.numel()
        width = self._rights[0].shape[1]  # padded
        out = torch.zeros(width, dtype=self.dtype, device=self.device)
        rows = self._rows_per_block(self._batches)
        for g, right in zip(self._groups, self._rights, strict=True):
            nb = right.shape[0]
            for start in range(0, idx.numel(), rows):
                sub = idx[start : start + rows]
                m = sub.numel()
                buf = self._buffer(nb * m * width).view(nb, m, width)
                torch.bmm(g.left(sub), right.transpose(1, 2), out=buf)
                # softplus in place: the same kernel (and threshold) as F.softplus in the dense path
                torch.ops.aten.softplus.out(buf, 1, 20, out=buf)
                # out[j] += sum_b w_b * sum_i buf[b, i, j]
                out.addmv_(buf.sum(1).T, g.weights)
        return out[:used]

    def restrict_columns(self, cols: Tensor | None) -> None:
        """Compute :meth:`chunk_sums` only for the columns ``cols`` from now on (None: all N).

        Joint selection drops the selected examples from time to time: their sums are never read
        again, and skipping them saves up to k/N of the work. The restricted operands are
        gathered into one buffer per group, allocated once (fresh allocations cost page faults).
        """
        self.columns = cols
        if cols is None:
            self._rights = [g.right for g in self._groups]
            return
        if self._cols_bufs is None:
            self._cols_bufs = [torch.zeros(g.right.numel(), **self._kw) for g in self._groups]
        w = cols.numel()
        self._rights = []
        for g, flat in zip(self._groups, self._cols_bufs, strict=True):
            nb, _, dim = g.right.shape
            # contiguous and padded like the full operands; stale padding rows only feed sums
            # that are dropped
            right = flat[: nb * _aligned(w) * dim].view(nb, _aligned(w), dim)
            for b in range(nb):
                torch.index_select(g.right[b], 0, cols, out=right[b, :w])
            self._rights.append(right)

    @torch.no_grad()
    def rowcol(self) -> Tensor:
        """``sum_j A[k, j] + sum_i A[i, k] - A[k, k]`` for every k ([N]), one pass over A in blocks."""
        n = self.n
        row = torch.zeros(n, dtype=self.dtype, device=self.device)
        col = torch.zeros(n, dtype=self.dtype, device=self.device)
        # the diagonal as the blocks compute it (every entry treated as a negative pair)
        raw_diag = torch.zeros(n, dtype=self.dtype, device=self.device)
        rows = self._rows_per_block(1)
        width = self._groups[0].right.shape[1]  # padded
        for start in range(0, n, rows):
            m = min(rows, n - start)
            full = self._buffer(m * width).view(m, width)
            block = full[:, :n]
            for g in self._groups:
                # the A-row blocks (image rows, text columns) are the even batches
                for b in range(0, g.right.shape[0], 2):
                    w = g.weight_list[b]
                    left = g.left(slice(start, start + m), [b])[0]
                    torch.mm(left, g.right[b].T, out=full)
                    torch.ops.aten.softplus.out(full, 1, 20, out=full)
                    row[start : start + m].add_(block.sum(1), alpha=w)
                    col.add_(block.sum(0), alpha=w)
                    raw_diag[start : start + m].add_(block.diagonal(offset=start), alpha=w)
        # The blocks used softplus(l_kk) on the diagonal instead of softplus(-l_kk); both the row
        # and the column sum carry that entry, and the definition counts it once.
        return row + col - 2 * raw_diag + self.diagonal()


def example_scores(
    learner: Embeddings | None,
    reference: Embeddings | None,
    criterion: str,
    mode: str = "diagonal",
    block_elems: int | None = None,
) -> Tensor:
    """Per-example scores for independent selection ([N]).

    ``"diagonal"``: ``A[k, k]``, the example's own pair (O(N*d)). ``"rowcol"``: the example's whole
    row plus column of ``A`` over the super-batch, diagonal counted once,
    ``sum_j A[k, j] + sum_i A[i, k] - A[k, k]`` = ``s(k | pool minus k)``; computed in row blocks
    (O(N^2 * d) time, O(N * block) memory).
    """
    if mode not in SCORE_MODES:
        raise JestkitError(f"mode must be one of {', '.join(SCORE_MODES)}, got {mode!r}")
    scorer = BlockScorer(learner, reference, criterion, block_elems=block_elems)
    return scorer.diagonal() if mode == "diagonal" else scorer.rowcol()
