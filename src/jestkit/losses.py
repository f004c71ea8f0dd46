"""Contrastive losses for two-tower image-text models, per pair and reduced.

JEST scores batches with the *pair* losses of the sigmoid (SigLIP) loss: the batch loss is a sum of
independent pair terms, which is what makes joint selection tractable. The softmax (CLIP/InfoNCE)
loss is offered as a second-class option with per-example terms.

Conventions (shared with :mod:`jestkit.scoring`): rows are images, columns are texts; ``scale`` is
the logit multiplier ``t`` (already exponentiated) and ``bias`` is ``c``; both may be Python floats
or 0-d tensors (learnable in training). Everything here is differentiable and device-agnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jestkit.errors import JestkitError

__all__ = [
    "SigLipLoss",
    "clip_example_losses",
    "clip_loss",
    "pair_logits",
    "siglip_loss",
    "sigmoid_pair_losses",
    "sigmoid_positive_losses",
]


def _check_pair(image_emb: Tensor, text_emb: Tensor, square: bool = False) -> None:
    """Shape/dtype/device checks that need no device sync."""
    for name, t in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not isinstance(t, Tensor):
            raise JestkitError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise JestkitError(f"{name} must be 2-D [n, d], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise JestkitError(f"{name} must be floating point, got dtype {t.dtype}")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise JestkitError(
            f"image_emb and text_emb must have the same width d, got shapes "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if square and image_emb.shape[0] != text_emb.shape[0]:
        raise JestkitError(
            f"image_emb and text_emb must have the same number of rows (paired), got shapes "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if image_emb.dtype != text_emb.dtype:
        raise JestkitError(
            f"image_emb and text_emb must have the same dtype, got {image_emb.dtype} and {text_emb.dtype}"
        )
    if image_emb.device != text_emb.device:
        raise JestkitError(
            f"image_emb and text_emb must be on the same device, got {image_emb.device} and {text_emb.device}"
        )


def pair_logits(
    image_emb: Tensor, text_emb: Tensor, scale: float | Tensor, bias: float | Tensor
) -> Tensor:
    """``scale * <x_i, y_j> + bias`` as one fused matmul ([N, M]).

    The scale is folded into the image rows (N*d work instead of an N*M pass) and the bias into
    ``addmm``'s input, so the logits cost exactly one N*M write.
    """
    bias_t = torch.as_tensor(bias, dtype=image_emb.dtype, device=image_emb.device)
    return torch.addmm(bias_t, image_emb * scale, text_emb.T)


def sigmoid_pair_losses(
    image_emb: Tensor,
    text_emb: Tensor,
    scale: float | Tensor,
    bias: float | Tensor,
    positives: Tensor | None = None,
) -> Tensor:
    """Per-pair sigmoid losses ``L[i, j] = softplus(-z_ij * (scale * <x_i, y_j> + bias))`` ([N, M]).

    ``z = +1`` on positive pairs, ``-1`` elsewhere. ``positives=None`` means the diagonal
    (``i == j``); otherwise a bool mask of shape [N, M]. ``softplus`` is the stable form of
    ``-log sigmoid``: no ``exp`` of large logits.
    """
    _check_pair(image_emb, text_emb)
    logits = pair_logits(image_emb, text_emb, scale, bias)
    if positives is None:
        # softplus(-l) on the diagonal, softplus(l) elsewhere: negate the diagonal in place
        # instead of building an N*M sign matrix (addmm's backward does not need its output).
        logits.diagonal().neg_()
    else:
        if not isinstance(positives, Tensor) or positives.dtype != torch.bool:
            raise JestkitError(
                f"positives must be a bool tensor or None, got "
                f"{positives.dtype if isinstance(positives, Tensor) else type(positives).__name__}"
            )
        if positives.shape != logits.shape:
            raise JestkitError(
                f"positives must have shape {tuple(logits.shape)}, got {tuple(positives.shape)}"
            )
        logits = torch.where(positives.to(logits.device), -logits, logits)
    return F.softplus(logits)


def sigmoid_positive_losses(
    image_emb: Tensor, text_emb: Tensor, scale: float | Tensor, bias: float | Tensor
) -> Tensor:
    """The diagonal of :func:`sigmoid_pair_losses` in O(N*d): ``softplus(-(scale*<x_i,y_i> + bias))``."""
    _check_pair(image_emb, text_emb, square=True)
    logits = (image_emb * text_emb).sum(-1) * scale + bias
    return F.softplus(-logits)


def siglip_loss(
    image_emb: Tensor, text_emb: Tensor, scale: float | Tensor, bias: float | Tensor
) -> Tensor:
    """The SigLIP training loss ``(1/N) * sum_ij L[i, j]`` (scalar).

    One matmul, one softplus, one sum: no label matrix (open_clip builds ``2*eye - 1`` and
    multiplies, two extra N*N passes).
    """
    _check_pair(image_emb, text_emb, square=True)
    return sigmoid_pair_losses(image_emb, text_emb, scale, bias).sum() / image_emb.shape[0]


def clip_example_losses(image_emb: Tensor, text_emb: Tensor, scale: float | Tensor) -> Tensor:
    """Per-example InfoNCE losses ``(i2t_i + t2i_i) / 2`` ([N]).

    ``i2t_i = logsumexp_j(l_ij) - l_ii`` and ``t2i_i = logsumexp_j(l_ji) - l_ii`` with
    ``l = scale * <x, y>``: the CLIP loss is their mean (:func:`clip_loss`).
    """
    _check_pair(image_emb, text_emb, square=True)
    logits = (image_emb * scale) @ text_emb.T
    diag = logits.diagonal()
    return 0.5 * (torch.logsumexp(logits, dim=1) + torch.logsumexp(logits, dim=0)) - diag


def clip_loss(image_emb: Tensor, text_emb: Tensor, scale: float | Tensor) -> Tensor:
    """The CLIP (symmetric InfoNCE) training loss: the mean of :func:`clip_example_losses`."""
    return clip_example_losses(image_emb, text_emb, scale).mean()


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order; the backward sums every rank's gradient and
    hands each rank the slice of its own rows (gloo and NCCL alike).

    ``counts[r]`` rows live on rank r (JEST's selection leaves ranks uneven shares of the global
    batch); collectives need equal shapes, so each rank pads to ``max(counts)`` on the wire.
    """

    @staticmethod
    def forward(ctx, x: Tensor, rank: int, counts: tuple[int, ...]) -> Tensor:
        import torch.distributed as dist

        width = max(counts)
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.rank, ctx.counts, ctx.width = rank, counts, width
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        import torch.distributed as dist

        padded = grad.new_zeros((len(ctx.counts) * ctx.width, *grad.shape[1:]))
        offset = 0
        for r, c in enumerate(ctx.counts):
            padded[r * ctx.width : r * ctx.width + c] = grad[offset : offset + c]
            offset += c
        dist.all_reduce(padded)
        return padded.narrow(0, ctx.rank * ctx.width, ctx.counts[ctx.rank]), None, None


class SigLipLoss(nn.Module):
    """The SigLIP training loss as a module that owns its cross-rank communication.

    With ``world_size == 1`` this is :func:`siglip_loss`. With ``world_size > 1`` (an initialised
    ``torch.distributed`` process group), each rank scores its local images against the texts of
    *all* ranks (gathered with autograd, open_clip's "gather" variant): positives are the local
    rows' own texts, everything else is negative. The loss is normalised so that the *mean over
    ranks* is the global loss, so averaging gradients over ranks (as DDP does) gives the gradient
    of the global loss. Ranks may hold different numbers of rows (``counts``, the same on every
    rank): JEST's selection does not split the global batch evenly.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not isinstance(world_size, int) or world_size < 1:
            raise JestkitError(f"world_size must be an int >= 1, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise JestkitError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        self.rank = rank
        self.world_size = world_size

    def _check_group(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise JestkitError(
                f"SigLipLoss(world_size={self.world_size}) needs an initialised torch.distributed "
                "process group"
            )
        if dist.get_world_size() != self.world_size:
            raise JestkitError(
                f"SigLipLoss world_size={self.world_size} but the process group has "
                f"{dist.get_world_size()} ranks"
            )

    def _counts(self, n: int, counts) -> tuple[int, ...]:
        if counts is None:
            return (n,) * self.world_size
        counts = tuple(int(c) for c in counts)
        if len(counts) != self.world_size or min(counts) < 0 or counts[self.rank] != n:
            raise JestkitError(
                f"counts={list(counts)} must list world_size={self.world_size} non-negative row "
                f"counts with counts[rank={self.rank}] equal to the local batch size {n}"
            )
        if sum(counts) == 0:
            raise JestkitError("counts: the global batch is empty")
        return counts

    def gather_texts(self, text_emb: Tensor, counts=None) -> Tensor:
        """All ranks' texts, concatenated in rank order, with gradients flowing back to each rank."""
        if self.world_size == 1:
            return text_emb
        self._check_group()
        return _GatherWithGrad.apply(text_emb, self.rank, self._counts(len(text_emb), counts))

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        logit_scale: float | Tensor,
        logit_bias: float | Tensor,
        counts: list[int] | tuple[int, ...] | None = None,
    ) -> Tensor:
        """This rank's share of the loss; ``logit_scale`` is the multiplier ``t`` (exponentiated).

        ``counts``: rows on each rank (None: every rank holds as many as this one).
        """
        _check_pair(image_emb, text_emb, square=True)
        if self.world_size == 1:
            return siglip_loss(image_emb, text_emb, logit_scale, logit_bias)
        counts = self._counts(image_emb.shape[0], counts)
        texts = self.gather_texts(text_emb, counts)
        n, offset = counts[self.rank], sum(counts[: self.rank])
        logits = pair_logits(image_emb, texts, logit_scale, logit_bias)
        # Positives: local image i with this rank's text i (offset by the ranks before it).
        logits.narrow(1, offset, n).diagonal().neg_()
        # (sum of this rank's pair terms) / (global batch), times world_size: the mean over ranks
        # is then the global loss
        return F.softplus(logits).sum() * (self.world_size / sum(counts))
