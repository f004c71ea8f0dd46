"""Which examples do the joint terms favour? A probe of saved learner checkpoints.

    python -m jestkit.analysis runs/analysis/jest-traj --out runs/sweeps/analysis.json
    python -m jestkit.analysis RUN_DIR [RUN_DIR ...] --batch-sizes 256 1024 4096 --examples 40960

For every kept checkpoint of each run (the learner at that step) and every batch size b, the
probe draws super-batches of N = b / (1 - f) from the run's training pool, embeds them with the
learner, looks the reference up in the run's cache and selects b examples twice from the same
super-batch with the same Gumbel noise: **jest** (joint, blocked Gibbs) and **independent**
(the same criterion's diagonal). Nothing is trained. Per b it reports:

- what each selection holds, by example category: each noise kind of the recipe (ground truth
  from the data's ``noise`` column), ``twin`` (a clean scene whose hard-negative near-twin is in
  the same super-batch, i.e. one the joint terms can act on) and ``clean``;
- twin pairs present in the super-batch, and how often each selector keeps both twins;
- overlaps: jest vs independent with the same noise, against two draws of one selector with
  different noise (how much of a difference is just sampling);
- the joint term of every candidate k given the jest batch S, ``J_k = sum_{i in S, i != k}
  A[i, k] + A[k, i]``, split into its learner and reference parts, averaged per category, next
  to the per-example score ``A[k, k]``: the categories with the largest J are the ones the joint
  terms pull in.

The result is JSON (``analysis.json``); ``jestkit report`` renders it when it sits in the suite
folder. Run dirs need ``config.json`` and checkpoints (``train.keep_checkpoints`` large enough).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jestkit import rng
from jestkit.errors import JestkitError, check
from jestkit.losses import pair_logits, sigmoid_positive_losses
from jestkit.scoring import Embeddings, criterion_weights
from jestkit.selection import make_selector, super_batch_size

CLEAN, TWIN = "clean", "twin"


# ----------------------------------------------------------------------------------------------
# Pure helpers (tested against naive loops)


def categories(noise: Sequence[str], twin_group: Sequence[int] | None) -> np.ndarray:
    """Per example of one super-batch: its noise kind, else ``twin`` if a member of its
    hard-negative group is in the same super-batch, else ``clean``."""
    noise = np.asarray(noise, dtype=object)
    out = np.where(noise == "", CLEAN, noise).astype(object)
    if twin_group is not None:
        g = np.asarray(twin_group, dtype=np.int64)
        grouped = g >= 0
        values, counts = np.unique(g[grouped], return_counts=True)
        paired = set(values[counts > 1].tolist())
        has_twin = np.array([grouped[i] and g[i] in paired for i in range(len(g))], dtype=bool)
        out[has_twin & (noise == "")] = TWIN
    return out


def twin_pairs(twin_group: Sequence[int], selected: Tensor | np.ndarray) -> tuple[int, int, int]:
    """(pairs of twins in the super-batch, pairs with both selected, pairs with exactly one)."""
    g = np.asarray(twin_group, dtype=np.int64)
    chosen = np.zeros(len(g), dtype=bool)
    chosen[np.asarray(selected, dtype=np.int64)] = True
    pairs = both = one = 0
    for value in np.unique(g[g >= 0]):
        members = np.flatnonzero(g == value)
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                pairs += 1
                n = int(chosen[members[a]]) + int(chosen[members[b]])
                both += n == 2
                one += n == 1
    return pairs, both, one


@torch.no_grad()
def joint_terms(
    learner: Embeddings | None,
    reference: Embeddings | None,
    selected: Tensor,
    criterion: str = "learnability",
    chunk: int = 2048,
) -> dict[str, Tensor]:
    """``J_k = sum_{i in S, i != k} A[i, k] + A[k, i]`` for every candidate k, per model part.

    Returns ``{"total": J, "<model>": its weighted part}`` ([N] each); for learnability the parts
    are ``learner`` (+ its negative-pair losses with S) and ``reference`` (- its own). Built in
    column chunks: never an N x N matrix.
    """
    weights = criterion_weights(criterion)
    models = {"learner": learner, "reference": reference}
    s = torch.as_tensor(selected, dtype=torch.long)
    parts: dict[str, Tensor] = {}
    for name, w in weights:
        e = models[name]
        check(e is not None, f"joint_terms: criterion {criterion!r} needs {name} embeddings")
        n = len(e.image)
        s_dev = s.to(e.image.device)
        acc = torch.zeros(n, dtype=torch.float64, device=e.image.device)
        img_s, txt_s = e.image[s_dev], e.text[s_dev]
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            # Every pair (i in S, k) is a negative pair unless i == k (removed below).
            col = torch.nn.functional.softplus(pair_logits(img_s, e.text[lo:hi], e.scale, e.bias))
            row = torch.nn.functional.softplus(pair_logits(e.image[lo:hi], txt_s, e.scale, e.bias))
            acc[lo:hi] += (col.sum(0) + row.sum(1)).double()
        # k in S: drop its own (i == k) entries, which were counted as negatives twice.
        own_neg = torch.nn.functional.softplus((e.scale * (img_s * txt_s).sum(1) + e.bias).double())
        acc[s_dev] -= 2 * own_neg
        parts[name] = w * acc
    parts["total"] = sum(parts.values())
    return parts


def overlap(a: Tensor, b: Tensor) -> float:
    """|a ∩ b| / |a| for two index sets of the same size."""
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa))


# ----------------------------------------------------------------------------------------------
# The probe


def _diag_score(learner: Embeddings, reference: Embeddings, criterion: str) -> Tensor:
    models = {"learner": learner, "reference": reference}
    return sum(
        w
        * sigmoid_positive_losses(models[m].image, models[m].text, models[m].scale, models[m].bias)
        for m, w in criterion_weights(criterion)
    )


@torch.no_grad()
def probe_batch(
    learner: Embeddings,
    reference: Embeddings,
    b: int,
    meta: dict[str, np.ndarray],
    seed: int,
    criterion: str = "learnability",
    n_chunks: int = 16,
) -> dict[str, Any]:
    """Probe one super-batch: both selections, their contents, overlaps and joint terms."""
    jest = make_selector("jest", criterion=criterion, n_chunks=n_chunks)
    indep = make_selector("independent", criterion=criterion)
    n = len(learner.image)

    def g(*keys: Any) -> torch.Generator:
        return rng.generator(seed, "probe", *keys, device=learner.image.device)

    s_j = jest.select(learner, reference, b, g(0))[0].cpu()
    s_i = indep.select(learner, reference, b, g(0))[0].cpu()
    s_j2 = jest.select(learner, reference, b, g(1))[0].cpu()
    s_i2 = indep.select(learner, reference, b, g(1))[0].cpu()
    noise = meta.get("noise", np.array([""] * n))
    groups = meta.get("hard_negative_group")
    cat = categories(noise, groups)
    parts = joint_terms(learner, reference, s_j, criterion)
    diag = _diag_score(learner, reference, criterion).double().cpu()
    out: dict[str, Any] = {
        "overlap_jest_independent": overlap(s_j, s_i),
        "overlap_independent_redraw": overlap(s_i, s_i2),
        "overlap_jest_redraw": overlap(s_j, s_j2),
        "counts": {},
        "joint": {},
        "example_score_std": float(diag.std(correction=0)),
        "joint_term_std": float(parts["total"].cpu().std(correction=0)),
    }
    for name, sel in (("pool", None), ("jest", s_j), ("independent", s_i)):
        c = cat if sel is None else cat[sel.numpy()]
        kinds, counts = np.unique(c.astype(str), return_counts=True)
        out["counts"][name] = dict(zip(kinds.tolist(), counts.tolist(), strict=True))
    for kind in np.unique(cat.astype(str)).tolist():
        mask = torch.from_numpy(cat == kind)
        out["joint"][kind] = {
            "n": int(mask.sum()),
            "example_score": float(diag[mask].sum()),
            **{part: float(v.cpu()[mask].sum()) for part, v in parts.items()},
        }
    if groups is not None:
        pj, bj, oj = twin_pairs(groups, s_j)
        _, bi, oi = twin_pairs(groups, s_i)
        out["twin_pairs"] = {"present": pj, "jest_both": bj, "jest_one": oj}
        out["twin_pairs"] |= {"independent_both": bi, "independent_one": oi}
    return out


def _merge(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum counts over super-batches; average the per-batch ratios."""
    out: dict[str, Any] = {"batches": len(batches)}
    for key in (
        "overlap_jest_independent",
        "overlap_independent_redraw",
        "overlap_jest_redraw",
        "example_score_std",
        "joint_term_std",
    ):
        out[key] = float(np.mean([x[key] for x in batches]))
    kinds = sorted({k for x in batches for c in x["counts"].values() for k in c})
    shares: dict[str, dict[str, float]] = {}
    for name in ("pool", "jest", "independent"):
        total = sum(sum(x["counts"][name].values()) for x in batches)
        shares[name] = {k: sum(x["counts"][name].get(k, 0) for x in batches) / total for k in kinds}
    out["share"] = shares
    joint: dict[str, dict[str, float]] = {}
    for k in kinds:
        n = sum(x["joint"].get(k, {}).get("n", 0) for x in batches)
        if not n:
            continue
        fields = [f for f in batches[0]["joint"][next(iter(batches[0]["joint"]))] if f != "n"]
        joint[k] = {"n": n} | {
            f: sum(x["joint"].get(k, {}).get(f, 0.0) for x in batches) / n for f in fields
        }
    out["joint_mean"] = joint
    if "twin_pairs" in batches[0]:
        out["twin_pairs"] = {
            k: sum(x["twin_pairs"][k] for x in batches) for k in batches[0]["twin_pairs"]
        }
    return out


def probe_checkpoint(
    checkpoint: Path,
    pool_dir: Path,
    cache: Any,
    batch_sizes: Sequence[int],
    filter_ratio: float = 0.8,
    examples: int = 40960,
    criterion: str = "learnability",
    n_chunks: int = 16,
    seed: int = 0,
    score_chunk: int = 256,
    exclude: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Probe one learner checkpoint at each batch size over about ``examples`` pool examples.

    ``exclude``: noise kinds removed from every super-batch (another data regime, same pool):
    super-batches are drawn twice as large and the first N remaining examples kept, so f is
    unchanged.
    """

    from jestkit.checkpoint import load_checkpoint
    from jestkit.data import SuperBatchLoader
    from jestkit.models.embed import embed

    model, tokenizer, _ = load_checkpoint(checkpoint)
    model.eval()
    device = torch.device("cpu")
    results = []
    drop = set(exclude)
    for b in batch_sizes:
        n = super_batch_size(b, filter_ratio)
        draw = n if not drop else 2 * n
        loader = iter(SuperBatchLoader(pool_dir, batch_size=draw, seed=seed + 1, in_memory=True))
        batches = []
        for i in range(max(1, examples // n)):
            sb = next(loader)
            if drop:
                noise = np.asarray(sb.meta.get("noise", np.array([""] * len(sb))))
                keep = np.flatnonzero(~np.isin(noise, list(drop)))
                check(
                    len(keep) >= n,
                    f"--exclude {sorted(drop)}: fewer than {n} examples left in a draw of {draw}",
                )
                sb = sb.index(keep[:n])
            learner = embed(
                model, sb.images, tokenizer(sb.captions), device=device, chunk=score_chunk
            )
            reference = cache.lookup(sb.uids, device=device)
            batches.append(
                probe_batch(
                    learner, reference, b, sb.meta, seed + 1000 * b + i, criterion, n_chunks
                )
            )
        results.append({"b": b, "n": n, **_merge(batches)})
    return results


def analyse_runs(
    run_dirs: Sequence[str | Path],
    batch_sizes: Sequence[int] = (256, 1024, 4096),
    examples: int = 40960,
    steps: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """The probe over every kept checkpoint (or those at ``steps``) of each run."""
    from jestkit.checkpoint import checkpoint_step, list_checkpoints

    check(len(run_dirs) > 0, "analysis: give at least one run folder")
    for b in batch_sizes:
        check(int(b) > 0, f"--batch-sizes: {b} is not a positive batch size")
    check(examples > 0, f"--examples must be > 0, got {examples}")
    out: dict[str, Any] = {
        "batch_sizes": list(batch_sizes),
        "examples_per_batch_size": examples,
        "seed": seed,
        "exclude": sorted(exclude),
        "runs": [],
    }
    for run_dir in map(Path, run_dirs):
        cfg, pool_dir, cache = _run_context(run_dir)
        sel = cfg.selection
        ckpts = list_checkpoints(run_dir)
        if steps:
            ckpts = [c for c in ckpts if checkpoint_step(c) in set(steps)]
        check(bool(ckpts), f"analysis: no checkpoint to probe in {str(run_dir)!r}")
        entry = {
            "run": str(run_dir),
            "name": cfg.name,
            "method": sel.method,
            "batch_size": cfg.train.batch_size,
            "filter_ratio": sel.filter_ratio,
            "criterion": sel.criterion,
            "checkpoints": [],
        }
        for ckpt in ckpts:
            t0 = time.perf_counter()
            step = checkpoint_step(ckpt)
            by_b = probe_checkpoint(
                ckpt,
                pool_dir,
                cache,
                batch_sizes,
                sel.filter_ratio,
                examples,
                sel.criterion,
                sel.n_chunks,
                seed,
                exclude=exclude,
            )
            entry["checkpoints"].append({"step": step, "by_b": by_b})
            if progress:
                print(
                    f"{run_dir.name} step {step}: {time.perf_counter() - t0:.0f}s", file=sys.stderr
                )
        out["runs"].append(entry)
    return out


def _run_context(run_dir: Path) -> tuple[Any, Path, Any]:
    """(config, training split folder, reference cache) of a run folder."""
    from jestkit.config import RunConfig
    from jestkit.data import ReferenceCache, load_manifest
    from jestkit.stages import (
        ensure_dataset,
        ensure_reference,
        ensure_reference_cache,
        split_dir,
    )

    path = run_dir / "config.json"
    check(path.is_file(), f"analysis: run folder {str(run_dir)!r} has no config.json")
    saved = json.loads(path.read_text())
    # A run written by an older jestkit may carry keys since removed: they cannot matter here.
    known = RunConfig().to_dict()
    for section, values in saved.items():
        if isinstance(values, dict) and isinstance(known.get(section), dict):
            for key in sorted(set(values) - set(known[section])):
                print(f"{path}: ignoring the obsolete key {section}.{key}", file=sys.stderr)
                del values[key]
    cfg = RunConfig.from_dict(saved)
    dataset_dir = ensure_dataset(cfg.data, verbose=False, model=cfg.model)
    cache_dir = cfg.selection.reference_cache
    if not cache_dir:  # the automatic reference of the embedded data: the run's own
        from jestkit.train import train

        ref_dir = ensure_reference(cfg, dataset_dir, fit=train, verbose=False)
        cache_dir = str(ensure_reference_cache(cfg, ref_dir, dataset_dir, verbose=False))
    check(
        cache_dir != "online" and Path(cache_dir).is_dir(),
        f"{path}: selection.reference_cache={cache_dir!r} is not a cache folder",
    )
    pool_dir = split_dir(dataset_dir, load_manifest(dataset_dir), cfg.data.train_split)
    return cfg, pool_dir, ReferenceCache.open(cache_dir)


def scorer_agreement(
    run_dir: str | Path, examples: int = 12800, seed: int = 0, steps: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """How a cheap scorer's selection agrees with the full learner's, per kept checkpoint.

    For a run scored by a proxy (``selection.scorer=proxy``): the proxy saved in each checkpoint
    against that checkpoint's learner. For any other run: each earlier kept checkpoint's learner
    (a snapshot that is ``staleness`` steps old, what ``score_refresh`` scores with) against the
    later one. Both select from the same super-batches with the same noise; ``overlap_redraw``
    (the live learner with other noise) is the floor a perfect scorer would reach.
    """

    from jestkit.checkpoint import checkpoint_step, list_checkpoints, load_checkpoint
    from jestkit.data import SuperBatchLoader
    from jestkit.models.embed import embed
    from jestkit.sources import learner_source

    run_dir = Path(run_dir)
    cfg, pool_dir, cache = _run_context(run_dir)
    s = cfg.selection
    check(s.method in ("jest", "flexi-jest"), f"{run_dir}: not a jest run ({s.method!r})")
    ckpts = [(checkpoint_step(c), c) for c in list_checkpoints(run_dir)]
    if steps:
        ckpts = [(st, c) for st, c in ckpts if st in set(steps)]
    check(bool(ckpts), f"analysis: no checkpoint to probe in {str(run_dir)!r}")
    device = torch.device("cpu")
    b, n = cfg.train.batch_size, cfg.super_batch_size
    selector = make_selector("jest", criterion=s.criterion, n_chunks=s.n_chunks)
    patch = s.score_patch_size or None
    models = {st: load_checkpoint(c) for st, c in ckpts}
    rows = []
    for st, (model, tokenizer, state) in models.items():
        model.eval()
        if s.scorer == "proxy":
            proxy = learner_source(
                cfg, model, lambda sb, tok=tokenizer: tok(sb.captions), None, state.get("scorer")
            )
            alts = [("proxy", None, proxy)]
        else:
            alts = [(f"snapshot {st - old} steps old", st - old, m[0]) for old, m in models.items()]
            alts = [a for a in alts if a[1] and a[1] > 0]
        loader = iter(SuperBatchLoader(pool_dir, batch_size=n, seed=seed + 1, in_memory=True))
        batches = [next(loader) for _ in range(max(1, examples // n))]

        def emb_of(m: Any, sb: Any, tok: Any = tokenizer) -> Embeddings:
            return embed(m, sb.images, tok(sb.captions), patch_size=patch, device=device, chunk=256)

        live = [emb_of(model, sb) for sb in batches]
        refs = [cache.lookup(sb.uids, device=device) for sb in batches]
        for label, staleness, alt in alts:
            acc: dict[str, list[float]] = {}
            for i, sb in enumerate(batches):
                alt_emb = alt.embeddings(sb, st)[0] if label == "proxy" else emb_of(alt, sb)
                g = rng.generator(seed, "agreement", st, i)
                s_live = selector.select(live[i], refs[i], b, g)[0]
                g = rng.generator(seed, "agreement", st, i)
                s_alt = selector.select(alt_emb, refs[i], b, g)[0]
                s_redraw = selector.select(
                    live[i], refs[i], b, rng.generator(seed, "agreement-redraw", st, i)
                )[0]
                noisy = np.asarray(sb.meta.get("noise", np.array([""] * len(sb)))) != ""
                for key, value in (
                    ("overlap", overlap(s_alt, s_live)),
                    ("overlap_redraw", overlap(s_redraw, s_live)),
                    ("noisy_live", float(noisy[s_live.numpy()].mean())),
                    ("noisy_scorer", float(noisy[s_alt.numpy()].mean())),
                    ("noisy_pool", float(noisy.mean())),
                ):
                    acc.setdefault(key, []).append(value)
            rows.append(
                {
                    "run": str(run_dir),
                    "step": st,
                    "scorer": label,
                    "staleness": staleness,
                    "batches": len(batches),
                    **{k: float(np.mean(v)) for k, v in acc.items()},
                }
            )
    return rows


def time_scorers(
    run_dir: str | Path, steps: int = 240, refresh: Sequence[int] = (50, 200), seed: int = 0
) -> list[dict[str, Any]]:
    """Wall time and FLOPs per step of each scorer, side by side in one process.

    From a run's latest checkpoint, ``steps`` super-batches are drawn as the run would draw
    them; each step times, in rotating order, the live learner's scoring pass, a snapshot scorer
    per ``refresh`` (its uid cache warming up and emptying as in a run) and the proxy (scoring
    plus its training step on a random b-subset, standing in for the selection), and one learner
    training step on b examples for scale. The learner is not updated (so a snapshot never goes
    stale: only its cost is measured here). Mean over steps (a snapshot's cost is uneven within
    its window).
    """

    from jestkit.checkpoint import latest_checkpoint, load_checkpoint
    from jestkit.config import RunConfig
    from jestkit.data import SuperBatchLoader
    from jestkit.losses import SigLipLoss
    from jestkit.runstate import CaptionTokens
    from jestkit.sources import LearnerSource, ProxySource, SnapshotSource, learner_source
    from jestkit.step import forward_loss, update

    run_dir = Path(run_dir)
    cfg, pool_dir, _ = _run_context(run_dir)
    check(steps >= 1, f"--steps must be >= 1, got {steps}")
    ckpt = latest_checkpoint(run_dir)
    check(ckpt is not None, f"analysis: no checkpoint in {str(run_dir)!r}")
    model, tokenizer, _ = load_checkpoint(ckpt)
    patch = cfg.selection.score_patch_size or None
    b, n = cfg.train.batch_size, cfg.super_batch_size
    chunk = cfg.selection.score_batch_size
    tokens_of = CaptionTokens(pool_dir, tokenizer)  # the loop's fast path: tokenised once

    def tokenize(x: Any) -> Tensor:
        return tokens_of(x.uids)

    sources: dict[str, LearnerSource] = {"learner": LearnerSource(model, tokenize, patch, chunk)}
    for k in refresh:
        sources[f"snapshot k={k}"] = SnapshotSource(model, tokenize, patch, chunk, refresh=int(k))
    proxy_cfg = RunConfig.from_dict(cfg.to_dict())
    proxy_cfg.selection.scorer = "proxy"
    proxy_cfg.selection.score_refresh = 1
    proxy = learner_source(proxy_cfg, model, tokenize, patch)
    assert isinstance(proxy, ProxySource)
    sources["proxy"] = proxy
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the model stays put
    loader = iter(SuperBatchLoader(pool_dir, batch_size=n, seed=seed, in_memory=True))
    names = [*sources, "train step"]
    spent = {k: 0.0 for k in names}
    flops = {k: 0 for k in names}
    gen = np.random.default_rng(seed)

    for step in range(steps):
        sb = next(loader)
        chosen = sb.index(np.sort(gen.choice(n, size=b, replace=False)))
        order = names[step % len(names) :] + names[: step % len(names)]
        for name in order:
            t0 = time.perf_counter()
            if name == "train step":
                model.train()  # the trainer's step (one process, full resolution)
                loss = forward_loss(model, SigLipLoss(), chosen.images, tokenize(chosen))
                update(model, optimizer, loss, cfg.optim.grad_clip)
            else:
                source = sources[name]
                flops[name] += source.embeddings(sb, step)[1]
                flops[name] += source.observe(chosen, step)
            spent[name] += time.perf_counter() - t0
    train_ms = 1000 * spent["train step"] / steps
    return [
        {
            "scorer": name,
            "ms_per_step": 1000 * spent[name] / steps,
            "vs_learner_scoring": spent[name] / spent["learner"],
            "vs_train_step": 1000 * spent[name] / steps / train_ms,
            "flops_per_step": flops[name] / steps if name != "train step" else None,
            "steps": steps,
            "b": b,
            "n": n,
        }
        for name in names
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jestkit.analysis", description=__doc__.splitlines()[0]
    )
    parser.add_argument("runs", nargs="+", help="run folders with config.json and checkpoints")
    parser.add_argument("--out", required=True, help="analysis.json to write")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument(
        "--examples", type=int, default=40960, help="pool examples drawn per batch size"
    )
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="checkpoint steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        metavar="NOISE_KIND",
        help="drop these noise kinds from every super-batch (another data regime, same pool)",
    )
    parser.add_argument(
        "--scorers",
        action="store_true",
        help="instead: how cheap scorers' selections agree with the full learner's "
        "(proxy runs: the saved proxy; other runs: older checkpoints as stale snapshots)",
    )
    parser.add_argument(
        "--time-scorers",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead: time every scorer side by side over this many steps of the run's data",
    )
    args = parser.parse_args(argv)
    try:
        if args.time_scorers:
            result = {
                "scorer_timing": [
                    {"run": run, **row}
                    for run in args.runs
                    for row in time_scorers(run, args.time_scorers, seed=args.seed)
                ]
            }
        elif args.scorers:
            result = {
                "scorer_agreement": [
                    row
                    for run in args.runs
                    for row in scorer_agreement(run, args.examples, args.seed, args.steps)
                ]
            }
        else:
            result = analyse_runs(
                args.runs,
                args.batch_sizes,
                args.examples,
                args.steps,
                args.seed,
                exclude=args.exclude,
            )
    except JestkitError as e:
        print(f"jestkit analysis: error: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
