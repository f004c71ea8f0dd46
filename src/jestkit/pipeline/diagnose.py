"""Will JEST help on this data? A check of the reference before the learners run (#14).

JEST only helps when the reference can tell good pool pairs from bad ones. Measured on samples
of each split (at most ``max_examples``), with the reference alone:

- **pair AUC**: how well its per-example score (minus its sigmoid loss of the pair, the diagonal
  of easy-reference) separates the split's pairs from the same images with shuffled captions
  (0.5 = no better than chance, 1 = perfect). On POOL this is the number that matters: a noisy
  pool's wrong pairs lower it too, but a reference that guides selection stays well above 0.5.
- **retrieval R@1** (mean of image->text and text->image) among the sample, against chance
  (1 / sample size).

On CURATED these are measured on the reference's own training data (an upper bound: what it
fits), on EVAL and POOL on data it never saw. A reference that separates CURATED but not POOL
learned concepts the pool does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

WEAK_AUC = 0.6  # pool pair AUC below this: the reference cannot guide selection
CHANCE_FACTOR = 3.0  # a retrieval metric within this many chance levels is "near chance"


def pair_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(positive score > negative score), ties counting half (Mann-Whitney U / (n m))."""
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average ranks, 1-based
    n, m = len(pos), len(neg)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


@torch.no_grad()
def _embed(model: Any, tokenizer: Any, split_dir: Path, max_examples: int, seed: int):
    from jestkit.data import build_index

    index = build_index(split_dir, progress=False)
    rng = np.random.default_rng(seed)
    n = len(index)
    rows = np.sort(rng.choice(n, size=min(n, max_examples), replace=False))
    device = model.logit_scale.device
    img, txt, caps = [], [], []
    for i in range(0, len(rows), 256):
        images, captions = index.read(rows[i : i + 256])
        img.append(model.encode_image(torch.from_numpy(images).to(device)).float().cpu())
        txt.append(model.encode_text(tokenizer(captions).to(device)).float().cpu())
        caps += captions
    return torch.cat(img), torch.cat(txt), caps


def measure(
    model: Any, tokenizer: Any, split_dir: Path, max_examples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Pair AUC (vs shuffled captions) and retrieval R@1 of the reference on one split."""
    from jestkit.evaluate import retrieval_metrics
    from jestkit.losses import sigmoid_positive_losses

    was = model.training
    model.eval()
    try:
        img, txt, captions = _embed(model, tokenizer, split_dir, max_examples, seed)
    finally:
        model.train(was)
    n = len(img)
    scale = model.logit_scale.detach().float().exp().cpu()
    bias = model.logit_bias.detach().float().cpu()
    pos = -sigmoid_positive_losses(img, txt, scale, bias).numpy()
    shift = np.random.default_rng(seed + 1).integers(1, n) if n > 1 else 0
    neg = -sigmoid_positive_losses(img, txt.roll(int(shift), 0), scale, bias).numpy()
    # Identical captions are true matches: for retrieval (as the evaluator counts them) and
    # left out of the shuffled pairs.
    groups = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)[1]
    neg = neg[groups != np.roll(groups, int(shift))]
    r = retrieval_metrics(img, txt, ks=(1,), caption_groups=torch.from_numpy(groups).long())
    return {
        "n": n,
        "pair_auc": pair_auc(pos, neg) if n > 1 and len(neg) else float("nan"),
        "retrieval_r1": float(r["retrieval_r1"]),
        "chance_r1": 1.0 / max(1, n),
    }


def diagnose(
    model: Any,
    tokenizer: Any,
    splits: dict[str, Path],
    reference: str,
    max_examples: int = 2000,
    seed: int = 0,
    trained_on_curated: bool = True,
) -> dict[str, Any]:
    """Measure the reference on CURATED, EVAL and POOL and give a verdict with what would help.

    ``trained_on_curated=False``: a pretrained reference (CURATED is then unseen data too).
    """
    m = {name: measure(model, tokenizer, d, max_examples, seed) for name, d in splits.items()}
    pool, ev = m["pool"], m["eval"]
    cur = m.get("curated")
    reasons, helps = [], []
    if pool["pair_auc"] < WEAK_AUC:
        reasons.append(
            f"it barely tells POOL's pairs from shuffled ones (pair AUC {pool['pair_auc']:.2f}; "
            "0.5 = chance)"
        )
    if ev["retrieval_r1"] < CHANCE_FACTOR * ev["chance_r1"]:
        reasons.append(
            f"its EVAL retrieval R@1 ({ev['retrieval_r1']:.3f}) is within {CHANCE_FACTOR:g} chance "
            f"levels (1/{ev['n']} = {ev['chance_r1']:.4f})"
        )
    weak = bool(reasons)
    if weak:
        if (
            trained_on_curated
            and cur is not None
            and cur["pair_auc"] >= 0.75
            and cur["pair_auc"] - pool["pair_auc"] > 0.15
        ):
            helps.append(
                f"a curated set that covers POOL's concepts (the reference fits its own CURATED "
                f"data, pair AUC {cur['pair_auc']:.2f}, but not POOL's: it learned other concepts)"
            )
        else:
            helps.append("a curated set that covers POOL's concepts, or more of it")
        helps.append(
            "a stronger or pretrained reference (--reference py:package.module:function, e.g. "
            "an open_clip model; see docs/your-data.md)"
        )
        helps.append(
            "a milder selection: the easy-reference criterion (selection.criterion=easy_reference) "
            "or a lower --filter-ratio"
        )
        verdict = (
            f"The reference ({reference}) is weak on this pool and is unlikely to guide JEST: "
            + "; ".join(reasons)
            + ". Expect JEST to do no better than uniform here."
        )
    else:
        verdict = (
            f"The reference ({reference}) separates POOL's pairs from shuffled ones (pair AUC "
            f"{pool['pair_auc']:.2f}) and retrieves on EVAL above chance (R@1 "
            f"{ev['retrieval_r1']:.3f}, chance {ev['chance_r1']:.4f}): it can guide selection."
        )
    return {
        "weak": weak,
        "verdict": verdict,
        "helps": helps,
        "splits": m,
        "reference": reference,
        "trained_on_curated": trained_on_curated,
    }


def lines(d: dict[str, Any]) -> list[str]:
    """The diagnostic as report lines (markdown)."""
    out = [d["verdict"], ""]
    out += [
        "| split | sample | pair AUC vs shuffled captions | retrieval R@1 | chance R@1 |",
        "|---|---|---|---|---|",
    ]
    what = {
        "curated": "CURATED (its training data)"
        if d.get("trained_on_curated", True)
        else "CURATED",
        "eval": "EVAL (held out)",
        "pool": "POOL (unseen, noisy)",
    }
    for name, s in d["splits"].items():
        out.append(
            f"| {what.get(name, name)} | {s['n']} | {s['pair_auc']:.3f} | "
            f"{s['retrieval_r1']:.3f} | {s['chance_r1']:.4f} |"
        )
    if d["helps"]:
        out += ["", "What would help:"] + [f"- {h}" for h in d["helps"]]
    return out
