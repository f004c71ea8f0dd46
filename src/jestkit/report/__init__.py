"""The reproduction report: a finished (or half-finished) suite folder in, numbers and plots out.

    jestkit report runs/demo                 # writes runs/demo/report.{json,md} and runs/demo/plots/
    jestkit report runs/demo --min-seeds 3   # a claim needs >= 3 paired seeds to be decided

``build_report(suite_dir)`` reads ``suite.json`` (the runs and their method, seed, family,
baseline, reference...) and every run's ``metrics.jsonl``; it never trains or evaluates anything.
Every number in the report is computed from those files; a run without its final line is listed
as unfinished and left out of every statistic; a claim whose runs are missing is "not measured".

Definitions (also in docs/reproduction.md):

- final metric of a run: the mean of its last ``final_evals`` evaluations (default 3).
- target of a method's seed s: its baseline's seed-s final metric (paired seeds share initial
  weights and super-batches); ``target`` is the mean over the baseline's seeds.
- steps-to-target: per seed, where the metric first reaches the target, interpolated linearly
  between evaluations; the column is the upper median over seeds. FLOPs and examples likewise.
- speed-up: per seed, the baseline's steps to the target / the method's, where the baseline's are
  the least of its run length, the step at which it first reached its own final, and where a
  frontier run (the baseline with a shorter schedule) reached it: a baseline that saturates
  early cannot flatter a method. Geometric mean over seeds with a 95% t interval.
- every comparison (``inference``): paired mean difference over seeds, 95% t interval, n, MDE;
  claims are holds / does not hold / undecided (``holds`` true / false / null).

Layout: ``suite`` loads the suite folder, ``inference`` holds the interval and verdict rules,
``environment`` what a suite ran on, ``stats`` computes the per-method numbers (and the
sweep, bias-init and cheap-scoring ablations), ``claims`` judges JEST.md §5's claims, ``plots``
draws the figures, ``probe`` reads and renders the `jestkit.analysis` probe files found in the
suite folder, ``markdown`` renders report.md and ``build`` ties them together; this module
re-exports the public names and holds the CLI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jestkit.report.build import build_report
from jestkit.report.claims import THRESHOLDS, Claims, Threshold
from jestkit.report.environment import collect_environment
from jestkit.report.inference import compare, decide, t_quantile
from jestkit.report.markdown import render_markdown
from jestkit.report.plots import Plot, Plotter
from jestkit.report.probe import load_probes
from jestkit.report.stats import (
    FINAL_EVALS,
    INF,
    REACH_RTOL,
    arm_comparisons,
    batch_sweep,
    bias_ablation,
    bootstrapping_verdicts,
    compute_answer,
    compute_methods,
    eval_points,
    final_value,
    first_reach,
    gap,
    lr_grid,
    mean_std,
    median_high,
    median_step_time,
    per_step_flops,
    reach,
    reference_strength,
    scorer_ablation,
    selection_diagnostics,
    uses_reference,
)
from jestkit.report.suite import DEFAULT_METRIC, Run, load_suite

__all__ = [
    "DEFAULT_METRIC",
    "FINAL_EVALS",
    "INF",
    "REACH_RTOL",
    "THRESHOLDS",
    "Claims",
    "Plot",
    "Plotter",
    "Run",
    "Threshold",
    "add_arguments",
    "arm_comparisons",
    "batch_sweep",
    "bias_ablation",
    "bootstrapping_verdicts",
    "build_report",
    "collect_environment",
    "compare",
    "compute_answer",
    "compute_methods",
    "decide",
    "eval_points",
    "final_value",
    "first_reach",
    "gap",
    "load_probes",
    "load_suite",
    "lr_grid",
    "mean_std",
    "median_high",
    "median_step_time",
    "per_step_flops",
    "reach",
    "reference_strength",
    "render_markdown",
    "run",
    "scorer_ablation",
    "selection_diagnostics",
    "t_quantile",
    "uses_reference",
]

# ----------------------------------------------------------------------------------------------
# CLI: `jestkit report SUITE_DIR`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite_dir", help="a suite folder written by `jestkit reproduce`")
    parser.add_argument(
        "--min-seeds",
        type=int,
        default=2,
        help="paired seeds a comparison needs before a claim can be decided (default 2)",
    )
    parser.add_argument(
        "--final-evals",
        type=int,
        default=None,
        help="a run's final metric is the mean of its last N evaluations (default: the "
        "suite's final_evals, else 3; 1 for a suite without claims)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def run(args: argparse.Namespace) -> int:
    report = build_report(
        args.suite_dir,
        min_seeds=args.min_seeds,
        plots=not args.no_plots,
        final_evals=args.final_evals,
    )
    out = Path(args.suite_dir)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(report['plots'])} plots")
    for c in report["claims"]:
        print(f"  [{c['id']:>2}] {c['verdict']:<13} {c['claim']}")
    return 0
