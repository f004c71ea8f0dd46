"""Data pipeline throughput: super-batch loader backends and reference-cache lookups, side by side.

    jestkit bench data                     # fashion-scenes pool of 20k, N = 2560
    jestkit bench data --quick             # a small table (< 30 s)
    python bench/data.py --data DIR/pool --batch-size 5120

Loader rows time ``--batches`` super-batches of N after one warm-up batch (construction, indexing
and worker start-up excluded; they are listed as one-time costs): streaming from the tars with 0
and ``--workers`` DataLoader workers, and the in-memory backend (a gather from the decoded array).
Set-up rows time what a run does with the split before its first step (the in-memory loader, the
tokenizer trained on the captions, every caption tokenised) as the first run on a split does it
(the files derived from the split removed first; with ``--data`` that means yours, which the next
run writes again) and as later runs do (from those files). Cache rows time ``ReferenceCache.lookup`` of random super-batches of N uids (float16 memmap ->
float32 tensors) against a Python dict of per-uid rows, the obvious alternative.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jestkit.config import ModelSpec
from jestkit.data import ReferenceCache, SuperBatchLoader, fashion_available, prepare_dataset
from jestkit.data.shards import build_index
from jestkit.data.uids import int_to_uid
from jestkit.runstate import CaptionTokens, split_tokenizer


def _time_loader(split: Path, n: int, batches: int, **kw: Any) -> tuple[float, float]:
    """(construction seconds, examples/s over ``batches`` super-batches after one warm-up)."""
    t0 = time.perf_counter()
    loader = SuperBatchLoader(split, batch_size=n, seed=0, progress=False, **kw)
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        sb = next(it)
        assert len(sb) == n
    t2 = time.perf_counter()
    del it
    return t1 - t0, batches * n / (t2 - t1)


DERIVED = (".decoded-", ".captions-", ".tokenizer-", ".tokens-")  # beside the index


def _time_setup(split: Path, n: int, first: bool) -> float:
    """Seconds a run spends on the split before its first step; `first`: with nothing derived."""
    if first:
        for p in split.iterdir():
            if p.name.startswith(DERIVED):
                p.unlink()
    spec = ModelSpec()
    t0 = time.perf_counter()
    SuperBatchLoader(split, batch_size=n, seed=0, in_memory=True, progress=False)
    CaptionTokens(split, split_tokenizer(split, spec.vocab_size, spec.context_length))
    return time.perf_counter() - t0


def _time_lookup(
    cache: ReferenceCache, uids: list[str], n: int, repeats: int
) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    batches = [[uids[i] for i in rng.integers(0, len(uids), size=n)] for _ in range(repeats)]
    cache.lookup(batches[0])  # warm the page cache
    t0 = time.perf_counter()
    for b in batches:
        emb = cache.lookup(b)
    fast = repeats * n / (time.perf_counter() - t0)
    assert emb.image.shape == (n, cache.embed_dim)
    table = {u: (cache.image[i], cache.text[i]) for i, u in enumerate(int_to_uid(cache.uids))}
    t0 = time.perf_counter()
    for b in batches:
        rows = [table[u] for u in b]
        torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.float32))
        torch.from_numpy(np.stack([r[1] for r in rows]).astype(np.float32))
    naive = repeats * n / (time.perf_counter() - t0)
    return fast, naive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small table (< 30 s)")
    parser.add_argument(
        "--data", help="an existing split folder to read (default: prepare one in a temp folder)"
    )
    parser.add_argument(
        "--dataset",
        help="dataset to prepare (default fashion-scenes, digits without Fashion-MNIST)",
    )
    parser.add_argument(
        "--pool-size", type=int, help="pool to prepare (default 20000; 6000 with --quick)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="super-batch size N (default 2560; 1024 with --quick)"
    )
    parser.add_argument(
        "--batches", type=int, help="timed super-batches per loader (default 20; 8 with --quick)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers for the streaming row"
    )
    parser.add_argument(
        "--cache-size", type=int, help="entries in the lookup benchmark's cache (default 200000)"
    )
    parser.add_argument(
        "--dim", type=int, default=128, help="embedding width of the cache (default 128)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    quick = args.quick
    n = args.batch_size or (1024 if quick else 2560)
    batches = args.batches or (8 if quick else 20)
    cache_size = args.cache_size or (50_000 if quick else 200_000)
    print(
        f"data benchmark: threads={torch.get_num_threads()} torch={torch.__version__} "
        f"python={platform.python_version()} cpu={platform.machine()} N={n} batches={batches}"
    )
    results: dict[str, Any] = {"batch_size": n, "batches": batches}
    with tempfile.TemporaryDirectory(prefix="jestkit-bench-data-") as tmp:
        if args.data:
            split = Path(args.data)
        else:
            dataset = args.dataset or ("fashion-scenes" if fashion_available() else "digits")
            pool = args.pool_size or (6000 if quick else 20_000)
            t0 = time.perf_counter()
            prepare_dataset(
                dataset,
                Path(tmp) / "ds",
                pool_size=pool,
                eval_size=0,
                zeroshot_size=0,
                curated_fraction=0.0,
                progress=False,
            )
            dt = time.perf_counter() - t0
            split = Path(tmp) / "ds" / "pool"
            results["prepare_examples_per_s"] = pool / dt
            print(f"prepared {dataset} pool of {pool} in {dt:.1f}s ({pool / dt:,.0f} examples/s)")
        t0 = time.perf_counter()
        index = build_index(split, cache=False, progress=False)
        dt = time.perf_counter() - t0
        results["index_examples_per_s"] = len(index) / dt
        print(
            f"validated index of {len(index)} records in {dt:.2f}s ({len(index) / dt:,.0f} records/s, once per split, then cached)"
        )
        build_index(split, progress=False)  # write the cache the loaders below use
        if len(index) < n:
            print(f"error: the split has {len(index)} examples, fewer than N={n}", file=sys.stderr)
            return 2

        rows: list[tuple[str, float, float]] = []
        for name, kw in (
            ("streaming, 0 workers", {"in_memory": False}),
            (
                f"streaming, {args.workers} workers",
                {"in_memory": False, "num_workers": args.workers},
            ),
            ("in-memory", {"in_memory": True}),
        ):
            setup, rate = _time_loader(split, n, batches, **kw)
            rows.append((name, rate, setup))
        base = rows[0][1]
        print(f"\n{'loader':<28} {'examples/s':>12} {'vs streaming-0':>15} {'setup s':>9}")
        for name, rate, setup in rows:
            print(f"{name:<28} {rate:>12,.0f} {rate / base:>14.2f}x {setup:>9.2f}")
        results["loader"] = {
            name: {"examples_per_s": rate, "setup_s": setup} for name, rate, setup in rows
        }

        setup = {"first": [], "later": []}
        for _ in range(2):  # alternated; the best of two each
            for kind in setup:
                setup[kind].append(_time_setup(split, n, first=kind == "first"))
        first, later = min(setup["first"]), min(setup["later"])
        print(f"\n{'run set-up on the split':<28} {'seconds':>12} {'vs first':>15}")
        print(f"{'first run (decode, train)':<28} {first:>12.2f} {1.0:>14.2f}x")
        print(f"{'later runs (derived files)':<28} {later:>12.2f} {first / later:>14.2f}x")
        results["run_setup_s"] = {"first": first, "later": later}

        rng = np.random.default_rng(0)
        ids = np.unique(rng.integers(0, 2**63, size=cache_size, dtype=np.int64).astype(np.uint64))
        emb = rng.standard_normal((2, len(ids), args.dim)).astype(np.float32)
        cache = ReferenceCache.write(Path(tmp) / "cache", ids, emb[0], emb[1], 10.0, -10.0, "bench")
        fast, naive = _time_lookup(cache, int_to_uid(ids), n, repeats=20 if quick else 50)
        print(
            f"\n{'cache lookup (' + str(len(ids)) + ' uids, d=' + str(args.dim) + ')':<28} {'examples/s':>12} {'vs dict':>15}"
        )
        print(f"{'searchsorted + memmap':<28} {fast:>12,.0f} {fast / naive:>14.2f}x")
        print(f"{'python dict of rows':<28} {naive:>12,.0f} {1.0:>14.2f}x")
        results["cache_lookup"] = {
            "entries": len(ids),
            "dim": args.dim,
            "examples_per_s": fast,
            "dict_examples_per_s": naive,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/data.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))
