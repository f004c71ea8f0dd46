"""The reproduction report: a finished (or half-finished) suite folder in, numbers and plots out.

    jestkit report runs/demo                 # writes runs/demo/report.{json,md} and runs/demo/plots/
    jestkit report runs/demo --min-seeds 3   # a claim needs >= 3 finished seeds per method to hold

``build_report(suite_dir)`` reads ``suite.json`` (the runs and their method, seed, family,
baseline, reference...) and every run's ``metrics.jsonl``; it never trains or evaluates anything.
Every number in the report is computed from those files; a run without its final line is listed
as unfinished and left out of every statistic; a claim whose runs are missing is "not measured".

Definitions (also in docs/reproduction.md):

- target of a method: its baseline's final metric, averaged over the baseline's finished seeds.
- steps-to-target: per seed, the first *evaluated* step whose metric is >= the target; the
  report gives the upper median over seeds (an observed step; a seed that never reaches counts
  as +inf, so a median that lands on such a seed is null). FLOPs- and examples-to-target likewise.
- speed-up: the baseline's run length in steps / steps-to-target (the paper's "reaches the final
  quality of uniform in 1/3 of the steps"); also relative to the step at which the baseline first
  reached its own final metric (each seed its own final value; upper median over seeds), since a
  baseline that saturates early flatters every ratio.
- spread: the sample standard deviation over seeds (n - 1; 0 for a single seed).

Layout: ``suite`` loads the suite folder, ``stats`` computes the per-method numbers (and the
sweep, bias-init and cheap-scoring ablations), ``claims`` judges JEST.md §5's claims, ``plots``
draws the figures, ``probe`` reads and renders the `jestkit.analysis` probe files found in the
suite folder, ``markdown`` renders report.md and ``build`` ties them together; this module
re-exports the public names and holds the CLI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jestkit.report.build import build_report
from jestkit.report.claims import Claims
from jestkit.report.markdown import render_markdown
from jestkit.report.plots import Plot, Plotter
from jestkit.report.probe import load_probes
from jestkit.report.stats import (
    INF,
    REACH_RTOL,
    batch_sweep,
    bias_ablation,
    compute_methods,
    eval_points,
    first_reach,
    gap,
    mean_std,
    median_high,
    median_step_time,
    per_step_flops,
    scorer_ablation,
    selection_diagnostics,
)
from jestkit.report.suite import DEFAULT_METRIC, Run, load_suite

__all__ = [
    "DEFAULT_METRIC",
    "INF",
    "REACH_RTOL",
    "Claims",
    "Plot",
    "Plotter",
    "Run",
    "add_arguments",
    "batch_sweep",
    "bias_ablation",
    "build_report",
    "compute_methods",
    "eval_points",
    "first_reach",
    "gap",
    "load_probes",
    "load_suite",
    "mean_std",
    "median_high",
    "median_step_time",
    "per_step_flops",
    "render_markdown",
    "run",
    "scorer_ablation",
    "selection_diagnostics",
]

# ----------------------------------------------------------------------------------------------
# CLI: `jestkit report SUITE_DIR`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite_dir", help="a suite folder written by `jestkit reproduce`")
    parser.add_argument(
        "--min-seeds",
        type=int,
        default=2,
        help="finished seeds each compared method needs before a claim can hold (default 2)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def run(args: argparse.Namespace) -> int:
    report = build_report(args.suite_dir, min_seeds=args.min_seeds, plots=not args.no_plots)
    out = Path(args.suite_dir)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(report['plots'])} plots")
    for c in report["claims"]:
        verdict = "holds" if c["holds"] else c["status"] if c["status"] != "measured" else "no"
        print(f"  [{c['id']:>2}] {verdict:<12} {c['claim']}")
    return 0
