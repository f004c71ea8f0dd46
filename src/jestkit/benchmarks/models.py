"""Train and score throughput of the tiny model presets on this machine, with FLOP ratios.

    jestkit bench models                 # every CPU-sized preset
    jestkit bench models --quick         # two presets, a few steps (< 30 s)
    python bench/models.py --models vit-tiny-56 --batch-size 1024

train: forward + SigLIP loss + backward + AdamW step on a batch of random uint8 images and
realistic-length captions, at full resolution and (FlexiViTs) multi-resolution: half the batch at
the full-resolution patch size, half at the last (lowest-resolution) one, Flexi-JEST's recipe. score: no-grad image +
text embeddings of a super-batch chunk at each patch size. "speed-up" is measured time relative to
the full-resolution row; "FLOP ratio" is the analytic FLOP ratio for the same rows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from jestkit import rng
from jestkit.flops import forward_flops, train_flops
from jestkit.models import DualEncoder, create_model, list_models

QUICK_MODELS = ("mlp-tiny-56", "vit-tiny-56")
SKIP_BY_DEFAULT = ("vit-b16",)  # GPU-sized


def _fake_batch(model: DualEncoder, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images and captions of 8..24 tokens ending in [EOS] (id 2), padded with 0."""
    g = rng.generator(seed, "bench-models")
    s, c, L = model.image_size, model.in_channels, model.context_length
    images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g)
    tokens = torch.randint(3, model.vocab_size, (n, L), generator=g)
    lengths = torch.randint(min(8, L - 1), min(24, L - 1) + 1, (n, 1), generator=g)
    pos = torch.arange(L)
    tokens = torch.where(pos == lengths, torch.full_like(tokens, 2), tokens)
    tokens = torch.where(pos > lengths, torch.zeros_like(tokens), tokens)
    return images, tokens


def _siglip_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    logits = scale * img @ txt.T + bias
    labels = 2 * torch.eye(len(img), device=img.device) - 1
    return -F.logsigmoid(labels * logits).sum() / len(img)


def _time(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Best-of-``repeats`` seconds per call (the least disturbed by other processes)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_model(
    name: str,
    batch_size: int,
    score_batch_size: int,
    steps: int,
    warmup: int,
    seed: int,
    score_chunk: int = 512,
) -> list[dict]:
    model = create_model(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    images, tokens = _fake_batch(model, max(batch_size, score_batch_size), seed)
    tr_img, tr_tok = images[:batch_size], tokens[:batch_size]
    sizes = model.patch_sizes or (None,)
    rows: list[dict] = []

    def train_step(patches: tuple) -> None:
        opt.zero_grad(set_to_none=True)
        chunks = torch.arange(batch_size).tensor_split(len(patches))
        img = torch.cat(
            [
                model.encode_image(tr_img[i], p, validate=False)
                for i, p in zip(chunks, patches, strict=True)
            ]
        )
        txt = model.encode_text(tr_tok, validate=False)
        _siglip_loss(img, txt, model.logit_scale.exp(), model.logit_bias).backward()
        opt.step()

    variants = [("train", (sizes[0],))]
    if len(sizes) > 1:
        variants.append(("train multi-res", (sizes[0], sizes[-1])))
    full_train = None
    for mode, patches in variants:
        model.train()
        sec = _time(lambda patches=patches: train_step(patches), warmup, steps)
        flops = (
            sum(sum(train_flops(model, p).values()) for p in patches) / len(patches) * batch_size
        )
        full_train = full_train or (sec, flops)
        rows.append(
            _row(
                name,
                mode,
                "+".join(str(p or "-") for p in patches),
                batch_size,
                sec,
                flops,
                full_train,
            )
        )

    model.eval()
    sc_img, sc_tok = images[:score_batch_size], tokens[:score_batch_size]
    full_score = None
    for p in sizes:

        @torch.no_grad()
        def score(p=p) -> None:
            for img, tok in zip(sc_img.split(score_chunk), sc_tok.split(score_chunk), strict=True):
                model.encode_image(img, p, validate=False)
                model.encode_text(tok, validate=False)

        sec = _time(score, warmup, max(2, steps // 2))
        flops = sum(forward_flops(model, p).values()) * score_batch_size
        full_score = full_score or (sec, flops)
        rows.append(_row(name, "score", str(p or "-"), score_batch_size, sec, flops, full_score))
    return rows


def _row(
    name: str, mode: str, patch: str, n: int, sec: float, flops: float, ref: tuple[float, float]
) -> dict:
    return {
        "model": name,
        "mode": mode,
        "patch": patch,
        "batch": n,
        "examples_per_s": n / sec,
        "speedup": ref[0] / sec,
        "flop_ratio": ref[1] / flops,
        "gflops_per_s": flops / sec / 1e9,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", default=None, help="comma-separated presets (default: all but vit-b16)"
    )
    parser.add_argument("--batch-size", type=int, default=512, help="training batch (default 512)")
    parser.add_argument(
        "--score-batch-size",
        type=int,
        default=2048,
        help="examples scored per timing (default 2048)",
    )
    parser.add_argument(
        "--score-chunk",
        type=int,
        default=512,
        help="embed the scored examples in chunks of this size (default 512: activations stay in cache)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)}, few steps (< 30 s)"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")


def run(args: argparse.Namespace) -> int:
    from jestkit.errors import JestkitError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        for n in names:
            if n not in list_models():
                raise JestkitError(
                    f"--models: unknown model {n!r}; known models: {', '.join(list_models())}"
                )
    else:
        names = (
            list(QUICK_MODELS)
            if args.quick
            else [n for n in list_models() if n not in SKIP_BY_DEFAULT]
        )
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    batch, score_batch = (256, 1024) if args.quick else (args.batch_size, args.score_batch_size)
    for key, v in (
        ("--batch-size", batch),
        ("--score-batch-size", score_batch),
        ("--steps", steps),
        ("--score-chunk", args.score_chunk),
    ):
        if v < 1:
            raise JestkitError(f"{key}={v} must be >= 1")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; train batch {batch}; "
        f"score {score_batch} examples in chunks of {args.score_chunk}"
    )
    print(
        f"{'model':<14}{'mode':<17}{'patch':>7}{'ex/s':>10}{'speed-up':>10}{'FLOP ratio':>12}{'GFLOP/s':>9}"
    )
    rows = []
    for name in names:
        for r in bench_model(name, batch, score_batch, steps, warmup, args.seed, args.score_chunk):
            rows.append(r)
            print(
                f"{r['model']:<14}{r['mode']:<17}{r['patch']:>7}{r['examples_per_s']:>10.0f}"
                f"{r['speedup']:>9.2f}x{r['flop_ratio']:>11.2f}x{r['gflops_per_s']:>9.1f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
