"""The one no-grad embedding routine: a model's embeddings of many examples, chunk by chunk.

Scoring a super-batch, evaluating, caching the reference, exporting per-example scores and the
analysis probe all embed examples without gradients; they all call :func:`embed` (or its
one-tower forms), so eval mode, chunking, devices, autocast and float32 outputs are decided once.

Any model with the open_clip SigLIP interface works (``encode_image(images)``,
``encode_text(tokens)``, ``logit_scale`` = log of the multiplier, ``logit_bias``); a jestkit
:class:`~jestkit.models.DualEncoder` additionally takes ``patch_size`` and validates its inputs
once here, not once per chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jestkit.devices import model_device
from jestkit.models.dual_encoder import DualEncoder
from jestkit.scoring import Embeddings

Autocast = Callable[[], AbstractContextManager]


@contextlib.contextmanager
def inference_mode(model: Any) -> Iterator[None]:
    """Eval mode and no grad inside; the model's previous train/eval mode restored after."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if hasattr(model, "train"):
            model.train(was_training)


def encode_image(model: Any, images: Tensor, patch_size: int | None = None) -> Tensor:
    """``model.encode_image`` at ``patch_size``; full resolution calls it without the keyword, so
    a model that knows no patch sizes (a plain open_clip ViT) works too."""
    if isinstance(model, DualEncoder):
        return model.encode_image(images, patch_size, validate=False)
    if patch_size is None:
        return model.encode_image(images)
    return model.encode_image(images, patch_size=patch_size)


def encode_text(model: Any, tokens: Tensor) -> Tensor:
    if isinstance(model, DualEncoder):
        return model.encode_text(tokens, validate=False)
    return model.encode_text(tokens)


def _chunks(
    fn: Callable[[Tensor], Tensor], data: Tensor, chunk: int, device: torch.device
) -> Tensor:
    step = chunk if chunk > 0 else max(1, len(data))
    parts = [
        fn(data[i : i + step].to(device, non_blocking=True)).float()
        for i in range(0, len(data), step)
    ]
    if not parts:
        return fn(data.to(device)).float()
    return torch.cat(parts)


def embed_images(
    model: Any,
    images: Tensor,
    *,
    patch_size: int | None = None,
    device: torch.device | None = None,
    chunk: int = 0,
    autocast: Autocast = nullcontext,
    validate: bool = True,
) -> Tensor:
    """``[N, d]`` float32 image embeddings, ``chunk`` images per call (0: all at once)."""
    if validate and isinstance(model, DualEncoder):
        model.check_images(images, patch_size)
    device = device or model_device(model, images.device)
    with inference_mode(model), autocast():
        return _chunks(lambda x: encode_image(model, x, patch_size), images, chunk, device)


def embed_texts(
    model: Any,
    tokens: Tensor,
    *,
    device: torch.device | None = None,
    chunk: int = 0,
    autocast: Autocast = nullcontext,
    validate: bool = True,
) -> Tensor:
    """``[N, d]`` float32 text embeddings, ``chunk`` captions per call (0: all at once)."""
    if validate and isinstance(model, DualEncoder):
        model.check_tokens(tokens)
    device = device or model_device(model, tokens.device)
    with inference_mode(model), autocast():
        return _chunks(lambda t: encode_text(model, t), tokens, chunk, device)


def embed(
    model: Any,
    images: Tensor,
    tokens: Tensor,
    *,
    patch_size: int | None = None,
    device: torch.device | None = None,
    chunk: int = 0,
    autocast: Autocast = nullcontext,
    validate: bool = True,
    normalize: bool = False,
) -> Embeddings:
    """No-grad :class:`Embeddings` of paired ``images``/``tokens`` (float32, eval mode, the
    model's mode restored), with its ``t = exp(logit_scale)`` and ``c = logit_bias``.

    ``chunk`` > 0 embeds that many examples per call: it bounds activation memory, and on CPU
    calls of a few hundred examples stay in cache. ``validate=False`` skips the input checks of
    a hot path whose inputs were checked once; ``normalize=True`` L2-normalises the outputs (for
    models that do not, e.g. open_clip's by default).
    """
    if validate and isinstance(model, DualEncoder):
        model.check_images(images, patch_size)
        model.check_tokens(tokens)
    device = device or model_device(model, images.device)
    with inference_mode(model), autocast():
        image = _chunks(lambda x: encode_image(model, x, patch_size), images, chunk, device)
        text = _chunks(lambda t: encode_text(model, t), tokens, chunk, device)
        scale, bias = scale_bias(model)
    if normalize:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return Embeddings(image, text, scale, bias)


def scale_bias(model: Any) -> tuple[Tensor, Tensor]:
    """The model's SigLIP multiplier ``t = exp(logit_scale)`` and bias ``c`` as float32 0-d tensors."""
    log_scale, bias = model.logit_scale, model.logit_bias
    log_scale = torch.as_tensor(log_scale).detach()
    bias = torch.as_tensor(bias).detach()
    return log_scale.exp().float().reshape(()), bias.float().reshape(())
