"""Per-step overhead of a jest / flexi-jest step over a uniform step, next to the FLOP model.

    jestkit bench overhead                     # mlp-tiny-56 and vit-tiny-56, b = 256, f = 0.8
    jestkit bench overhead --quick             # fewer repetitions (< 30 s)
    python bench/overhead.py --models vit-tiny-56 --batch-size 1024 --device cuda

One process, one learner per model, and the three kinds of step the training loop takes, timed in
interleaved repetitions (the order rotates every repetition, so drift and other processes hit all
of them alike):

- uniform:    draw b examples, train on them (full resolution).
- jest:       draw N = b / (1 - f), embed them with the learner (no grad, full resolution), look
              the reference up in a ``ReferenceCache`` (built in memory from a reference model of
              the same architecture), select b with the jest selector, train on them.
- flexi-jest: the same, but embed at the lowest-resolution patch size and train half the batch
              there (FlexiViT models only).

The building blocks are the loop's: ``jestkit.models.embed.embed``, ``jestkit.step.forward_loss`` / ``update``, ``jestkit.selection.make_selector``,
``jestkit.losses.siglip_loss``, ``ReferenceCache.lookup``, AdamW with gradient clipping. The FLOP
model's ratio comes from ``jestkit.flops.step_flops`` (uniform ``3F·b``; jest with a cached
reference ``3F·b + F·N``; flexi-jest with low-resolution ``F``). The measured ratio is the median
over repetitions of (method step time / the same repetition's uniform step time).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from jestkit import rng
from jestkit.data import ReferenceCache, int_to_uid
from jestkit.errors import JestkitError
from jestkit.flops import step_flops
from jestkit.losses import SigLipLoss
from jestkit.models import DualEncoder, create_model, list_models
from jestkit.models.embed import embed
from jestkit.scoring import Embeddings
from jestkit.selection import make_selector, super_batch_size
from jestkit.step import forward_loss, update

DEFAULT_MODELS = ("mlp-tiny-56", "vit-tiny-56")
PHASES = ("draw", "score", "lookup", "select", "train")
TOLERANCE = 0.25  # the target: measured ratio within 25% of the FLOP model's


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Pool:
    """An in-memory pool of random examples with uids, like the loader's in-memory split."""

    def __init__(self, model: DualEncoder, n: int, seed: int):
        g = rng.generator(seed, "bench-overhead-pool")
        s, c, length = model.image_size, model.in_channels, model.context_length
        self.images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g)
        tokens = torch.randint(3, model.vocab_size, (n, length), generator=g)
        lengths = torch.randint(min(8, length - 1), min(24, length - 1) + 1, (n, 1), generator=g)
        pos = torch.arange(length)
        tokens = torch.where(pos == lengths, torch.full_like(tokens, 2), tokens)  # [EOS]
        self.tokens = torch.where(pos > lengths, torch.zeros_like(tokens), tokens)
        ids = rng.np_generator(seed, "bench-overhead-uids").choice(2**62, size=n, replace=False)
        self.uids = int_to_uid(ids.astype(np.uint64))
        self.g = rng.np_generator(seed, "bench-overhead-draws")

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        idx = self.g.choice(len(self.uids), size=n, replace=False)
        t = torch.from_numpy(idx)
        return self.images[t], self.tokens[t], [self.uids[i] for i in idx]


def build_cache(reference: DualEncoder, pool: Pool, device: torch.device) -> ReferenceCache:
    """A ReferenceCache over the pool, in memory (the real one is the same arrays, memory-mapped)."""
    chunks = []
    for i in range(0, len(pool.uids), 1024):
        e = embed(reference, pool.images[i : i + 1024], pool.tokens[i : i + 1024], device=device)
        chunks.append(e)
    image = torch.cat([e.image for e in chunks]).cpu().numpy().astype(np.float16)
    text = torch.cat([e.text for e in chunks]).cpu().numpy().astype(np.float16)
    ids = np.frombuffer(bytes.fromhex("".join(pool.uids)), dtype=">u8").astype(np.uint64)
    order = np.argsort(ids)
    meta = {
        "scale": float(torch.as_tensor(chunks[0].scale).detach()),
        "bias": float(torch.as_tensor(chunks[0].bias).detach()),
        "embed_dim": image.shape[1],
    }
    return ReferenceCache(Path("<in-memory>"), ids[order], image[order], text[order], meta)


class Stepper:
    """The loop's three kinds of step on one learner; each returns its phases' seconds."""

    def __init__(self, args: argparse.Namespace, name: str, device: torch.device):
        self.device = device
        self.b = args.batch_size
        self.n = super_batch_size(args.batch_size, args.filter_ratio)
        torch.manual_seed(rng.derive_seed(args.seed, "bench-overhead", name))  # as train.py does
        self.model = create_model(name).to(device).train()
        reference = create_model(name).to(device).eval()
        self.low = self.model.patch_sizes[-1] if len(self.model.patch_sizes) > 1 else None
        self.pool = Pool(self.model, max(4 * self.n, 4096), args.seed)
        self.cache = build_cache(reference, self.pool, device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        self.loss_fn = SigLipLoss()
        self.jest = make_selector("jest", criterion="learnability", n_chunks=args.n_chunks)
        self.uniform = make_selector("uniform")
        self.seed = args.seed
        self.score_chunk = args.score_chunk
        self.calls = 0

    def methods(self) -> list[str]:
        return ["uniform", "jest"] + (["flexi-jest"] if self.low is not None else [])

    def flop_model(self) -> dict[str, float]:
        """FLOPs per step of each method (cached reference: no reference inference per step)."""
        f = {
            "uniform": step_flops(self.model, self.b),
            "jest": step_flops(self.model, self.b, self.n),
        }
        if self.low is not None:
            f["flexi-jest"] = step_flops(
                self.model,
                self.b,
                self.n,
                score_patch_size=self.low,
                train_patch_sizes=[None, self.low],
            )
        return {k: float(sum(v.values())) for k, v in f.items()}

    def step(self, method: str) -> dict[str, float]:
        times: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(phase: str) -> None:
            _sync(self.device)
            now = time.perf_counter()
            times[phase] = now - clock[0]
            clock[0] = now

        self.calls += 1
        gen = rng.generator(self.seed, "select", self.calls, device=self.device)
        scoring = method != "uniform"
        images, tokens, uids = self.pool.draw(self.n if scoring else self.b)
        lap("draw")
        if scoring:
            patch = self.low if method == "flexi-jest" else None
            learner = self.score(images, tokens, patch)
            lap("score")
            reference = self.cache.lookup(uids, device=self.device)
            lap("lookup")
            idx, _ = self.jest.select(learner, reference, self.b, gen)
            idx = idx.sort().values.cpu()
            images, tokens = images[idx], tokens[idx]
        else:
            idx, _ = self.uniform.select(None, None, self.b, gen, n=self.b)
        lap("select")
        n_low = self.b // 2 if method == "flexi-jest" else 0
        self.train(images.to(self.device), tokens.to(self.device), n_low)
        lap("train")
        times["total"] = sum(times.values())
        return times

    def score(self, images: torch.Tensor, tokens: torch.Tensor, patch: int | None) -> Embeddings:
        """The loop's no-grad scoring pass (one call), or ``--score-chunk`` examples per call."""
        return embed(
            self.model, images, tokens, patch_size=patch, device=self.device,
            chunk=self.score_chunk, validate=False,
        )  # fmt: skip

    def train(self, images: torch.Tensor, tokens: torch.Tensor, n_low: int) -> None:
        """The trainer's own step (jestkit.step): forward and loss, then the update."""
        loss = forward_loss(self.model, self.loss_fn, images, tokens, n_low, self.low)
        update(self.model, self.opt, loss, grad_clip=1.0)


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    stepper = Stepper(args, name, device)
    methods = stepper.methods()
    for _ in range(args.warmup):
        for m in methods:
            stepper.step(m)
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(args.repeats):
        order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
        got = {m: stepper.step(m) for m in order}
        for m in methods:
            samples[m].append(got[m])
            ratios[m].append(got[m]["total"] / got["uniform"]["total"])
    flops = stepper.flop_model()
    rows = []
    for m in methods:
        predicted = flops[m] / flops["uniform"]
        measured = statistics.median(ratios[m])
        rows.append(
            {
                "model": name,
                "method": m,
                "batch_size": stepper.b,
                "super_batch_size": stepper.n if m != "uniform" else stepper.b,
                "median_ms": 1e3 * statistics.median(s["total"] for s in samples[m]),
                "phases_ms": {
                    p: 1e3 * statistics.median(s.get(p, 0.0) for s in samples[m]) for p in PHASES
                },
                "measured_ratio": measured,
                "flop_ratio": predicted,
                "flops_per_step": flops[m],
                "rel_diff": measured / predicted - 1.0,
                "within_tolerance": abs(measured / predicted - 1.0) <= TOLERANCE,
            }
        )
    # The FLOP model's other assumption: training an example costs 3x its forward pass.
    jest = next(r for r in rows if r["method"] == "jest")
    per_train = jest["phases_ms"]["train"] / jest["batch_size"]
    per_score = jest["phases_ms"]["score"] / jest["super_batch_size"]
    for r in rows:
        r["train_over_forward"] = per_train / per_score if per_score > 0 else None
    return rows


HEADER = (
    f"{'model':<13}{'method':<12}{'N':>6}{'median ms':>11}{'measured':>10}{'FLOP model':>12}"
    f"{'rel diff':>10}  {'<=25%':<6}| ms: {'draw':>6}{'score':>7}{'lookup':>7}{'select':>7}{'train':>7}"
)


def _fmt(r: dict) -> str:
    p = r["phases_ms"]
    return (
        f"{r['model']:<13}{r['method']:<12}{r['super_batch_size']:>6}{r['median_ms']:>11.1f}"
        f"{r['measured_ratio']:>9.2f}x{r['flop_ratio']:>11.2f}x{r['rel_diff']:>+10.0%}  "
        f"{'yes' if r['within_tolerance'] else 'NO':<6}|     "
        + "".join(f"{p[k]:>{6 if k == 'draw' else 7}.1f}" for k in PHASES)
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated model presets (default {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="training batch b (default 256)"
    )
    parser.add_argument("--filter-ratio", type=float, default=0.8, help="f (default 0.8)")
    parser.add_argument("--n-chunks", type=int, default=16)
    parser.add_argument(
        "--score-chunk",
        type=int,
        default=0,
        help="embed the super-batch this many examples per call (default 0: one call, as the loop)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--quick", action="store_true", help="6 repetitions, 1 warm-up (< 30 s)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in list_models():
            raise JestkitError(f"--models: unknown model {n!r}; known: {', '.join(list_models())}")
    if args.quick:
        args.repeats, args.warmup = 6, 1
    for key, v, lo in (
        ("--repeats", args.repeats, 1),
        ("--warmup", args.warmup, 0),
        ("--score-chunk", args.score_chunk, 0),
    ):
        if v < lo:
            raise JestkitError(f"{key}={v} must be >= {lo}")
    if args.batch_size < 1 or args.batch_size % args.n_chunks:
        raise JestkitError(
            f"--batch-size={args.batch_size} must be >= 1 and divisible by --n-chunks={args.n_chunks}"
        )
    super_batch_size(args.batch_size, args.filter_ratio)  # validates f
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise JestkitError(f"--device={args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JestkitError(f"--device={args.device!r}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"per-step overhead: device={device} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} python={platform.python_version()} b={args.batch_size} "
        f"f={args.filter_ratio} n_chunks={args.n_chunks} repeats={args.repeats} (interleaved) "
        f"score_chunk={args.score_chunk or 'all'} "
        "reference=cached float32 compute"
    )
    print(
        "measured = median over repetitions of (step time / that repetition's uniform step time); "
        "FLOP model = jestkit.flops.step_flops ratio; rel diff = measured / FLOP model - 1"
    )
    print(HEADER)
    rows = []
    implied = {}
    for name in names:
        for r in bench_model(name, args, device):
            rows.append(r)
            print(_fmt(r), flush=True)
            implied[name] = r["train_over_forward"]
    print(
        "measured train step / no-grad forward, per example (the FLOP model assumes 3.0): "
        + ", ".join(f"{n} {v:.2f}" for n, v in implied.items() if v is not None)
    )
    print(
        "The FLOP model counts matrix products only: it leaves out selection (the chunked Gibbs "
        "sampler's O(N·b·d) sums, top-k, sorting), the reference-cache lookup (uid hashing, "
        "gather, fp16->fp32), drawing and indexing the super-batch, element-wise work, the "
        "optimizer update and Python overhead. Those dominate when the towers are tiny."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": str(device), "threads": torch.get_num_threads(), "rows": rows},
                f,
                indent=1,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/overhead.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(sys.argv[1:] if argv is None else argv))
    except JestkitError as e:
        print(f"bench/overhead.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
