"""build_report: a suite folder in, report.json, report.md and plots/*.png out."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jestkit.errors import check
from jestkit.report.claims import Claims, _fmt_opt
from jestkit.report.environment import suite_environment
from jestkit.report.inference import CONFIDENCE, POWER
from jestkit.report.markdown import render_markdown
from jestkit.report.plots import Plotter
from jestkit.report.probe import load_probes
from jestkit.report.stats import (
    FINAL_EVALS,
    arm_comparisons,
    batch_sweep,
    bias_ablation,
    bootstrapping_verdicts,
    compute_answer,
    compute_methods,
    lr_grid,
    reference_strength,
    scorer_ablation,
)
from jestkit.report.suite import DEFAULT_METRIC, Run, load_suite


def build_report(
    suite_dir: str | Path,
    min_seeds: int = 2,
    plots: bool = True,
    final_evals: int | None = None,
) -> dict[str, Any]:
    """Write report.json, report.md and plots/*.png into ``suite_dir``; return the report dict.

    ``min_seeds``: paired seeds a comparison needs before a claim can be decided (a t interval
    needs 2). ``plots=False`` skips the figures (faster; for scripts). ``final_evals``: a run's
    final metric is the mean of its last this many evaluations (default: suite.json's
    ``final_evals``, else 3 for a reproduction and 1 for a suite without claims, whose final
    metric is its last evaluation).
    """
    check(
        isinstance(min_seeds, int) and min_seeds >= 1,
        f"min_seeds must be an int >= 1, got {min_seeds!r}",
    )
    suite_dir = Path(suite_dir)
    suite, runs = load_suite(suite_dir)
    metric = suite.get("target_metric") or DEFAULT_METRIC
    has_claims = suite.get("claims", True) is not False
    if final_evals is None:
        final_evals = suite.get("final_evals") or (FINAL_EVALS if has_claims else 1)
    check(
        isinstance(final_evals, int) and final_evals >= 1,
        f"final_evals must be an int >= 1, got {final_evals!r}",
    )
    methods = compute_methods(runs, metric, final_evals)
    chance_notes = flag_near_chance(methods, suite.get("chance_level"))
    claims_eval = Claims(methods, runs, min_seeds=min_seeds, metric_name=metric.split("/")[-1])
    # A suite that is not a reproduction (e.g. `jestkit pipeline` on a user's data) sets
    # "claims": false: the paper's claims table would only say "not measured".
    claims = claims_eval.evaluate() if has_claims else []
    fam = claims_eval.main_family()
    figures = Plotter(suite_dir / "plots", methods, metric, runs).all() if plots else []

    run_rows = [
        {
            "name": r.name,
            "method": r.method,
            "seed": r.seed,
            "status": r.status,
            "last_step": r.last_step,
            "steps": r.steps,
        }
        for r in runs
    ]
    notes = _notes(runs, methods, metric) + chance_notes
    strength = reference_strength(methods)
    report = {
        "title": str(suite.get("title") or "JEST reproduction report"),
        "final_eval_table": bool(suite.get("final_eval_table", False)),
        "chance_level": suite.get("chance_level"),
        "sections": list(suite.get("sections") or []),
        "target_metric": metric,
        "suite_dir": str(suite_dir),
        "min_seeds": min_seeds,
        "final_evals": final_evals,
        "decision_rule": DECISION_RULE,
        "environment": suite_environment(suite),
        "methods": {
            n: {k: v for k, v in m.items() if not k.startswith("_")} for n, m in methods.items()
        },
        "claims": claims,
        "batch_sweep": batch_sweep(methods, fam),
        "bias_ablation": bias_ablation(methods),
        "scorer_ablation": scorer_ablation(methods),
        "arms": arm_comparisons(methods),
        "reference_strength": strength,
        "bootstrapping": bootstrapping_verdicts(strength, min_seeds) if strength else None,
        "compute": compute_answer(methods, min_seeds) if has_claims else None,
        "lr_grid": lr_grid(methods),
        "regime": data_regime(suite, runs),
        # Written by `python -m jestkit.analysis` into the suite folder, if it was run.
        "probes": load_probes(suite_dir),
        "runs": run_rows,
        "unfinished_runs": [r for r in run_rows if r["status"] != "finished"],
        "plots": [{"file": p.file, "title": p.title, "caption": p.caption} for p in figures],
        "notes": notes,
    }
    report = _clean(report)
    (suite_dir / "report.json").write_text(
        json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    (suite_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def data_regime(suite: dict[str, Any], runs: Sequence[Run]) -> dict[str, Any] | None:
    """suite.json's account of the pool (size, imperfect share, near-twins per example in a
    super-batch), plus how many times each method's learner scored the pool over its run."""
    regime = suite.get("regime")
    if not isinstance(regime, dict) or not regime.get("pool_size"):
        return None
    passes: dict[str, float] = {}
    for run in runs:
        if run.info.get("kind") == "reference":  # trained on the curated split, not the pool
            continue
        seen = next(
            (
                r["super_batch_examples"]
                for r in reversed(run.records)
                if "super_batch_examples" in r
            ),
            None,
        )
        if seen is not None:
            passes[run.method] = max(passes.get(run.method, 0.0), seen / regime["pool_size"])
    return {**regime, "pool_passes": dict(sorted(passes.items()))}


DECISION_RULE = (
    f"Each comparison is paired by seed (seed s of both methods shares initial weights and "
    f"super-batches): the mean of the per-seed differences (final metrics) or of the per-seed "
    f"log ratios (steps, FLOPs, speed-ups; shown as geometric-mean ratios), with a two-sided "
    f"{CONFIDENCE:.0%} t interval over the pairs (Welch's when two methods share fewer than 2 "
    f"seeds). A claim holds when the interval lies beyond its threshold, does not hold when it "
    f"lies short of it, and is undecided when it spans it or has fewer than 2 (min_seeds) pairs. "
    f"MDE = (t_0.975,df + t_{POWER:.2f},df) x SE: the true distance from the threshold detected "
    f"with {POWER:.0%} power (a factor on the ratio scale)."
)


CHANCE_FACTOR = 3.0  # "within a few chance levels": a method that did not learn


def flag_near_chance(methods: dict[str, dict[str, Any]], chance: float | None) -> list[str]:
    """Mark methods whose final metric is within CHANCE_FACTOR x chance (1 / eval size) and drop
    every speed-up measured against such a baseline (a baseline that never learned makes any
    ratio meaningless). Returns notes saying so."""
    if not chance:
        return []
    notes = []
    for name, m in methods.items():
        v = m.get("final_metric")
        m["near_chance"] = v is not None and math.isfinite(v) and v < CHANCE_FACTOR * chance
        if m["near_chance"]:
            notes.append(
                f"method {name} ended at {v:.4f}, within {CHANCE_FACTOR:g} chance levels "
                f"(chance = 1 / eval size = {chance:.4f}): it did not learn measurably"
            )
    for name, m in methods.items():
        base = methods.get(m.get("baseline") or "")
        if base is not None and base is not m and base.get("near_chance"):
            for key in (
                "speedup", "speedup_vs_run_length", "speedup_vs_baseline_saturation",
                "flops_speedup",
            ):  # fmt: skip
                m[key] = None
            vs = m.get("vs_baseline") or {}
            for key in [k for k in vs if "speedup" in k]:
                vs[key] = None
            m["speedup_withheld"] = True
            notes.append(
                f"method {name}: no speed-up is given, its baseline {m['baseline']} is within "
                f"{CHANCE_FACTOR:g} chance levels (train longer: --steps, or the default "
                "length, which trains the baseline until it plateaus)"
            )
    return notes


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _notes(runs: Sequence[Run], methods: dict[str, dict[str, Any]], metric: str) -> list[str]:
    notes = []
    for r in runs:
        if r.status == "partial":
            notes.append(
                f"run {r.name} is unfinished (last logged step {_fmt_opt(r.last_step)} of "
                f"{_fmt_opt(r.steps)}): left out of every statistic"
            )
        elif r.status == "missing":
            notes.append(f"run {r.name} has no metrics.jsonl (not started): left out")
        elif r.status == "no-metric":
            notes.append(
                f"run {r.name} finished without a finite final {metric} (no eval, or diverged): "
                "left out"
            )
    for name, m in sorted(methods.items()):
        if m["baseline"] and m["baseline"] not in methods:
            notes.append(
                f"method {name}: its baseline {m['baseline']!r} has no finished run, so it has "
                "no target"
            )
        if m.get("uses_reference") and m["reference_training_flops"] is None:
            notes.append(
                f"method {name}: its reference {m['reference']!r} has no finished run, so "
                "FLOPs with reference training are unknown"
            )
    for row in lr_grid(methods):
        if not row["baseline_is_pick"]:
            notes.append(
                f"baseline {row['baseline']} (lr {row['baseline_lr']}) is not the best of its "
                f"learning-rate grid: {row['pick']} (lr {row['pick_lr']}) ends higher"
            )
    return notes
