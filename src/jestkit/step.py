"""One training step, as functions: score the super-batch, select, forward and loss, update.

The trainer (:mod:`jestkit.train`), the overhead benchmark, the analysis probe and the scorers'
timing all call these same functions, so what is timed or probed is what the trainer runs:

    emb = score(learner_source, reference_source, batch, step)          # no grad
    idx, stats = selector.select(emb.learner, emb.reference, b, generator, n=len(batch))
    loss = forward_loss(model, loss_fn, images, tokens, plan.n_low(len(idx)), plan.low_patch)
    grad_norm = update(model, optimizer, loss, grad_clip)                  # None: not finite

A :class:`Plan` fixes what a config means for a model once, at the start: which selector, at
which patch size the learner scores, and which share of each batch trains at low resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jestkit.config import RunConfig
from jestkit.data import SuperBatch
from jestkit.distributed import World, all_sum
from jestkit.errors import check
from jestkit.flops import forward_flops
from jestkit.models import DualEncoder
from jestkit.scoring import Embeddings, all_finite
from jestkit.sources import EmbeddingSource

Autocast = Callable[[], AbstractContextManager]

# flexi-jest trains this share of each batch at the low resolution unless train.multires_fraction
# says otherwise (the paper: half of each batch at the scoring resolution).
FLEXI_MULTIRES_FRACTION = 0.5


@dataclass(frozen=True)
class Plan:
    """What the config means for this model: the scoring and low-resolution training patch sizes
    (None = full resolution) and the share of each batch trained at ``low_patch``."""

    score_patch: int | None
    low_patch: int | None
    multires_fraction: float

    def n_low(self, m: int) -> int:
        """How many of ``m`` selected examples train at ``low_patch`` (the first ones)."""
        return round(m * self.multires_fraction)


def plan(cfg: RunConfig, model: Any) -> Plan:
    """Resolve the patch sizes; ``flexi-jest`` is low-resolution scoring *and* multi-resolution
    training, and on a model without FlexiViT patch sizes it is an error naming the model."""
    sizes = tuple(getattr(model, "patch_sizes", ()) or ())
    low = sizes[-1] if sizes else None
    score = cfg.selection.score_patch_size or None
    multires = cfg.train.multires_fraction
    if cfg.selection.method == "flexi-jest":
        check(
            len(sizes) > 1,
            f"selection.method='flexi-jest' scores at a low resolution and trains part of each "
            f"batch at it: it needs a FlexiViT with two or more patch sizes; model "
            f"{cfg.model.name!r} has {list(sizes)}",
        )
        score = score or low
        multires = multires or FLEXI_MULTIRES_FRACTION
    if score is not None:
        check(
            score in sizes,
            f"selection.score_patch_size={score} is not one of the model's "
            f"patch sizes {list(sizes)}",
        )
    if multires > 0:
        check(
            low is not None and len(sizes) > 1,
            f"train.multires_fraction={multires} needs a FlexiViT with two or "
            f"more patch sizes; model {cfg.model.name!r} has {list(sizes)}",
        )
    if score == (sizes[0] if sizes else None):
        score = None
    return Plan(score, low, multires)


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Scored:
    """The super-batch's embeddings from each source (None where the criterion needs none) and
    the FLOPs each source spent, by ledger kind."""

    learner: Embeddings | None
    reference: Embeddings | None
    flops: dict[str, int]


def score(
    learner: EmbeddingSource | None,
    reference: EmbeddingSource | None,
    batch: SuperBatch,
    step: int,
) -> Scored:
    """Embed the super-batch with each source (no grad)."""
    out: dict[str, Embeddings | None] = {"learner": None, "reference": None}
    flops: dict[str, int] = {}
    for name, source in (("learner", learner), ("reference", reference)):
        if source is not None:
            out[name], f = source.embeddings(batch, step)
            flops[source.ledger_key] = flops.get(source.ledger_key, 0) + f
    return Scored(out["learner"], out["reference"], flops)


def nonfinite_inputs(learner: Embeddings | None, reference: Embeddings | None) -> str | None:
    """Which scoring input holds a NaN/inf (embeddings, t or c), if any: one device sync."""
    named = [(n, e) for n, e in (("learner", learner), ("reference", reference)) if e is not None]
    parts = [torch.as_tensor(x) for _, e in named for x in (e.image, e.text, e.scale, e.bias)]
    ok = all_finite(*parts) if parts else []
    for i, (name, _) in enumerate(named):
        if not all(ok[4 * i : 4 * i + 4]):
            return f"{name} embeddings (selection scores)"
    return None


def local_share(idx: Tensor, n_local: int, rank: int, world_size: int) -> tuple[Tensor, list[int]]:
    """The selected global indices (sorted) that this rank holds, as local positions, and every
    rank's count (ranks hold contiguous slices of ``n_local`` and get uneven shares)."""
    counts = torch.bincount(idx // n_local, minlength=world_size).tolist()
    lo = rank * n_local
    return idx[(idx >= lo) & (idx < lo + n_local)] - lo, counts


# ---------------------------------------------------------------------------------------------
# Forward, loss and update


def forward_loss(
    model: torch.nn.Module,
    loss_fn: Callable[..., Tensor],
    images: Tensor,
    tokens: Tensor,
    n_low: int = 0,
    low_patch: int | None = None,
    counts: list[int] | None = None,
    autocast: Autocast = nullcontext,
) -> Tensor:
    """The SigLIP loss of the batch, the first ``n_low`` images at ``low_patch``.

    Multi-resolution encoding is the model's forward (so a DistributedDataParallel wrapper sees
    one forward and overlaps its gradient all-reduce with the backward pass).
    """
    with autocast():
        if isinstance(getattr(model, "module", model), DualEncoder):
            # The run checked its data against the model once: no host sync per step here.
            out = model(images, tokens, n_low=n_low, low_patch_size=low_patch, validate=False)
        else:
            check(n_low == 0, "multi-resolution training needs a jestkit FlexiViT learner")
            out = model(images, tokens)
        img, txt, scale, bias = _unpack(out)
        return loss_fn(img.float(), txt.float(), scale, bias, counts=counts)


def _unpack(out: Any) -> tuple[Tensor, ...]:
    if isinstance(out, dict):  # open_clip with output_dict=True
        return (
            out["image_features"],
            out["text_features"],
            out["logit_scale"],
            out.get("logit_bias"),
        )
    return tuple(out)


def update(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float
) -> float:
    """Backward, clip and step; returns the gradient norm. A non-finite norm skips the step
    (the update would poison every weight): the caller decides what that means for the run."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(
        torch.nn.utils.clip_grad_norm_(
            model.parameters(), grad_clip if grad_clip > 0 else float("inf")
        )
    )
    if math.isfinite(grad_norm):
        optimizer.step()
    return grad_norm


@dataclass
class Reduced:
    """The step's numbers summed over ranks: one small all-reduce."""

    loss: float  # the global loss (the mean of the ranks' losses)
    noisy_chosen: float  # selected examples with a noise label (the data's ground truth)
    noisy_pool: float  # super-batch examples with a noise label
    n_low: int  # examples trained at the low resolution
    stop: bool  # a rank received SIGTERM/SIGINT: every rank checkpoints and stops


def reduce_step(
    world: World,
    loss: Tensor,
    chosen: SuperBatch,
    batch: SuperBatch,
    n_low: int,
    stop_requested: bool,
    device: torch.device,
) -> Reduced:
    """The loss, log counts and any stop request, summed over ranks (identity on one process),
    so every rank takes the same decisions (non-finite loss, stop)."""
    noise = np.asarray(chosen.meta.get("noise", np.array([""] * len(chosen))))
    pool_noise = np.asarray(batch.meta.get("noise", np.array([""] * len(batch))))
    loss_sum, noisy_chosen, noisy_pool, n_low_all, stops = all_sum(
        world,
        [
            loss.item(),
            float((noise != "").sum()),
            float((pool_noise != "").sum()),
            float(n_low),
            float(stop_requested),
        ],
        device,
    )
    return Reduced(
        loss_sum / world.world_size, noisy_chosen, noisy_pool, round(n_low_all), stops > 0
    )


def train_flops(model: Any, b: int, n_low: int, low_patch: int | None) -> int:
    """Training FLOPs of one step on ``b`` examples, ``n_low`` of them at ``low_patch``."""
    full = forward_flops(model)
    low = forward_flops(model, patch_size=low_patch) if low_patch else full
    return 3 * (n_low * low["image"] + (b - n_low) * full["image"] + b * full["text"])


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, embeddings' scale/bias and 1-d parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_" in name else decay).append(p)
    o = cfg.optim
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        foreach=True,  # one fused kernel per parameter group, also on CPU
    )


def lr_at(cfg: RunConfig, step: int) -> float:
    """Linear warmup then cosine decay to `min_lr_ratio * lr`; `step` counts finished updates."""
    o, total = cfg.optim, cfg.train.steps
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
