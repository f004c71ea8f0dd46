"""Analytic FLOPs per example, and the per-run FLOP ledger that comparisons are judged by.

Counting convention (the one of ``torch.utils.flop_counter.FlopCounterMode`` and of the usual
``6 N D`` estimates): only matrix products and convolutions count, a multiply-add is 2 FLOPs.
Attention counts ``QK^T`` and ``AV``. Element-wise work (norms, activations, softmax), embedding
lookups and per-batch constants (the PI-resize of the patch kernel, position-embedding resampling)
are not counted. Training an example costs ``3 x`` its forward FLOPs (forward + backward).

    jestkit flops --model vit-tiny-56          # the table for every patch size
    jestkit flops                              # every registered model at full resolution
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from jestkit.errors import JestkitError
from jestkit.models.dual_encoder import DualEncoder, ModelConfig
from jestkit.models.registry import get_model_config, list_models
from jestkit.models.towers import image_tower, text_tower
from jestkit.models.vit import vit_num_tokens

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)
KINDS = ("learner_train", "learner_score", "reference")


def _config(model_or_config: DualEncoder | ModelConfig | str) -> ModelConfig:
    if isinstance(model_or_config, ModelConfig):
        return model_or_config
    if isinstance(model_or_config, str):
        return get_model_config(model_or_config)
    model = getattr(model_or_config, "module", model_or_config)  # DistributedDataParallel
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        return config
    raise JestkitError(
        f"model_or_config: expected a DualEncoder, ModelConfig or model name, got {type(model_or_config).__name__}"
    )


def num_image_tokens(cfg: ModelConfig, patch_size: int | None = None) -> int:
    """Tokens the image tower's transformer sees (0 for non-ViT towers)."""
    if cfg.image_kind != "vit":
        return 0
    return vit_num_tokens(cfg.image_size, patch_size or cfg.patch_sizes[0], cfg.pooling)


def image_flops(cfg: ModelConfig, patch_size: int | None = None) -> int:
    """Forward FLOPs of the image tower for one image."""
    if patch_size is not None and patch_size not in cfg.patch_sizes:
        if not cfg.patch_sizes:
            raise JestkitError(
                f"patch_size={patch_size!r}: model {cfg.name!r} has no patch sizes (use None)"
            )
        raise JestkitError(
            f"patch_size={patch_size!r} is not one of model {cfg.name!r}'s patch_sizes {cfg.patch_sizes}"
        )
    return image_tower(cfg.image_kind).flops(cfg, patch_size)


def text_flops(cfg: ModelConfig, text_length: int | None = None) -> int:
    """Forward FLOPs of the text tower for one caption of ``text_length`` tokens."""
    length = cfg.context_length if text_length is None else text_length
    if (
        isinstance(length, bool)
        or not isinstance(length, int)
        or not 1 <= length <= cfg.context_length
    ):
        raise JestkitError(
            f"text_length={text_length!r} must be an int in [1, context_length={cfg.context_length}]"
        )
    return text_tower(cfg.text_kind).flops(cfg, length)


def forward_flops(
    model_or_config: DualEncoder | ModelConfig | str,
    patch_size: int | None = None,
    text_length: int | None = None,
) -> dict[str, int]:
    """``{"image": int, "text": int}`` forward FLOPs per example (None = full res / full context)."""
    measured = getattr(model_or_config, "measured_flops", None)
    if measured is not None:  # a user's model (py: factory): no formula, counted by torch
        return measured(patch_size, text_length)
    cfg = _config(model_or_config)
    return {"image": image_flops(cfg, patch_size), "text": text_flops(cfg, text_length)}


def train_flops(
    model_or_config: DualEncoder | ModelConfig | str,
    patch_size: int | None = None,
    text_length: int | None = None,
) -> dict[str, int]:
    """Training FLOPs per example: ``3 x`` forward (forward + backward)."""
    return {
        k: TRAIN_MULTIPLIER * v
        for k, v in forward_flops(model_or_config, patch_size, text_length).items()
    }


def step_flops(
    learner: DualEncoder | ModelConfig | str,
    batch_size: int,
    super_batch_size: int = 0,
    score_patch_size: int | None = None,
    train_patch_sizes: Sequence[int | None] | None = None,
    reference: DualEncoder | ModelConfig | str | None = None,
    text_length: int | None = None,
) -> dict[str, int]:
    """FLOPs of one JEST step, split as the ledger counts them.

    ``learner_train``: the ``batch_size`` selected examples, split evenly over ``train_patch_sizes``
    (multi-resolution training; default full resolution only). ``learner_score``: the learner
    embeds the ``super_batch_size`` candidates at ``score_patch_size`` (0 for uniform training).
    ``reference``: an online reference embeds the super-batch at full resolution; pass
    ``reference=None`` for a cached reference (no inference per step).
    """
    for name, v in (("batch_size", batch_size), ("super_batch_size", super_batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise JestkitError(f"{name}={v!r} must be an int >= 0")
    sizes = list(train_patch_sizes) if train_patch_sizes else [None]
    base, rem = divmod(batch_size, len(sizes))
    train = 0
    for i, p in enumerate(sizes):
        n = base + (i < rem)
        train += n * sum(train_flops(learner, p, text_length).values())
    score = super_batch_size * sum(forward_flops(learner, score_patch_size, text_length).values())
    ref = (
        0
        if reference is None
        else super_batch_size * sum(forward_flops(reference, None, text_length).values())
    )
    return {"learner_train": train, "learner_score": score, "reference": ref}


class FlopLedger:
    """Counts learner training, learner scoring and reference inference FLOPs, per step and in total.

    ``add`` may be called several times for one step (the counts add up); a new step starts a new
    per-step tally. Python ints never overflow, and ``state_dict`` round-trips exactly for resume.
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.current = dict.fromkeys(KINDS, 0)
        self._totals = dict.fromkeys(KINDS, 0)

    def add(
        self, step: int, learner_train: int = 0, learner_score: int = 0, reference: int = 0
    ) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise JestkitError(f"step={step!r} must be an int >= 0")
        if self.step is not None and step < self.step:
            raise JestkitError(f"step={step} is before the ledger's last step {self.step}")
        values = {
            "learner_train": learner_train,
            "learner_score": learner_score,
            "reference": reference,
        }
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != int(v):
                raise JestkitError(f"{k}={v!r} must be a whole number of FLOPs >= 0")
        if step != self.step:
            self.step = step
            self.current = dict.fromkeys(KINDS, 0)
        for k, v in values.items():
            self.current[k] += int(v)
            self._totals[k] += int(v)

    def totals(self) -> dict[str, int]:
        """Totals per kind plus ``"total"`` (training + scoring + reference inference)."""
        return {**self._totals, "total": sum(self._totals.values())}

    def to_dict(self) -> dict[str, int]:
        """Flat metrics: ``flops_step_<kind>``, ``flops_step``, ``flops_total_<kind>``, ``flops_total``."""
        out = {f"flops_step_{k}": v for k, v in self.current.items()}
        out["flops_step"] = sum(self.current.values())
        out.update({f"flops_total_{k}": v for k, v in self._totals.items()})
        out["flops_total"] = sum(self._totals.values())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "current": dict(self.current), "totals": dict(self._totals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            step, current, totals = state["step"], state["current"], state["totals"]
            self.current = {k: int(current[k]) for k in KINDS}
            self._totals = {k: int(totals[k]) for k in KINDS}
        except (KeyError, TypeError, ValueError) as e:
            raise JestkitError(f"FlopLedger state: malformed ({e!r}): {state!r:.200}") from None
        self.step = None if step is None else int(step)

    def __repr__(self) -> str:
        return f"FlopLedger(step={self.step}, totals={self.totals()})"


# ---- CLI ------------------------------------------------------------------------------------
def flops_table(
    name: str, patch_size: int | None = None, text_length: int | None = None
) -> list[dict[str, Any]]:
    """Rows of the ``jestkit flops`` table for one model (every patch size unless one is given)."""
    cfg = get_model_config(name)
    sizes: Sequence[int | None] = (
        [patch_size] if patch_size is not None else (cfg.patch_sizes or [None])
    )
    full = image_flops(cfg, None)
    rows = []
    for p in sizes:
        f = forward_flops(cfg, p, text_length)
        rows.append(
            {
                "model": name,
                "patch_size": p,
                "image_tokens": num_image_tokens(cfg, p),
                "image_flops": f["image"],
                "text_flops": f["text"],
                "forward_flops": f["image"] + f["text"],
                "train_flops": TRAIN_MULTIPLIER * (f["image"] + f["text"]),
                "image_vs_full_res": f["image"] / full,
            }
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="registered model name (default: every model, full res)"
    )
    parser.add_argument(
        "--patch-size", type=int, default=None, help="one patch size (default: all of the model's)"
    )
    parser.add_argument(
        "--text-length", type=int, default=None, help="caption length in tokens (default: context)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        if args.patch_size is not None:
            raise JestkitError(
                f"--patch-size={args.patch_size} needs --model (patch sizes differ per model)"
            )
        rows = [flops_table(n, None, None)[0] for n in list_models()]
    else:
        rows = flops_table(args.model, args.patch_size, args.text_length)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = f"{'model':<14}{'patch':>6}{'tokens':>8}{'image MFLOPs':>14}{'text MFLOPs':>13}{'fwd MFLOPs':>12}{'train MFLOPs':>14}{'img vs full':>13}"
    print("forward/train FLOPs per example (matmuls only, multiply-add = 2; train = 3x forward)")
    print(header)
    for r in rows:
        p = "-" if r["patch_size"] is None else r["patch_size"]
        print(
            f"{r['model']:<14}{p!s:>6}{r['image_tokens']:>8}{r['image_flops'] / 1e6:>14.2f}{r['text_flops'] / 1e6:>13.2f}"
            f"{r['forward_flops'] / 1e6:>12.2f}{r['train_flops'] / 1e6:>14.2f}{r['image_vs_full_res']:>13.3f}"
        )
    return 0
