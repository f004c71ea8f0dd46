"""One process vs two (torchrun, gloo) at the same global batch, and the cost at the paper's scale.

    jestkit bench distributed                  # quick preset, b = 256, f = 0.8, 60 steps each
    jestkit bench distributed --selection-only --batch-size 1024 4096 --dim 256
    python bench/distributed.py --estimate-only

Three launches of `torchrun -m jestkit.train` on the same config and global batch, one after the
other, timed from their own `metrics.jsonl` (median `step_time` over the steps after warm-up,
evaluation off): 1 process with 1 thread, 1 process with 2 threads, 2 processes with 1 thread
each. Then the selection alone, in 2 gloo processes: sharded joint selection
(:class:`~jestkit.distributed_selection.DistributedSelector`) against one process selecting from
the whole super-batch, side by side in the same workers, and the all-gather it adds.

`--estimate-only` prints the analytic estimate of communication and selection cost per step at
the paper's scale (b = 32k, f = 0.8, 256 devices) without running anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from jestkit.distributed_selection import proposals_per_rank

# The paper's setting (JEST.md section 4; SigLIP ViT-B/16): embedding width, bf16 embeddings.
PAPER = {"b": 32768, "f": 0.8, "devices": 256, "d": 768, "bytes": 2, "n_chunks": 16}


def paper_scale_estimate(
    b: int, f: float, devices: int, d: int, bytes_per: int, n_chunks: int
) -> dict[str, float]:
    """Per-step, per-device volumes and FLOPs of jestkit's distributed selection."""
    n = round(b / (1 - f))
    c = b // n_chunks
    models = 2  # learner + reference
    gather_bytes = n * 2 * d * models * bytes_per * (devices - 1) / devices  # received per device
    # the leaner alternative: only the selected examples' embeddings, chunk by chunk
    selected_bytes = b * 2 * d * models * bytes_per * (devices - 1) / devices
    # (score, index) pairs as 2 float64, received per device over all chunks (no fallback round)
    chunk_bytes = n_chunks * devices * proposals_per_rank(c, devices) * 2 * 8
    # Algorithm 1's conditional-score updates: per model two |C| x d x |U| products (row and
    # column blocks) per chunk, |U| the rank's unselected candidates (about N/P shrinking to
    # (N-b)/P); 2 FLOPs per multiply-add.
    mean_u = (n - b / 2) / devices
    select_flops = n_chunks * models * 2 * c * d * mean_u * 2
    single_flops = select_flops * devices  # one process doing the whole super-batch
    # the learner's train step on its share of the batch, ViT-B/16 at 224 px: ~17.6 GFLOPs image
    # + ~2.9 GFLOPs text forward per example, x3 for forward + backward
    train_flops = b / devices * 3 * (17.6e9 + 2.9e9)
    score_flops = n / devices * (17.6e9 + 2.9e9)  # learner scoring pass, full resolution
    return {
        "super_batch": n,
        "chunk": c,
        "embedding_allgather_MB": gather_bytes / 1e6,
        "selected_only_allgather_MB": selected_bytes / 1e6,
        "chunk_exchange_MB": chunk_bytes / 1e6,
        "selection_GFLOPs_per_device": select_flops / 1e9,
        "selection_GFLOPs_one_device": single_flops / 1e9,
        "train_GFLOPs_per_device": train_flops / 1e9,
        "scoring_GFLOPs_per_device": score_flops / 1e9,
    }


def print_estimate() -> None:
    e = paper_scale_estimate(
        PAPER["b"], PAPER["f"], PAPER["devices"], PAPER["d"], PAPER["bytes"], PAPER["n_chunks"]
    )
    print(
        f"\npaper scale: b={PAPER['b']}, f={PAPER['f']} (N={e['super_batch']}), "
        f"{PAPER['devices']} devices, d={PAPER['d']}, bf16 embeddings, n_chunks={PAPER['n_chunks']}"
    )
    for key, value in e.items():
        print(f"  {key:32s} {value:14.1f}")
    print(
        f"  selection / train FLOPs per device: "
        f"{e['selection_GFLOPs_per_device'] / e['train_GFLOPs_per_device']:.3f}; "
        f"unsharded selection would be {e['selection_GFLOPs_one_device'] / e['train_GFLOPs_per_device']:.1f}x "
        f"the train step"
    )


# ----------------------------------------------------------------------------- training launches


def _launch(cfg: str, out: Path, nproc: int, threads: int, steps: int, extra: list[str]) -> float:
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "jestkit.train",
        "--config",
        cfg,
        "--out",
        str(out),
        f"train.steps={steps}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in rows if "step_time" in r]
    return statistics.median(times[len(times) // 4 :])  # past warm-up


# ----------------------------------------------------------------------------- selection only


def _selection_worker(rank: int, init: str, out: str, n: int, b: int, d: int, reps: int) -> None:
    import torch.distributed as dist

    from jestkit.distributed_selection import DistributedSelector, gather_embeddings
    from jestkit.scoring import Embeddings
    from jestkit.selection import make_selector

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=300),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)

    def emb(scale: float, bias: float) -> Embeddings:
        x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
        y = torch.nn.functional.normalize(x + torch.randn(n, d, generator=g), dim=-1)
        return Embeddings(x, y, scale, bias)

    learner, reference = emb(10.0, -10.0), emb(10.0, -10.0)
    half = torch.arange(rank * n // 2, (rank + 1) * n // 2)
    mine = (learner.index(half), reference.index(half))
    inner = make_selector("jest", n_chunks=16, stats=False)
    sharded = DistributedSelector(inner, rank, 2)
    timings: dict[str, list[float]] = {"one process": [], "2 ranks (sharded)": [], "all-gather": []}
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        idx2, _ = sharded.select(*mine, b, torch.Generator().manual_seed(1), n=n // 2)
        timings["2 ranks (sharded)"].append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        gather_embeddings(mine[0], 2), gather_embeddings(mine[1], 2)
        timings["all-gather"].append(time.perf_counter() - t0)
        dist.barrier()
        if rank == 0:  # rank 1 idles at the barrier meanwhile
            t0 = time.perf_counter()
            idx1, _ = inner.select(learner, reference, b, torch.Generator().manual_seed(1))
            timings["one process"].append(time.perf_counter() - t0)
            assert torch.equal(idx1, idx2), "sharded selection differs from one process"
        dist.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps(timings))
    dist.destroy_process_group()


def _selection(n: int, b: int, d: int, reps: int) -> dict[str, float]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "timings.json")
        mp.spawn(
            _selection_worker,
            args=(os.path.join(tmp, "init"), out, n, b, d, reps),
            nprocs=2,
            join=True,
        )
        timings = json.loads(Path(out).read_text())
    return {k: statistics.median(v) for k, v in timings.items()}


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="quick", help="training preset (default quick)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per launch")
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=[1024, 4096], help="selection: b (several ok)"
    )
    parser.add_argument("--dim", type=int, default=256, help="selection: embedding width")
    parser.add_argument("--selection-only", action="store_true", help="skip the training launches")
    parser.add_argument("--reps", type=int, default=5, help="selection-only repetitions")
    parser.add_argument(
        "--estimate-only", action="store_true", help="only the paper-scale estimate"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for the training launches")


def run(args: argparse.Namespace) -> int:
    if not args.estimate_only:
        print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, gloo")
    if not (args.estimate_only or args.selection_only):
        with tempfile.TemporaryDirectory() as tmp:
            rows = []
            for nproc, threads in ((1, 1), (1, 2), (2, 1)):
                t = _launch(
                    args.config,
                    Path(tmp) / f"p{nproc}t{threads}",
                    nproc,
                    threads,
                    args.steps,
                    list(args.overrides),
                )
                rows.append((f"{nproc} process(es) x {threads} thread(s)", t))
        base = rows[0][1]
        print(f"\ntraining step, config {args.config!r}, same global batch:")
        for name, t in rows:
            print(f"  {name:30s} {t * 1e3:8.1f} ms/step   speed-up vs 1x1 {base / t:5.2f}x")
    if not args.estimate_only:
        for b in args.batch_size:
            n = round(b / 0.2)
            sel = _selection(n, b, args.dim, args.reps)
            one = sel["one process"]
            print(f"\njoint selection alone, N={n}, b={b}, d={args.dim}, n_chunks=16:")
            for name, t in sel.items():
                print(f"  {name:30s} {t * 1e3:8.1f} ms   ratio to one process {t / one:5.2f}")
    print_estimate()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/distributed.py", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
