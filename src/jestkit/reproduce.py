"""`jestkit reproduce`: the paper's claims, measured on the embedded real dataset.

    jestkit reproduce --out runs/repro            # the default suite (~35 min on 2 CPU cores)
    jestkit reproduce --quick --out runs/quick    # a 3-minute smoke version
    jestkit reproduce --full --out runs/full      # every ablation, more seeds, the batch-size sweep
    jestkit reproduce --sweeps --out runs/sweeps --reuse runs/classic --jobs 1 --threads 1
                                                  # the batch-size sweep + bias-init ablation only
    jestkit reproduce --full --only 'uniform|jest-f0.8.*' --out runs/full   # a subset (regexes)

The suite prepares the compositional Fashion-MNIST scenes (cached), trains a reference on the
curated split and another on an uncurated sample of the same size, caches both over the pool, then
trains the learner with every method for the same number of steps and several seeds. Each run is
an ordinary `jestkit train` run in `OUT/runs/NAME`; a finished run is never redone, an unfinished
one resumes from its last checkpoint, so an interrupted suite continues where it stopped.
`OUT/report.md`, `report.json` and `plots/` are written at the end (and by `jestkit report OUT`).

`--reuse SUITE` links (symlinks) every finished run of another suite folder whose saved config is
the one this suite would train (reference paths compared by reference name), with the reference
models and caches it used, instead of training it again: the `sweeps` size shares its references
and its bias -10 / b=256 runs with the classic suite (the former default).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from jestkit.config import RunConfig, apply_overrides, config_diff, get_preset, validate
from jestkit.errors import JestkitError, check
from jestkit.metrics import final_record
from jestkit.selection import super_batch_size

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
    eval_every: int = 0  # 0: the suite size's

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
    reference_seeds: int = 1  # seeds per reference (the learners use seed 0; more give a spread)
    main_methods: tuple[str, ...] | None = None  # None: every main method; else only these
    sweep_batch_sizes: tuple[int, ...] = (1024, 2048, 4096)
    sweep_steps: int = 0  # 0: max(200, 2 * steps * batch_size / b) (twice the main examples)
    sweep_eval_every: int = 0  # 0: eval_every
    scorers: bool = False  # the cheap-scoring ablation (jestkit.sources): snapshot and proxy runs
    # The uniform frontier: uniform runs whose whole schedule ends at these fractions of `steps`
    # (`seeds_secondary` seeds), so a speed-up is judged against the best uniform given that many steps.
    frontier: tuple[float, ...] = ()
    # Uniform's learning-rate grid, as multiples of the preset's lr (`seeds_secondary` seeds each;
    # the preset's lr itself is the `uniform` runs). The report states the grid and its pick.
    lr_grid: tuple[float, ...] = ()
    # `key=value` data overrides for every run of the suite (the regime: recipe, near-twin layout,
    # curated size), applied before each run's own overrides.
    data: tuple[str, ...] = ()
    # The ViT family's methods when `vit` (None: uniform-vit, jest-f0.8-vit and flexi-jest-f0.8).
    vit_methods: tuple[str, ...] | None = None
    # Overrides of the ViT family's runs (model size, lr: tuned on uniform-vit only).
    vit_overrides: tuple[str, ...] = ()
    # Arms that separate causes (`seeds_secondary` seeds each, compared with the run they vary):
    # independent selection on row + column scores, n_chunks 1 and 4, and JEST with its joint
    # terms weighted by N_paper / N (an analysis that emulates the paper's super-batch).
    arms: bool = False
    # The reference-strength ablation: a reference trained on each of these curated fractions of
    # the pool, and jest-f0.8 scoring with it (beside the main reference and its learners).
    reference_fractions: tuple[float, ...] = ()


# Fields added after suites were first written: an old suite.json without them used these values.
_SIZE_DEFAULTS = {
    "reference_seeds": 1,
    "main_methods": None,
    "sweep_batch_sizes": [1024, 2048, 4096],
    "sweep_steps": 0,
    "sweep_eval_every": 0,
    "scorers": False,
    "frontier": [],
    "lr_grid": [],
    "data": [],
    "vit_methods": None,
    "vit_overrides": [],
    "arms": False,
    "reference_fractions": [],
}


VIT_MODEL = "vit-tiny-56"
# The ViT family's size, tuned on uniform-vit only (docs/reproduction.md, "The ViT family"):
# 14-pixel patches (16 tokens; Flexi-JEST scores at 28, 4 tokens) and 4 blocks.
VIT_TUNED = ("model.patch_sizes=[14,28]", "model.image_depth=4")
VIT_METHODS = ("uniform-vit", "jest-f0.8-vit", "flexi-jest-f0.8")
# The paper's super-batch at f = 0.8 (b = 32768): the joint-weight arm scales the joint terms by
# its ratio to this suite's, as if each chunk's sums ran over that many more selected examples.
PAPER_SUPER_BATCH = 163840


def regime_data(group_size: int, curated_fraction: float) -> tuple[str, ...]:
    """The paper's regime as data overrides: graded noise over half the pool, every clean scene
    in a layout of ``group_size`` variants, and a curated set of ``curated_fraction`` of the pool."""
    return (
        "data.recipe=graded-web",
        "data.hard_negative_density=0.5",
        f"data.hard_negative_group_size={group_size}",
        "data.hard_negative_edits=layout",
        f"data.curated_fraction={curated_fraction}",
    )


# The paper's regime (docs/reproduction.md, "The paper's regime", states the choices and why,
# written before it ran): layouts of 96 (near-twins in every super-batch of a 60k pool) and a
# curated set 2.5x the classic suite's.
REGIME_DATA = regime_data(96, 0.2)

# The regime on a pool the f = 0.8 learner scores about twice (500 steps x 1,280 over 320k; the
# paper sees its pool about once): layouts grown to the smallest group that still gives an example
# one near-twin per super-batch (503, with pairs and triples of edits), and the regime's 12k
# curated scenes (docs/reproduction.md, "A pool that is not repeated", written before it ran).
UNREPEATED_POOL = 320000
UNREPEATED_DATA = regime_data(503, 0.0375)

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
        frontier=(0.5,),
        lr_grid=(2.0,),
        arms=True,
        reference_fractions=(0.04,),
    ),
    "quick": SuiteSize(
        seeds=1,
        seeds_secondary=1,
        steps=150,
        vit_steps=150,
        reference_steps=150,
        pool_size=10000,
        eval_every=50,
        eval_max_examples=1000,
        vit=True,
        sweeps=False,
        vit_methods=("uniform-vit", "flexi-jest-f0.8"),
        vit_overrides=VIT_TUNED,
    ),
    # The default suite before the regime became it (the web-noise pool with twin pairs), sized
    # for 35 min of 2 cores with the uniform frontier and lr grid: 500 steps, no ViT family.
    "classic": SuiteSize(
        seeds=3,
        seeds_secondary=2,
        steps=500,
        vit_steps=0,
        reference_steps=600,
        pool_size=60000,
        eval_every=50,
        eval_max_examples=0,
        vit=False,
        sweeps=False,
        frontier=(0.25, 0.5, 0.75),
        lr_grid=(0.5, 2.0),
    ),
    # Every ablation, in the paper's regime (the regime's data and reference): hours.
    "full": SuiteSize(
        seeds=5,
        seeds_secondary=3,
        steps=2000,
        vit_steps=1500,
        reference_steps=1500,
        pool_size=60000,
        eval_every=25,
        eval_max_examples=0,
        vit=True,
        sweeps=True,
        reference_seeds=2,
        scorers=True,
        frontier=(0.25, 0.5, 0.75),
        lr_grid=(0.5, 2.0),
        data=REGIME_DATA,
        vit_overrides=VIT_TUNED,
        arms=True,
        reference_fractions=(0.05, 0.1),
    ),
    # The batch-size sweep (b = 256 ... 4096, all at the same number of steps) and the bias-init
    # ablation, with the references and the f=0.8 trio they are compared with. Sized for about
    # 75 minutes of one core; the classic suite's runs are reusable (`--reuse runs/classic`).
    "sweeps": SuiteSize(
        seeds=3,
        seeds_secondary=2,
        steps=1000,
        vit_steps=0,
        reference_steps=600,
        pool_size=60000,
        eval_every=100,
        eval_max_examples=0,
        vit=False,
        sweeps=True,
        reference_seeds=2,
        main_methods=("uniform", "independent-f0.8", "jest-f0.8"),
        sweep_batch_sizes=(256, 1024, 2048, 4096),
        sweep_steps=150,
        sweep_eval_every=25,
    ),
    # Cheap scoring (jestkit.sources) against full-learner scoring: a learner snapshot refreshed
    # every 50 / 200 steps, an online proxy (MLP and ViT learners), with what they are compared
    # with (all reusable from the classic suite).
    "scorers": SuiteSize(
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
        main_methods=("uniform", "jest-f0.8"),
        scorers=True,
        vit_overrides=VIT_TUNED,
    ),
}
# The classic suite in the paper's regime, with a reference trained longer (on the regime's
# larger curated set). Otherwise the classic suite (without its lr grid), for a paired reading.
SIZES["regime"] = dataclasses.replace(
    SIZES["classic"], reference_steps=1500, lr_grid=(), data=REGIME_DATA
)
# The regime suite, its data grown so that the pool is not repeated (the same runs and rules).
SIZES["unrepeated"] = dataclasses.replace(
    SIZES["regime"], pool_size=UNREPEATED_POOL, data=UNREPEATED_DATA
)
# What `jestkit reproduce` and `make demo` run: the unrepeated regime, plus the tuned ViT pair so
# that Flexi-JEST is measured per FLOP (docs/reproduction.md, "The default suite becomes ...").
SIZES["default"] = dataclasses.replace(
    SIZES["unrepeated"],
    vit=True,
    vit_steps=1000,
    vit_methods=("uniform-vit", "flexi-jest-f0.8"),
    vit_overrides=VIT_TUNED,
)
# The `--full` study's causes at the regime suite's scale (500 steps, 2 seeds): the arms, the
# reference-strength ablation and the cheap scorers, with the runs they are compared with
# (docs/reproduction.md, "Arms, reference strength and the per-FLOP answer").
SIZES["arms"] = dataclasses.replace(
    SIZES["regime"],
    seeds=2,
    main_methods=("uniform", "independent-f0.8", "jest-f0.8", "easy-reference-f0.8"),
    arms=True,
    reference_fractions=(0.05, 0.1),
    scorers=True,
    vit=True,
    vit_steps=1000,  # the tuned ViT's uniform reaches 2/3 of the MLP's 500-step R@1 by then
    vit_overrides=VIT_TUNED,
)


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
    runs: list[RunSpec] = []

    def reference(method: str, overrides: list[str], **kw: Any) -> None:
        for seed in range(size.reference_seeds):
            # Seed 0 keeps the plain name: it is the one the learners score with.
            runs.append(
                RunSpec(
                    method + (f"-s{seed}" if seed else ""),
                    method,
                    seed,
                    kind="reference",
                    baseline=None,
                    reference=None,
                    selection="uniform",
                    steps=size.reference_steps,
                    batch_size=b,
                    overrides=[*overrides, "selection.method=uniform"],
                    **kw,
                )
            )

    for data in ("curated", "uncurated"):
        reference(f"reference-{data}", [f"data.train_split={data}"])

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

    def main(method: str, *args: Any, **kw: Any) -> None:
        if size.main_methods is None or method in size.main_methods:
            learner(method, *args, **kw)

    main("uniform", n_main, "uniform", ["selection.method=uniform"], reference=None)
    main(
        "independent-f0.8",
        n_main,
        "independent",
        ["selection.method=independent", "selection.filter_ratio=0.8"],
    )
    for f in (0.5, 0.8, 0.9):
        main(f"jest-f{f}", n_main, "jest", _jest(f), filter_ratio=f)
    main("hard-learner-f0.8", n_side, "jest", _jest(0.8, "hard_learner"), criterion="hard_learner")
    main(
        "easy-reference-f0.8",
        n_side,
        "jest",
        _jest(0.8, "easy_reference"),
        criterion="easy_reference",
    )
    main("jest-f0.8-uncurated-ref", n_side, "jest", _jest(0.8), reference="reference-uncurated")
    if size.main_methods is None or "uniform" in size.main_methods:
        uniform = ["selection.method=uniform"]
        for frac in size.frontier:
            t = max(1, round(steps * frac))
            learner(
                f"uniform-T{t}",
                n_side,
                "uniform",
                uniform,
                reference=None,
                steps=t,
                tags={"sweep": "frontier", "frontier_of": "uniform", "steps": t},
            )
        lr = get_preset("scenes").optim.lr
        for mult in size.lr_grid:
            learner(
                f"uniform-lr{mult:g}x",
                n_side,
                "uniform",
                [*uniform, f"optim.lr={lr * mult:g}"],
                reference=None,
                tags={"sweep": "lr", "lr_of": "uniform", "lr": lr * mult},
            )

    if size.vit:
        # The MLP text tower: the tiny transformer one learns the captions far slower at this budget.
        vit = [f"model.name={VIT_MODEL}", "model.text_kind=mlp", *size.vit_overrides]
        kw = {"family": "vit", "baseline": "uniform-vit", "steps": size.vit_steps}
        trio = {
            "uniform-vit": ("uniform", [*vit, "selection.method=uniform"], {"reference": None}),
            "jest-f0.8-vit": ("jest", [*vit, *_jest(0.8)], {}),
            "flexi-jest-f0.8": (
                "flexi-jest",
                [
                    *vit,
                    "selection.method=flexi-jest",
                    "selection.filter_ratio=0.8",
                    "train.multires_fraction=0.5",
                ],
                {},
            ),
        }
        for method in size.vit_methods or VIT_METHODS:
            selection, overrides, extra = trio[method]
            learner(method, n_side, selection, overrides, **kw, **extra)

    if size.arms:
        # Each arm varies one thing of the run it is compared with (tag `compare`); tagged, so no
        # claim takes it for a main method.
        lam = PAPER_SUPER_BATCH / super_batch_size(b, 0.8)
        independent = ["selection.method=independent", "selection.filter_ratio=0.8"]
        for method, sel, overrides, tags in (
            (
                "independent-f0.8-rowcol",
                "independent",
                [*independent, "selection.score_mode=rowcol"],
                {"arm": "score_mode=rowcol", "compare": "independent-f0.8"},
            ),
            (
                "jest-f0.8-chunks1",
                "jest",
                [*_jest(0.8), "selection.n_chunks=1"],
                {"arm": "n_chunks=1", "compare": "jest-f0.8"},
            ),
            (
                "jest-f0.8-chunks4",
                "jest",
                [*_jest(0.8), "selection.n_chunks=4"],
                {"arm": "n_chunks=4", "compare": "jest-f0.8"},
            ),
            (
                f"jest-f0.8-lambda{lam:g}",
                "jest",
                [*_jest(0.8), f"selection.joint_weight={lam:g}"],
                {
                    "arm": f"joint_weight={lam:g} (N_paper / N: an analysis, not the paper's "
                    "algorithm)",
                    "compare": "jest-f0.8",
                },
            ),
        ):
            learner(method, n_side, sel, overrides, tags={"sweep": "arm", **tags})

    for frac in size.reference_fractions:
        name = f"reference-curated-c{frac:g}"
        reference(
            name,
            ["data.train_split=curated", f"data.curated_fraction={frac:g}"],
            tags={"sweep": "reference_strength", "curated_fraction": frac},
        )
        learner(
            f"jest-f0.8-ref-c{frac:g}",
            n_side,
            "jest",
            _jest(0.8),
            reference=name,
            tags={"sweep": "reference_strength", "curated_fraction": frac, "compare": "jest-f0.8"},
        )

    if size.sweeps:
        # Sweep runs stay in the main family (tagged, so no claim or main plot mixes them in);
        # each batch size has its own uniform baseline.
        for sweep_b in size.sweep_batch_sizes:
            # Default: more examples per step, fewer steps (twice the main runs' examples).
            sweep_steps = size.sweep_steps or max(200, steps * b // sweep_b * 2)
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
                    tags=tag,
                    reference=None if method == "uniform" else "reference-curated",
                    eval_every=size.sweep_eval_every,
                )
        tag = {"sweep": "bias_init", "bias_init": 0.0}
        for method, sel, ov in (
            ("uniform", "uniform", ["selection.method=uniform"]),
            ("jest-f0.8", "jest", _jest(0.8)),
            (
                "independent-f0.8",
                "independent",
                ["selection.method=independent", "selection.filter_ratio=0.8"],
            ),
        ):
            learner(
                f"{method}-bias0",
                n_side,
                sel,
                [*ov, "model.init_logit_bias=0.0"],
                reference=None if sel == "uniform" else "reference-curated",
                baseline="uniform-bias0",
                tags=tag,
            )
    if size.scorers:
        # Tagged like a sweep: compared with jest-f0.8 (same family, steps, b), never in a claim.
        for label, ov in (
            ("refresh50", ["selection.score_refresh=50"]),
            ("refresh200", ["selection.score_refresh=200"]),
            ("proxy", ["selection.scorer=proxy"]),
        ):
            learner(
                f"jest-f0.8-{label}",
                n_side,
                "jest",
                [*_jest(0.8), *ov],
                tags={"sweep": "scorer", "scorer": label, "compare": "jest-f0.8"},
            )
        if size.vit:
            vit = [f"model.name={VIT_MODEL}", "model.text_kind=mlp", *size.vit_overrides]
            learner(
                "jest-f0.8-vit-proxy",
                n_side,
                "jest",
                [*vit, *_jest(0.8), "selection.scorer=proxy"],
                family="vit",
                baseline="uniform-vit",
                steps=size.vit_steps,
                tags={"sweep": "scorer", "scorer": "proxy", "compare": "jest-f0.8-vit"},
            )
    return sorted(runs, key=lambda r: r.kind != "reference")  # stable: references first


def select_runs(runs: list[RunSpec], only: list[str]) -> list[RunSpec]:
    """The runs whose method or name fully matches one of the regexes, plus their references."""
    try:
        patterns = [re.compile(p) for p in only]
    except re.error as e:
        raise JestkitError(f"--only: {e.pattern!r} is not a regular expression ({e})") from None
    for p, raw in zip(patterns, only, strict=True):
        check(
            any(p.fullmatch(r.method) or p.fullmatch(r.name) for r in runs),
            f"--only: {raw!r} matches no run of this suite; methods: "
            f"{sorted({r.method for r in runs})}",
        )
    chosen = [
        r for r in runs if any(p.fullmatch(r.method) or p.fullmatch(r.name) for p in patterns)
    ]
    needed = {r.reference for r in chosen if r.reference}
    return [r for r in runs if r in chosen or r.name in needed]


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
    eval_every = spec.eval_every or size.eval_every
    cfg.train.eval_every = eval_every
    cfg.train.eval_max_examples = size.eval_max_examples
    cfg.train.checkpoint_every = max(eval_every, spec.steps // 4)
    cfg.train.progress = False
    apply_overrides(cfg, [*size.data, *spec.overrides])
    if spec.reference is not None:
        cfg.selection.reference = str(suite / "references" / spec.reference)
        cfg.selection.reference_cache = str(suite / "caches" / spec.reference)
    return validate(cfg)


class _SuiteStopped(Exception):
    """A run came back stopped by a signal (or was not started after one): the suite stops."""


# Set in a pool worker once a SIGTERM/SIGINT reached it: it starts no further run. Without this a
# worker that checkpointed its run on a signal would go on to the runs already queued to it.
_worker_stopping = False
_worker_in_run = False


def _worker_init() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _worker_signal)


def _worker_signal(signum: int, frame: Any) -> None:
    # During a run's training loop train() has its own handler (checkpoint, then return); this one
    # sees a signal between runs, or while a run is being set up, which is then abandoned.
    global _worker_stopping
    _worker_stopping = True
    if _worker_in_run:
        raise KeyboardInterrupt


def _train_one(spec: dict[str, Any], size: dict[str, Any], suite: str, threads: int) -> dict:
    """Worker entry point: one run, resumed if it was interrupted."""
    global _worker_stopping, _worker_in_run
    spec_, size_ = RunSpec(**spec), SuiteSize(**size)
    if _worker_stopping:
        return {"name": spec_.name, "stopped": True, "seconds": 0.0}
    t0 = time.perf_counter()
    _worker_in_run = True
    try:
        import torch

        torch.set_num_threads(threads)
        from jestkit.train import train

        cfg = run_config(spec_, size_, Path(suite))
        final = train(cfg, Path(suite) / spec_.dir, resume="latest")
    finally:
        _worker_in_run = False
    if final.get("interrupted"):
        _worker_stopping = True
    seconds = time.perf_counter() - t0
    return {"name": spec_.name, "final": final, "seconds": seconds, "stopped": _worker_stopping}


def _result(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("stopped"):
        raise _SuiteStopped(result["name"])
    return result


@contextlib.contextmanager
def _stop_on_signals(pool: Executor, bar: Any) -> Iterator[None]:
    """SIGTERM stops the suite as Ctrl-C does, and so does a worker that was signalled: no run
    starts after it, every running run checkpoints and the workers exit, so that the same command
    resumes the suite. (Left to the defaults, a SIGTERM killed only this process, and its workers
    went on training the runs queued to them, beside the suite a user restarts.)"""
    old = None
    with contextlib.suppress(ValueError):  # signals can only be caught in the main thread
        old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    except (KeyboardInterrupt, _SuiteStopped):
        bar.close()
        print(
            "reproduce: stopping: every running run saves a checkpoint; "
            "the same command resumes the suite",
            file=sys.stderr,
        )
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        pool.shutdown(wait=True)
        raise KeyboardInterrupt from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _publish_reference(spec: RunSpec, suite: Path, pool_dir: Path) -> None:
    """Export a finished reference run's model and cache it over the pool (both skipped if done)."""
    from jestkit.stages import cache_reference, export_reference

    model_dir = export_reference(suite / spec.dir, suite / "references" / spec.name)
    cache_reference(model_dir, pool_dir, suite / "caches" / spec.name, verbose=False)


REGIME_FILTER_RATIO = 0.8  # the main comparison's f: the regime is stated at its super-batch


def data_regime(pool_dir: Path, batch_size: int) -> dict[str, Any]:
    """What the pool offers selection, from its metadata: its size, the share that is imperfect
    (by noise kind), and how many near-twins an example meets in a super-batch at the main f."""
    import numpy as np

    from jestkit.data.recipes import near_twins_per_example, twin_group_mates
    from jestkit.data.shards import read_meta

    meta = read_meta(pool_dir)
    columns = set(meta.column_names)
    n = meta.num_rows
    groups = (
        np.asarray(meta.column("hard_negative_group").to_numpy(), dtype=np.int64)
        if "hard_negative_group" in columns
        else np.full(n, -1, np.int64)
    )
    noise = meta.column("noise").to_pylist() if "noise" in columns else []
    counts = collections.Counter(kind for kind in noise if kind)
    big_n = super_batch_size(batch_size, REGIME_FILTER_RATIO)
    return {
        "pool_size": n,
        "imperfect_share": sum(counts.values()) / max(n, 1),
        "noise_share": {k: counts[k] / n for k in sorted(counts)},
        "twin_group_mates": twin_group_mates(groups),
        "batch_size": batch_size,
        "filter_ratio": REGIME_FILTER_RATIO,
        "super_batch": big_n,
        "near_twins_per_example": near_twins_per_example(groups, big_n),
    }


def reproduce(
    out: str | Path,
    mode: str = "default",
    seeds: int | None = None,
    jobs: int | None = None,
    only: list[str] | None = None,
    threads: int | None = None,
    reuse: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or continue) the suite in `out` and write its report; returns the report dict.

    ``only``: regexes over run methods and names (plus the references those runs need);
    ``threads``: torch threads per worker (default: $OMP_NUM_THREADS, else cores / jobs);
    ``reuse``: another suite folder whose matching finished runs are linked, not retrained.
    """
    from tqdm import tqdm

    from jestkit.data import load_manifest
    from jestkit.report import build_report, collect_environment
    from jestkit.stages import ensure_dataset, split_dir

    check(mode in SIZES, f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    check(seeds is None or seeds >= 1, f"--seeds must be >= 1, got {seeds}")
    check(threads is None or threads >= 1, f"--threads must be >= 1, got {threads}")
    size = SIZES[mode]
    suite = Path(out)
    runs = plan_suite(size, seeds)
    if only:
        runs = select_runs(runs, only)
    size_json = _json(asdict(size))
    planned = {
        "target_metric": TARGET_METRIC,
        "final_eval_table": True,  # every eval metric, the near-twin accuracy among them
        "mode": mode,
        "size": size_json,
        "runs": [{**asdict(r), "dir": r.dir} for r in runs],
    }
    previous = suite / "suite.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        what = old.get("mode")
        if what == mode:  # the same name, defined otherwise: e.g. the default before --classic
            what = f"{mode}, as another jestkit version defined it"
        check(
            old.get("mode") == mode and {**_SIZE_DEFAULTS, **old.get("size", {})} == size_json,
            f"--out {str(suite)!r} holds a suite of another size ({what}); choose another --out",
        )
        known_runs = {r["name"]: r for r in old["runs"]}
        known_runs.update({r["name"]: r for r in planned["runs"]})
        planned["runs"] = list(known_runs.values())
    suite.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(planned, indent=2))
    if reuse is not None:
        linked = reuse_runs(runs, size, suite, Path(reuse))
        print(f"reused {len(linked)} finished runs from {reuse}: {', '.join(linked) or 'none'}")

    # The dataset is shared by every run (prepared once, in the cache folder).
    base = run_config(runs[0], size, suite)
    dataset_dir = ensure_dataset(base.data)
    pool_dir = split_dir(dataset_dir, load_manifest(dataset_dir), "pool")

    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or None
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    planned["environment"] = collect_environment(threads_per_run=threads, jobs=jobs)
    planned["regime"] = data_regime(pool_dir, base.train.batch_size)
    previous.write_text(json.dumps(planned, indent=2))  # the report reads it from suite.json
    todo = [r for r in runs if final_record(suite / r.dir) is None]
    done_before = len(runs) - len(todo)
    bar = tqdm(
        total=len(runs), initial=done_before, desc="reproduce", unit="run", dynamic_ncols=True
    )
    t0 = time.perf_counter()
    ctx = get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)
    with pool, _stop_on_signals(pool, bar):
        # References first: every learner that scores needs one.
        refs = [r for r in todo if r.kind == "reference"]
        futures = [
            pool.submit(_train_one, asdict(r), asdict(size), str(suite), threads) for r in refs
        ]
        for fut in as_completed(futures):
            result = _result(fut.result())
            bar.set_postfix_str(f"{result['name']} {result['seconds']:.0f}s")
            bar.update(1)
        used = {r.reference for r in runs if r.reference}
        for r in runs:
            if r.kind == "reference" and r.name in used:
                _publish_reference(r, suite, pool_dir)
        learners = [r for r in todo if r.kind == "learner"]
        # Longest first keeps both workers busy until the end.
        learners.sort(key=lambda r: -_cost(r))
        futures = [
            pool.submit(_train_one, asdict(r), asdict(size), str(suite), threads) for r in learners
        ]
        for fut in as_completed(futures):
            result = _result(fut.result())
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


def _json(obj: Any) -> Any:
    """As it reads back from JSON (tuples become lists), for comparisons with suite.json."""
    return json.loads(json.dumps(obj))


def same_run(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """How a saved config.json differs from `cfg` (empty: the same run).

    Reference and cache folders are compared by name (suites live in different folders); keys
    that may change on resume are ignored; a key the saved config lacks (added to jestkit since)
    matches when `cfg` holds its default.
    """

    folders = (("selection", "reference"), ("selection", "reference_cache"))

    def shown(key: tuple[str, str], value: Any) -> Any:
        return Path(str(value)).name if key in folders else value

    def same_folder(key: tuple[str, str], old: Any, new: Any) -> bool:
        return shown(key, old) == shown(key, new)

    diffs = []
    for key, old, new, missing in config_diff(saved, _json(cfg.to_dict()), same=same_folder):
        k = tuple(key.split("."))
        was = "missing" if missing else repr(shown(k, old))
        diffs.append(f"{key}: {was}, now {shown(k, new)!r}")
    if saved.get("name") != cfg.name:
        diffs.append(f"name: {saved.get('name')!r}, now {cfg.name!r}")
    return diffs


def reuse_runs(runs: list[RunSpec], size: SuiteSize, suite: Path, other: Path) -> list[str]:
    """Symlink into `suite` every finished run of `other` that is the run `suite` would train.

    A reference run brings its exported model and cache along; a learner that scores with a
    reference is reused only if that reference was (so every linked run used the same model).
    """
    check(
        (other / "suite.json").is_file(),
        f"--reuse {str(other)!r}: not a suite folder (no suite.json)",
    )
    other = other.resolve()
    linked = []
    for r in runs:  # references come first
        here, there = suite / r.dir, other / r.dir
        if here.exists() or here.is_symlink() or final_record(there) is None:
            continue
        if (
            r.reference
            and (suite / "runs" / r.reference).resolve() != (other / "runs" / r.reference).resolve()
        ):
            continue
        try:
            saved = json.loads((there / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if same_run(saved, run_config(r, size, suite)):
            continue
        here.parent.mkdir(parents=True, exist_ok=True)
        here.symlink_to(there, target_is_directory=True)
        if r.kind == "reference":
            for folder in ("references", "caches"):
                src, dst = other / folder / r.name, suite / folder / r.name
                if src.is_dir() and not (dst.exists() or dst.is_symlink()):
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.symlink_to(src, target_is_directory=True)
        linked.append(r.name)
    return linked


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
    group.add_argument(
        "--classic",
        action="store_true",
        help="the former default: the web-noise pool with twin pairs, uniform's lr grid, no ViT",
    )
    group.add_argument(
        "--regime",
        action="store_true",
        help="the classic suite in the paper's regime: near-twins in every super-batch, graded "
        "noise, a stronger reference, on a 60k pool (docs/reproduction.md)",
    )
    group.add_argument(
        "--unrepeated",
        action="store_true",
        help="the --regime suite on a 320k pool that its f=0.8 learners score about twice "
        "(layouts of 503 variants keep one near-twin per example in a super-batch)",
    )
    group.add_argument(
        "--arms",
        action="store_true",
        help="the --full study's causes at the regime suite's scale: rowcol, n_chunks 1/4, the "
        "joint-weight analysis, reference strength and the cheap scorers (2 seeds)",
    )
    group.add_argument(
        "--scorers",
        action="store_true",
        help="only the cheap-scoring ablation (snapshot refreshed every 50/200 steps, online "
        "proxy) with the runs it is compared with",
    )
    group.add_argument(
        "--sweeps",
        action="store_true",
        help="only the batch-size sweep (b=256..4096, 150 steps) and the bias-init ablation, "
        "with the references and the f=0.8 runs they are compared with (~75 min of one core)",
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
        metavar="REGEX",
        help="run only the runs whose method or name fully matches one of these regular "
        "expressions (and the references they need), e.g. 'jest-f0.8' or '.*-b4096'",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: $OMP_NUM_THREADS, else cores / jobs)",
    )
    parser.add_argument(
        "--reuse",
        default=None,
        metavar="SUITE",
        help="link the finished runs of another suite folder that this suite would train "
        "identically (e.g. --sweeps --reuse runs/classic), with their references and caches",
    )


def run(args: argparse.Namespace) -> int:
    # Each size but the default has its flag (mutually exclusive).
    mode = next((m for m in SIZES if m != "default" and getattr(args, m, False)), "default")
    report = reproduce(
        args.out,
        mode=mode,
        seeds=args.seeds,
        jobs=args.jobs,
        only=args.only,
        threads=args.threads,
        reuse=args.reuse,
    )
    for claim in report.get("claims", []):
        mark = claim.get("verdict") or ("holds" if claim["holds"] else "does not hold")
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
