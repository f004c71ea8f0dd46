"""`jestkit reproduce`: the paper's claims, measured on the embedded real dataset.

    jestkit reproduce --out runs/repro            # the default suite (~30 min on 2 CPU cores)
    jestkit reproduce --quick --out runs/quick    # a 3-minute smoke version
    jestkit reproduce --full --out runs/full      # every ablation, more seeds, the batch-size sweep

The suite prepares the compositional Fashion-MNIST scenes (cached), trains a reference on the
curated split and another on an uncurated sample of the same size, caches both over the pool, then
trains the learner with every method for the same number of steps and several seeds. Each run is
an ordinary `jestkit train` run in `OUT/runs/NAME`; a finished run is never redone, an unfinished
one resumes from its last checkpoint, so an interrupted suite continues where it stopped.
`OUT/report.md`, `report.json` and `plots/` are written at the end (and by `jestkit report OUT`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from jestkit.config import RunConfig, apply_overrides, get_preset, validate
from jestkit.errors import JestkitError, check

TARGET_METRIC = "eval/retrieval_r1"


@dataclass
class RunSpec:
    """One training run of the suite (the fields `jestkit.report` groups and compares by)."""

    name: str
    method: str
    seed: int
    kind: str = "learner"  # learner | reference
    family: str = "mlp"  # runs are only compared within a family (same learner architecture)
    baseline: str | None = "uniform"
    reference: str | None = "reference-curated"
    selection: str = "jest"
    criterion: str = "learnability"
    filter_ratio: float = 0.8
    batch_size: int = 256
    steps: int = 1000
    overrides: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> str:
        return f"runs/{self.name}"


@dataclass(frozen=True)
class SuiteSize:
    seeds: int
    seeds_secondary: int  # seeds for the ablations (criteria, reference data, ViT family)
    steps: int
    vit_steps: int
    reference_steps: int
    pool_size: int
    eval_every: int
    eval_max_examples: int
    vit: bool
    sweeps: bool
    dataset: str = "fashion-scenes"
    model: str = "mlp-tiny-56"
    batch_size: int = 256
    n_chunks: int = 16


SIZES = {
    # Seconds: sklearn digits and tiny batches, for tests of the suite machinery itself.
    "smoke": SuiteSize(
        seeds=1,
        seeds_secondary=1,
        steps=30,
        vit_steps=0,
        reference_steps=30,
        pool_size=1200,
        eval_every=10,
        eval_max_examples=0,
        vit=False,
        sweeps=False,
        dataset="digits",
        model="mlp-tiny-28",
        batch_size=32,
        n_chunks=4,
    ),
    "quick": SuiteSize(
        seeds=1,
        seeds_secondary=1,
        steps=150,
        vit_steps=0,
        reference_steps=150,
        pool_size=20000,
        eval_every=50,
        eval_max_examples=1000,
        vit=False,
        sweeps=False,
    ),
    "default": SuiteSize(
        seeds=3,
        seeds_secondary=2,
        steps=1000,
        vit_steps=500,
        reference_steps=600,
        pool_size=60000,
        eval_every=100,
        eval_max_examples=0,
        vit=True,
        sweeps=False,
    ),
    "full": SuiteSize(
        seeds=5,
        seeds_secondary=3,
        steps=2000,
        vit_steps=1500,
        reference_steps=1000,
        pool_size=60000,
        eval_every=100,
        eval_max_examples=0,
        vit=True,
        sweeps=True,
    ),
}

VIT_MODEL = "vit-tiny-56"


def _jest(f: float, criterion: str = "learnability") -> list[str]:
    return [
        "selection.method=jest",
        f"selection.filter_ratio={f}",
        f"selection.criterion={criterion}",
    ]


def plan_suite(size: SuiteSize, seeds: int | None = None) -> list[RunSpec]:
    """Every run of the suite, references first."""
    n_main = seeds or size.seeds
    n_side = min(n_main, size.seeds_secondary) if seeds is None else seeds
    steps, b = size.steps, size.batch_size
    runs = [
        RunSpec(
            "reference-curated",
            "reference-curated",
            0,
            kind="reference",
            baseline=None,
            reference=None,
            selection="uniform",
            steps=size.reference_steps,
            batch_size=b,
            overrides=["data.train_split=curated", "selection.method=uniform"],
        ),
        RunSpec(
            "reference-uncurated",
            "reference-uncurated",
            0,
            kind="reference",
            baseline=None,
            reference=None,
            selection="uniform",
            steps=size.reference_steps,
            batch_size=b,
            overrides=["data.train_split=uncurated", "selection.method=uniform"],
        ),
    ]

    def learner(method: str, n_seeds: int, selection: str, overrides: list[str], **kw: Any) -> None:
        kw.setdefault("steps", steps)
        kw.setdefault("batch_size", b)
        for seed in range(n_seeds):
            runs.append(
                RunSpec(
                    f"{method}-s{seed}",
                    method,
                    seed,
                    selection=selection,
                    overrides=overrides,
                    **kw,
                )
            )

    learner("uniform", n_main, "uniform", ["selection.method=uniform"], reference=None)
    learner(
        "independent-f0.8",
        n_main,
        "independent",
        ["selection.method=independent", "selection.filter_ratio=0.8"],
    )
    for f in (0.5, 0.8, 0.9):
        learner(f"jest-f{f}", n_main, "jest", _jest(f), filter_ratio=f)
    learner(
        "hard-learner-f0.8", n_side, "jest", _jest(0.8, "hard_learner"), criterion="hard_learner"
    )
    learner(
        "easy-reference-f0.8",
        n_side,
        "jest",
        _jest(0.8, "easy_reference"),
        criterion="easy_reference",
    )
    learner("jest-f0.8-uncurated-ref", n_side, "jest", _jest(0.8), reference="reference-uncurated")

    if size.vit:
        # The MLP text tower: the tiny transformer one learns the captions far slower at this budget.
        vit = [f"model.name={VIT_MODEL}", "model.text_kind=mlp"]
        kw = {"family": "vit", "baseline": "uniform-vit", "steps": size.vit_steps}
        learner(
            "uniform-vit",
            n_side,
            "uniform",
            [*vit, "selection.method=uniform"],
            reference=None,
            **kw,
        )
        learner("jest-f0.8-vit", n_side, "jest", [*vit, *_jest(0.8)], **kw)
        learner(
            "flexi-jest-f0.8",
            n_side,
            "flexi-jest",
            [
                *vit,
                "selection.method=flexi-jest",
                "selection.filter_ratio=0.8",
                "train.multires_fraction=0.5",
            ],
            **kw,
        )

    if size.sweeps:
        for sweep_b in (1024, 2048, 4096):
            sweep_steps = max(
                200, steps * 256 // sweep_b * 2
            )  # more examples per step: fewer steps
            tag = {"sweep": "batch_size", "batch_size": sweep_b}
            for method, sel, ov in (
                (
                    "independent",
                    "independent",
                    ["selection.method=independent", "selection.filter_ratio=0.8"],
                ),
                ("jest", "jest", _jest(0.8)),
                ("uniform", "uniform", ["selection.method=uniform"]),
            ):
                learner(
                    f"{method}-f0.8-b{sweep_b}" if method != "uniform" else f"uniform-b{sweep_b}",
                    n_side,
                    sel,
                    [*ov, f"train.batch_size={sweep_b}"],
                    batch_size=sweep_b,
                    steps=sweep_steps,
                    baseline=f"uniform-b{sweep_b}",
                    family=f"mlp-b{sweep_b}",
                    tags=tag,
                    reference=None if method == "uniform" else "reference-curated",
                )
        tag = {"sweep": "bias_init", "bias_init": 0.0}
        learner(
            "uniform-bias0",
            n_side,
            "uniform",
            ["selection.method=uniform", "model.init_logit_bias=0.0"],
            reference=None,
            baseline="uniform-bias0",
            family="mlp-bias0",
            tags=tag,
        )
        learner(
            "jest-f0.8-bias0",
            n_side,
            "jest",
            [*_jest(0.8), "model.init_logit_bias=0.0"],
            baseline="uniform-bias0",
            family="mlp-bias0",
            tags=tag,
        )
        learner(
            "independent-f0.8-bias0",
            n_side,
            "independent",
            [
                "selection.method=independent",
                "selection.filter_ratio=0.8",
                "model.init_logit_bias=0.0",
            ],
            baseline="uniform-bias0",
            family="mlp-bias0",
            tags=tag,
        )
    return runs


def run_config(spec: RunSpec, size: SuiteSize, suite: Path) -> RunConfig:
    """The RunConfig of one run: the `scenes` preset, the suite's size, the run's overrides."""
    cfg = get_preset("scenes")
    cfg.name = spec.name
    cfg.model.name = size.model
    cfg.data.dataset = size.dataset
    cfg.selection.n_chunks = size.n_chunks
    cfg.data.pool_size = size.pool_size
    cfg.train.seed = spec.seed
    cfg.train.steps = spec.steps
    cfg.train.batch_size = spec.batch_size
    cfg.train.eval_every = size.eval_every
    cfg.train.eval_max_examples = size.eval_max_examples
    cfg.train.checkpoint_every = max(size.eval_every, spec.steps // 4)
    cfg.train.progress = False
    apply_overrides(cfg, spec.overrides)
    if spec.reference is not None:
        cfg.selection.reference = str(suite / "references" / spec.reference)
        cfg.selection.reference_cache = str(suite / "caches" / spec.reference)
    return validate(cfg)


def _finished(run_dir: Path) -> dict[str, Any] | None:
    from jestkit.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = read_metrics(path)
    return rows[-1] if rows and rows[-1].get("final") else None


def _train_one(spec: dict[str, Any], size: dict[str, Any], suite: str, threads: int) -> dict:
    """Worker entry point: one run, resumed if it was interrupted."""
    import torch

    torch.set_num_threads(threads)
    from jestkit.train import train

    spec_, size_ = RunSpec(**spec), SuiteSize(**size)
    cfg = run_config(spec_, size_, Path(suite))
    t0 = time.perf_counter()
    final = train(cfg, Path(suite) / spec_.dir, resume="latest")
    return {"name": spec_.name, "final": final, "seconds": time.perf_counter() - t0}


def _publish_reference(spec: RunSpec, suite: Path, pool_dir: Path) -> None:
    """Export a finished reference run's model and cache it over the pool (both skipped if done)."""
    from jestkit.checkpoint import latest_checkpoint
    from jestkit.data import ReferenceCache
    from jestkit.models import load_pretrained, save_pretrained

    model_dir = suite / "references" / spec.name
    if not (model_dir / "config.json").is_file():
        ckpt = latest_checkpoint(suite / spec.dir)
        check(ckpt is not None, f"reference run {spec.name}: no checkpoint in {suite / spec.dir}")
        model, tokenizer = load_pretrained(ckpt)
        save_pretrained(model_dir, model, tokenizer)
    cache_dir = suite / "caches" / spec.name
    if not (cache_dir / "meta.json").is_file():
        model, tokenizer = load_pretrained(model_dir)
        ReferenceCache.build(model, tokenizer, [pool_dir], cache_dir)


def reproduce(
    out: str | Path,
    mode: str = "default",
    seeds: int | None = None,
    jobs: int | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the suite in `out` and write its report; returns the report dict."""
    from tqdm import tqdm

    from jestkit.data import load_manifest
    from jestkit.report import build_report
    from jestkit.workspace import ensure_dataset, split_dir

    check(mode in SIZES, f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    check(seeds is None or seeds >= 1, f"--seeds must be >= 1, got {seeds}")
    size = SIZES[mode]
    suite = Path(out)
    suite.mkdir(parents=True, exist_ok=True)
    runs = plan_suite(size, seeds)
    if only:
        known = {r.method for r in runs}
        unknown = sorted(set(only) - known)
        check(not unknown, f"--only: unknown methods {unknown}; known: {sorted(known)}")
        needed = {r.reference for r in runs if r.method in only and r.reference}
        runs = [r for r in runs if r.method in only or r.name in needed]
    planned = {
        "target_metric": TARGET_METRIC,
        "mode": mode,
        "size": asdict(size),
        "runs": [{**asdict(r), "dir": r.dir} for r in runs],
    }
    previous = suite / "suite.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        check(
            old.get("mode") == mode and old.get("size") == asdict(size),
            f"--out {str(suite)!r} holds a suite of another size ({old.get('mode')}); "
            f"choose another --out",
        )
        known_runs = {r["name"]: r for r in old["runs"]}
        known_runs.update({r["name"]: r for r in planned["runs"]})
        planned["runs"] = list(known_runs.values())
    previous.write_text(json.dumps(planned, indent=2))

    # The dataset is shared by every run (prepared once, in the cache folder).
    base = run_config(runs[0], size, suite)
    dataset_dir = ensure_dataset(base.data)
    pool_dir = split_dir(dataset_dir, load_manifest(dataset_dir), "pool")

    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo = [r for r in runs if _finished(suite / r.dir) is None]
    done_before = len(runs) - len(todo)
    bar = tqdm(
        total=len(runs), initial=done_before, desc="reproduce", unit="run", dynamic_ncols=True
    )
    t0 = time.perf_counter()
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        # References first: every learner that scores needs one.
        refs = [r for r in todo if r.kind == "reference"]
        futures = [
            pool.submit(_train_one, asdict(r), asdict(size), str(suite), threads) for r in refs
        ]
        for fut in as_completed(futures):
            result = fut.result()
            bar.set_postfix_str(f"{result['name']} {result['seconds']:.0f}s")
            bar.update(1)
        for r in runs:
            if r.kind == "reference":
                _publish_reference(r, suite, pool_dir)
        learners = [r for r in todo if r.kind == "learner"]
        # Longest first keeps both workers busy until the end.
        learners.sort(key=lambda r: -_cost(r))
        futures = [
            pool.submit(_train_one, asdict(r), asdict(size), str(suite), threads) for r in learners
        ]
        for fut in as_completed(futures):
            result = fut.result()
            metric = result["final"].get(TARGET_METRIC)
            bar.set_postfix_str(
                f"{result['name']} R@1={metric:.3f} {result['seconds']:.0f}s"
                if metric is not None
                else result["name"]
            )
            bar.update(1)
    bar.close()
    report = build_report(suite)
    report.setdefault("suite", {})["wall_seconds_this_invocation"] = time.perf_counter() - t0
    print(f"report: {suite / 'report.md'}")
    return report


def _cost(r: RunSpec) -> float:
    """Relative cost of a run, for scheduling: example-forwards per step times steps."""
    n = r.batch_size / (1 - r.filter_ratio) if r.selection != "uniform" else 0
    per_step = 3 * r.batch_size + n
    return per_step * r.steps * (6 if r.family == "vit" else 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--smoke", action="store_true", help="seconds: sklearn digits, to test the suite itself"
    )
    group.add_argument("--quick", action="store_true", help="a 3-minute smoke version")
    group.add_argument(
        "--full",
        action="store_true",
        help="every ablation, more seeds, the batch-size and bias-init sweeps",
    )
    parser.add_argument(
        "--out", default="runs/reproduce", help="suite folder (default: %(default)s)"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per method (default: by size)"
    )
    parser.add_argument("--jobs", type=int, default=None, help="runs in parallel (default: 2)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="run only these methods (and the references they need)",
    )


def run(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full" if args.full else "smoke" if args.smoke else "default"
    report = reproduce(args.out, mode=mode, seeds=args.seeds, jobs=args.jobs, only=args.only)
    for claim in report.get("claims", []):
        mark = "holds" if claim["holds"] else "does not hold"
        print(f"- {claim['claim']}: {claim['measured']} ({mark})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jestkit.reproduce")
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except JestkitError as e:
        print(f"jestkit reproduce: error: {e}", file=sys.stderr)
        sys.exit(2)
