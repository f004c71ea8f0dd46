"""JEST in your own training loop: pick the batch to train on from a super-batch, then train.

Works with any model that has the open_clip SigLIP interface (``encode_image(images)``,
``encode_text(tokens)``, ``logit_scale`` = log of the multiplier, ``logit_bias``), or with
embeddings you computed yourself::

    from jestkit.api import BatchSelector, multires_image_embeddings

    jest = BatchSelector(filter_ratio=0.8)                # score 5x more than you train on
    n = jest.super_batch_size(b)                          # draw n examples, train on b of them
    idx, stats = jest.select(model, reference, images, tokens, b, generator)
    img = multires_image_embeddings(model, images[idx], low_patch_size=32)   # FlexiViT only
    loss = siglip_loss(img, model.encode_text(tokens[idx]), ...)

The scoring and sampling are :mod:`jestkit.scoring` and :mod:`jestkit.selection`; this module only
embeds the super-batch (no grad, eval mode, then the model's mode is restored) and dispatches.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from jestkit.devices import model_device
from jestkit.errors import JestkitError
from jestkit.models.embed import embed
from jestkit.scoring import Embeddings, normalize_criterion
from jestkit.selection import SELECTORS, Selector, make_selector, super_batch_size

__all__ = [
    "BatchSelector",
    "Embeddings",
    "JestkitError",
    "model_embeddings",
    "multires_image_embeddings",
]


# ----------------------------------------------------------------------------- model helpers


def _model_name(model: Any) -> str:
    return type(model).__name__


def _check_model(model: Any, name: str) -> None:
    missing = [a for a in ("encode_image", "encode_text", "logit_scale") if not hasattr(model, a)]
    if missing:
        raise JestkitError(
            f"{name}: {_model_name(model)} lacks {', '.join(missing)}; pass a model with the "
            "open_clip SigLIP interface (encode_image, encode_text, logit_scale, logit_bias) or "
            "a jestkit.api.Embeddings"
        )
    if getattr(model, "logit_bias", None) is None:
        raise JestkitError(
            f"{name}: {_model_name(model)}.logit_bias is None; JEST scores with the sigmoid (SigLIP) "
            "pair loss, which needs a logit bias (a CLIP/softmax model has none)"
        )


def _accepts_patch_size(model: Any) -> bool:
    try:
        params = inspect.signature(model.encode_image).parameters.values()
    except (TypeError, ValueError):  # builtins/C extensions: cannot tell, let the call decide
        return True
    return any(p.name == "patch_size" or p.kind is p.VAR_KEYWORD for p in params)


def _check_patch_size(model: Any, patch_size: int, name: str) -> None:
    """A clear error for a model that cannot encode at ``patch_size`` (before any forward pass)."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise JestkitError(f"{name} must be a positive integer patch size, got {patch_size!r}")
    if not _accepts_patch_size(model):
        raise JestkitError(
            f"{name}={patch_size}: {_model_name(model)}.encode_image takes no patch_size argument; "
            "low-resolution scoring and multi-resolution training need a FlexiViT-style model "
            "(encode_image(images, patch_size=...)); pass None / fraction=0 for full resolution"
        )
    sizes = getattr(model, "patch_sizes", None)
    if sizes is not None and patch_size not in tuple(sizes):
        raise JestkitError(
            f"{name}={patch_size} is not one of {_model_name(model)}'s patch sizes {tuple(sizes)}"
        )


def _encode_image(model: Any, images: Tensor, patch_size: int | None) -> Tensor:
    # Full resolution calls encode_image(images) without the keyword, so models that do not
    # know patch sizes (a plain open_clip ViT) work too.
    if patch_size is None:
        return model.encode_image(images)
    return model.encode_image(images, patch_size=patch_size)


def _as_scalar(x: Any) -> Tensor | float:
    return x.detach().float().reshape(()) if isinstance(x, Tensor) else float(x)


@torch.no_grad()
def model_embeddings(
    model: nn.Module,
    images: Tensor,
    tokens: Tensor,
    patch_size: int | None = None,
    batch_size: int | None = None,
) -> Embeddings:
    """A model's :class:`Embeddings` of paired ``images``/``tokens``: the scores' input.

    No gradients; the model runs in eval mode and its train/eval mode is restored afterwards.
    Inputs move to the model's device; outputs are float32 and L2-normalised (a no-op for models
    that normalise already; open_clip's ``encode_image`` does not by default). ``scale`` is
    ``exp(logit_scale)``. ``batch_size`` embeds that many examples per call (bounds activation
    memory for large super-batches); None embeds all at once.
    """
    _check_model(model, "model")
    if not isinstance(images, Tensor) or not isinstance(tokens, Tensor):
        raise JestkitError(
            f"images and tokens must be tensors, got {type(images).__name__} and {type(tokens).__name__}"
        )
    n = int(images.shape[0]) if images.ndim else 0
    if n == 0 or tokens.ndim == 0 or tokens.shape[0] != n:
        raise JestkitError(
            f"images and tokens must be non-empty and paired (same first dimension), got shapes "
            f"{tuple(images.shape)} and {tuple(tokens.shape)}"
        )
    if patch_size is not None:
        _check_patch_size(model, patch_size, "patch_size")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise JestkitError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return embed(
        model, images, tokens, patch_size=patch_size, device=model_device(model, images.device),
        chunk=batch_size or 0, normalize=True,
    )  # fmt: skip


def multires_image_embeddings(
    model: nn.Module, images: Tensor, low_patch_size: int, fraction: float = 0.5
) -> Tensor:
    """Image embeddings for multi-resolution training (Flexi-JEST), with gradients.

    The first ``round(fraction * B)`` images (Python's round, as the jestkit trainer) are encoded
    at ``low_patch_size``, the rest at full resolution, concatenated in order: row i is image i.
    The paper trains half of each batch at the scoring resolution (``fraction=0.5``) so that the
    learner stays good at the resolution it scores with. Pass the batch in random order (e.g.
    indexed by :meth:`BatchSelector.select`'s sorted indices into a shuffled super-batch), so that
    which examples land in the low-resolution half is random.
    """
    if not hasattr(model, "encode_image"):
        raise JestkitError(f"model: {_model_name(model)} has no encode_image method")
    if not isinstance(images, Tensor) or images.ndim == 0 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise JestkitError(f"images must be a non-empty tensor [B, ...], got {shape}")
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise JestkitError(f"fraction must be a number in [0, 1], got {fraction!r}") from None
    if isinstance(fraction, bool) or not 0.0 <= f <= 1.0:
        raise JestkitError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if f > 0:
        _check_patch_size(model, low_patch_size, "low_patch_size")
    b = int(images.shape[0])
    n_low = round(f * b)
    if n_low == 0:
        return model.encode_image(images)
    if n_low == b:
        return _encode_image(model, images, low_patch_size)
    low = _encode_image(model, images[:n_low], low_patch_size)
    full = model.encode_image(images[n_low:])
    return torch.cat([low, full])


# ----------------------------------------------------------------------------- the selector


@dataclass
class BatchSelector:
    """Which ``k`` of a super-batch to train on, from your models: JEST (joint), independent, or
    uniform. It embeds the super-batch with the learner and the reference (no grad) and hands the
    embeddings to a :mod:`jestkit.selection` selector (whose ``select`` takes embeddings).

    ``method``: ``"jest"`` (the paper's Algorithm 1, streaming: never holds the N×N score matrix),
    ``"independent"`` (per-example scores, ``score_mode`` = the diagonal ``A[i, i]`` or the whole
    row + column), ``"uniform"`` (ordinary training; embeds nothing). ``criterion``:
    ``"learnability"`` (needs learner and reference), ``"easy_reference"`` (reference only),
    ``"hard_learner"`` (learner only). ``filter_ratio`` f sets the super-batch size
    ``N = round(b / (1 - f))``; ``temperature`` divides the scores (0 = greedy: top-k for
    independent). ``score_batch_size`` embeds the super-batch in calls of that many examples.
    ``stats=False`` skips the per-step diagnostics (one small extra pass). ``sort_indices``
    returns the chosen indices in ascending order (their position in a shuffled super-batch is
    random, so the first part of the batch, which multi-resolution training encodes at low
    resolution, is a random part; JEST's selection order is chunk by chunk, best first);
    False keeps the selection order.
    """

    criterion: str = "learnability"
    method: str = "jest"
    filter_ratio: float = 0.8
    n_chunks: int = 16
    temperature: float = 1.0
    score_batch_size: int | None = None
    score_mode: str = "diagonal"
    stats: bool = True
    sort_indices: bool = True
    _selector: Selector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in SELECTORS:
            raise JestkitError(f"method must be one of {', '.join(SELECTORS)}, got {self.method!r}")
        self.criterion = normalize_criterion(self.criterion)
        super_batch_size(1, self.filter_ratio)  # validates filter_ratio, naming it
        if self.score_batch_size is not None and (
            isinstance(self.score_batch_size, bool)
            or not isinstance(self.score_batch_size, int)
            or self.score_batch_size < 1
        ):
            raise JestkitError(
                f"score_batch_size must be a positive integer or None, got {self.score_batch_size!r}"
            )
        if not isinstance(self.sort_indices, bool):
            raise JestkitError(f"sort_indices must be True or False, got {self.sort_indices!r}")
        options: dict[str, Any] = {"criterion": self.criterion, "stats": self.stats}
        if self.method == "jest":
            options |= {"n_chunks": self.n_chunks, "temperature": self.temperature}
        elif self.method == "independent":
            options |= {"temperature": self.temperature, "score_mode": self.score_mode}
        self._selector = make_selector(self.method, **options)

    @property
    def needs_learner(self) -> bool:
        """Whether selection reads the learner's embeddings (False: uniform, easy_reference)."""
        return bool(self._selector.needs_learner)

    @property
    def needs_reference(self) -> bool:
        """Whether selection reads the reference's embeddings (False: uniform, hard_learner)."""
        return bool(self._selector.needs_reference)

    def super_batch_size(self, batch_size: int) -> int:
        """How many examples to draw for a training batch of ``batch_size``: ``round(b / (1 - f))``.

        For ``method="jest"`` the batch must split into ``n_chunks`` equal chunks; checked here so
        that a bad batch size fails before any data is loaded.
        """
        n = super_batch_size(batch_size, self.filter_ratio)
        if self.method == "jest" and batch_size % self.n_chunks:
            raise JestkitError(
                f"batch_size={batch_size} is not divisible by n_chunks={self.n_chunks}: JEST "
                "draws batch_size / n_chunks examples per chunk; pick a multiple of n_chunks"
            )
        return n

    def select_embeddings(
        self,
        learner: Embeddings | None,
        reference: Embeddings | None,
        k: int,
        generator: torch.Generator | None,
        *,
        n: int | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Select ``k`` of N from precomputed embeddings; returns ``(indices [k], stats)``.

        Indices are unique, ascending (selection order with ``sort_indices=False``), on the
        embeddings' device (``generator`` must be on it too; None uses torch's default
        generator). A model the method or criterion does not use may be None; ``n`` gives the
        pool size when both are (uniform).
        """
        idx, stats = self._selector.select(learner, reference, k, generator, n=n)
        return (idx.sort().values if self.sort_indices else idx), stats

    def select(
        self,
        learner: nn.Module | None,
        reference: nn.Module | Embeddings | None,
        images: Tensor,
        tokens: Tensor,
        k: int,
        generator: torch.Generator | None,
        *,
        patch_size: int | None = None,
        reference_tokens: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Embed the super-batch with the models the criterion needs, then select ``k`` of it.

        ``learner``: the model being trained, embedded at ``patch_size`` (None = full resolution;
        a coarser FlexiViT patch size scores for a fraction of the FLOPs). ``reference``: a frozen
        model (embedded at full resolution, with ``reference_tokens`` if its tokenizer differs) or
        its precomputed :class:`Embeddings` of these N examples in the same order (e.g.
        ``ReferenceCache.lookup(uids)``; moved to the learner's device). Models that the method
        or criterion does not read are not run and may be None. Returns ``(indices [k], stats)``
        as :meth:`select_embeddings`.
        """
        n = int(images.shape[0]) if isinstance(images, Tensor) and images.ndim else None
        if n is None or not isinstance(tokens, Tensor) or tokens.ndim == 0 or tokens.shape[0] != n:
            raise JestkitError(
                "images and tokens must be tensors of the same first dimension (the super-batch "
                f"size), got {_shape(images)} and {_shape(tokens)}"
            )
        learner_emb = reference_emb = None
        if self.needs_learner:
            if learner is None:
                raise JestkitError(
                    f"criterion {self.criterion!r} with method {self.method!r} needs the learner, got None"
                )
            learner_emb = model_embeddings(
                learner, images, tokens, patch_size, batch_size=self.score_batch_size
            )
        if self.needs_reference:
            reference_emb = self._reference_embeddings(
                reference, images, tokens if reference_tokens is None else reference_tokens, n
            )
            if learner_emb is not None and reference_emb.device != learner_emb.device:
                reference_emb = reference_emb.to(device=learner_emb.device)
        return self.select_embeddings(learner_emb, reference_emb, k, generator, n=n)

    def _reference_embeddings(
        self, reference: Any, images: Tensor, tokens: Tensor, n: int
    ) -> Embeddings:
        if reference is None:
            raise JestkitError(
                f"criterion {self.criterion!r} with method {self.method!r} needs the reference "
                "(a model or its Embeddings), got None"
            )
        if isinstance(reference, Embeddings):
            if len(reference) != n:
                raise JestkitError(
                    f"reference embeddings cover {len(reference)} examples but the super-batch "
                    f"has {n}; look up the same examples, in the same order"
                )
            return reference
        if not isinstance(tokens, Tensor) or tokens.ndim == 0 or tokens.shape[0] != n:
            raise JestkitError(
                f"reference_tokens must have {n} rows (one per image), got {_shape(tokens)}"
            )
        return model_embeddings(reference, images, tokens, None, batch_size=self.score_batch_size)


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
