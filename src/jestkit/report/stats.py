"""Per-method statistics: finals, targets, steps-to-target, speed-ups, costs, joint-independent gaps.

The definitions are in the package docstring (``jestkit.report``) and docs/reproduction.md.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from jestkit.errors import JestkitError, check
from jestkit.flops import KINDS
from jestkit.report.inference import PAIRED, all_of, censor, compare, decide
from jestkit.report.suite import Run, _finite
from jestkit.scoring import criterion_weights

REACH_RTOL = 1e-9  # "reached" tolerates float rounding of the baseline's mean
FINAL_EVALS = 3  # the final metric: mean of this many last evaluations
INF = math.inf

# ----------------------------------------------------------------------------------------------
# Pure helpers (tested against hand computations)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for one value)."""
    check(len(values) > 0, "mean_std: no values")
    mean = math.fsum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def median_high(values: Iterable[float | None]) -> float | None:
    """Upper median with None as +inf (never reached); None if the median is +inf."""
    vals = [INF if v is None else v for v in values]
    if not vals:
        return None
    m = statistics.median_high(vals)
    return None if m == INF else m


def eval_points(records: Sequence[dict[str, Any]], metric: str) -> list[dict[str, float]]:
    """Evaluated steps of a run in step order: step, value, examples seen, total FLOPs.

    The final line repeats the last evaluation and is dropped as a duplicate. The step-0 line
    (before training) has no counters: 0 examples and 0 FLOPs.
    """
    points: dict[int, dict[str, float]] = {}
    for r in records:
        step = r.get("step")
        if metric not in r or not isinstance(step, int) or step in points:
            continue
        points[step] = {
            "step": step,
            "value": _finite(r[metric]),
            "examples": _finite(r.get("examples_seen", 0 if step == 0 else None)),
            "flops": _finite(r.get("flops/total", 0 if step == 0 else None)),
        }
    return [points[s] for s in sorted(points)]


def first_reach(points: Sequence[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first evaluated point whose value reaches ``target`` (None if none does)."""
    threshold = target - REACH_RTOL * max(1.0, abs(target))
    for p in points:
        if not math.isnan(p["value"]) and p["value"] >= threshold:
            return p
    return None


def reach(points: Sequence[dict[str, float]], target: float) -> dict[str, float] | None:
    """Where a run first reaches ``target``, linearly interpolated between evaluations.

    Step, examples and FLOPs at the crossing between the last evaluation below the target and the
    first one at or above it (a coarse eval grid would otherwise round every speed-up to a ratio
    of grid steps). None if no evaluation reaches it.
    """
    threshold = target - REACH_RTOL * max(1.0, abs(target))
    prev: dict[str, float] | None = None
    for p in points:
        v = p["value"]
        if math.isnan(v):
            continue
        if v >= threshold:
            if prev is None or v == prev["value"]:
                return {k: p[k] for k in ("step", "examples", "flops")}
            w = min(1.0, max(0.0, (target - prev["value"]) / (v - prev["value"])))
            return {k: prev[k] + w * (p[k] - prev[k]) for k in ("step", "examples", "flops")}
        prev = p
    return None


def final_value(points: Sequence[dict[str, float]], last: int) -> float:
    """A run's final metric: the mean of its last ``last`` evaluations after step 0.

    One noisy evaluation then does not decide a target or a comparison. A run evaluated only
    at step 0 falls back to that evaluation.
    """
    vals = [p["value"] for p in points if p["step"] > 0 and not math.isnan(p["value"])]
    if not vals:
        vals = [p["value"] for p in points if not math.isnan(p["value"])]
    if not vals:
        return math.nan
    tail = vals[-last:]
    return math.fsum(tail) / len(tail)


def uses_reference(info: dict[str, Any]) -> bool:
    """Whether a run's selection reads its reference (so its training FLOPs are charged to it).

    Uniform never does; hard-learner scores with the learner alone, whatever reference the
    suite names for it.
    """
    if not info.get("reference") or (info.get("selection") or "uniform") == "uniform":
        return False
    crit = info.get("criterion") or "learnability"
    try:
        return any(name == "reference" for name, _ in criterion_weights(crit))
    except (JestkitError, KeyError):
        return True  # an unknown criterion: charge the reference rather than flatter the run


def per_step_flops(run: Run) -> float | None:
    """FLOPs of one training step, from the ledger's totals (one-off reference cache excluded)."""
    lines = [r for r in run.step_lines() if "flops/total" in r]
    if len(lines) < 2 or lines[-1]["step"] == lines[0]["step"]:
        return None
    a, b = lines[0], lines[-1]
    return (_finite(b["flops/total"]) - _finite(a["flops/total"])) / (b["step"] - a["step"])


def median_step_time(run: Run) -> float | None:
    times = [_finite(r.get("step_time")) for r in run.step_lines()]
    times = [t for t in times if not math.isnan(t)]
    return statistics.median(times) if times else None


# ----------------------------------------------------------------------------------------------
# Per-method statistics


def _method_info(runs: Sequence[Run]) -> dict[str, Any]:
    """Attributes of a method (from its first run's suite entry)."""
    keys = (
        "kind",
        "family",
        "baseline",
        "reference",
        "selection",
        "criterion",
        "filter_ratio",
        "batch_size",
        "steps",
        "tags",
    )
    info = {k: runs[0].info.get(k) for k in keys}
    info["kind"] = info["kind"] or "learner"
    info["family"] = info["family"] or "default"
    info["tags"] = info["tags"] or {}
    return info


def frontier_of(info: dict[str, Any]) -> str | None:
    """The baseline method a run is a frontier point of (tag ``frontier_of``), else None.

    A frontier run is the baseline trained with its whole learning-rate schedule compressed into
    fewer steps (``steps`` = where its schedule ends): the best the baseline does *given* that
    many steps, which a baseline whose schedule ends later understates at that step.
    """
    tags = info.get("tags") or {}
    return tags.get("frontier_of") or None


def compute_methods(
    runs: Sequence[Run], metric: str, final_evals: int = FINAL_EVALS
) -> dict[str, dict[str, Any]]:
    """Every method with at least one finished run: finals, targets, speed-ups, costs.

    Everything relative to the baseline is paired by seed: seed s's target is the baseline's
    seed-s final metric (the baseline's mean final when it has no seed s), and the baseline's
    steps (FLOPs) to that target are the least of its run length (total FLOPs), the step (FLOPs)
    at which its seed s itself first reached it, and where any of its frontier runs (tag
    ``frontier_of``; the same seed when there is one) first reached it.
    """
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    baselines_used = {r.info.get("baseline") for r in runs} - {None}
    frontier: dict[str, list[Run]] = {}
    for run in runs:
        if run.status == "finished" and frontier_of(run.info):
            frontier.setdefault(str(frontier_of(run.info)), []).append(run)
    points = {r.name: eval_points(r.records, metric) for r in runs if r.status == "finished"}

    # Pass 1: what each method measured by itself.
    out: dict[str, dict[str, Any]] = {}
    for name, all_runs in sorted(by_method.items()):
        done = sorted((r for r in all_runs if r.status == "finished"), key=lambda r: r.seed)
        if not done:
            continue
        m = _method_info(all_runs)
        finals = [final_value(points[r.name], final_evals) for r in done]
        mean, std = mean_std(finals)
        baseline = m["baseline"] or (name if name in baselines_used else None)
        totals = [_finite(r.final.get("flops/total")) for r in done]
        # When each seed first reached the value it ended at (its saturation point).
        own = [reach(points[r.name], f) for r, f in zip(done, finals, strict=True)]
        own_steps = [None if p is None else p["step"] for p in own]
        m.update(
            {
                "seeds": len(done),
                "seed_ids": [r.seed for r in done],
                "runs": [r.name for r in done],
                "unfinished_runs": [r.name for r in all_runs if r.status != "finished"],
                "final_evals": final_evals,
                "final_metric": mean,
                "final_metric_std": std,
                "final_metric_min": min(finals),
                "final_metric_max": max(finals),
                "final_metric_per_seed": finals,
                "final_metric_last_eval_per_seed": [_finite(r.final[metric]) for r in done],
                "final_eval": _final_eval(done),
                "steps_to_own_final_per_seed": own_steps,
                "steps_to_own_final": median_high(own_steps),
                "flops_to_own_final_per_seed": [None if p is None else p["flops"] for p in own],
                "run_steps_per_seed": [r.steps for r in done],
                "total_flops_per_seed": totals,
                "baseline": baseline,
                "uses_reference": uses_reference(m),
                "frontier_of": frontier_of(all_runs[0].info),
                "lr": _lr(done[0]),
                "steps": m["steps"] if m["steps"] is not None else done[0].steps,
                "total_flops": mean_std(totals)[0],
                "flops_per_step": _mean_of(per_step_flops(r) for r in done),
                "step_time_s": _mean_of(median_step_time(r) for r in done),
                "noisy_selected_frac": _mean_of(_line_mean(r, "noisy_selected_frac") for r in done),
                "noisy_pool_frac": _mean_of(_line_mean(r, "noisy_pool_frac") for r in done),
                "selection_diagnostics": selection_diagnostics(done),
            }
        )
        m["_runs"], m["_name"] = done, name
        m["_final_by_seed"] = dict(zip(m["seed_ids"], finals, strict=True))
        out[name] = m

    # Pass 2: everything relative to the baseline and the reference.
    for m in out.values():
        base = out.get(m["baseline"]) if m["baseline"] else None
        ref = out.get(m["reference"]) if m.get("reference") else None
        m["reference_training_flops"] = ref["total_flops"] if ref else None
        m["target"] = base["final_metric"] if base else None
        m["final_minus_baseline"] = (m["final_metric"] - m["target"]) if base else None
        m["baseline_steps"] = base["steps"] if base else None
        m["baseline_total_flops"] = base["total_flops"] if base else None
        m["baseline_final_metric_std"] = base["final_metric_std"] if base else None
        m["baseline_seeds"] = base["seeds"] if base else None
        m["baseline_steps_to_own_final"] = base["steps_to_own_final"] if base else None
        m["wall_ratio_vs_baseline"] = (
            _ratio(m["step_time_s"], base["step_time_s"]) if base else None
        )
        m["flop_ratio_vs_baseline"] = (
            _ratio(m["flops_per_step"], base["flops_per_step"]) if base else None
        )
        _vs_baseline(m, base, points, frontier.get(m["baseline"] or "", []), final_evals)
    return out


def _vs_baseline(
    m: dict[str, Any],
    base: dict[str, Any] | None,
    points: dict[str, list[dict[str, float]]],
    frontier_runs: list[Run],
    final_evals: int,
) -> None:
    """Per-seed targets, steps/FLOPs to them (interpolated), and the paired comparisons."""
    keys = (
        "target_per_seed", "steps_to_target_per_seed", "flops_to_target_per_seed",
        "examples_to_target_per_seed", "baseline_steps_to_target_per_seed",
        "baseline_flops_to_target_per_seed", "seeds_reaching_target", "steps_to_target",
        "flops_to_target", "examples_to_target", "flops_to_target_with_ref_training",
        "speedup", "speedup_vs_run_length", "speedup_vs_baseline_saturation", "flops_speedup",
    )  # fmt: skip
    for k in keys:
        m[k] = None
    m["vs_baseline"] = {}
    if base is None:
        return
    bfin = base["_final_by_seed"]
    bruns = {r.seed: r for r in base["_runs"]}
    bown = dict(zip(base["seed_ids"], base["steps_to_own_final_per_seed"], strict=True))
    bown_f = dict(zip(base["seed_ids"], base["flops_to_own_final_per_seed"], strict=True))
    targets, hits, b_steps, b_flops, b_len = [], [], [], [], []
    for r in m["_runs"]:
        t = bfin.get(r.seed, base["final_metric"])
        targets.append(t)
        hits.append(reach(points[r.name], t))
        if r.seed not in bruns:  # no paired baseline seed: no baseline figure for this seed
            b_steps.append(None)
            b_flops.append(None)
            b_len.append(None)
            continue
        br = bruns[r.seed]
        length = float(br.steps or base["steps"])
        total = _finite(br.final.get("flops/total"))
        same = [f for f in frontier_runs if f.seed == r.seed] or frontier_runs
        fr = [reach(points[f.name], t) for f in same]
        cand_s = [length, bown.get(r.seed)] + [p["step"] for p in fr if p is not None]
        cand_f = [total, bown_f.get(r.seed)] + [p["flops"] for p in fr if p is not None]
        b_steps.append(min(v for v in cand_s if v is not None and not math.isnan(v)))
        cand_f = [v for v in cand_f if v is not None and not math.isnan(v)]
        b_flops.append(min(cand_f) if cand_f else None)
        b_len.append(length)
    steps = [None if p is None else p["step"] for p in hits]
    flops = [None if p is None else p["flops"] for p in hits]
    seeds = m["seed_ids"]
    m["target_per_seed"] = targets
    m["steps_to_target_per_seed"] = steps
    m["flops_to_target_per_seed"] = flops
    m["examples_to_target_per_seed"] = [None if p is None else p["examples"] for p in hits]
    m["baseline_steps_to_target_per_seed"] = b_steps
    m["baseline_flops_to_target_per_seed"] = b_flops
    m["seeds_reaching_target"] = sum(s is not None for s in steps)
    m["steps_to_target"] = median_high(steps)
    m["flops_to_target"] = median_high(flops)
    m["examples_to_target"] = median_high(m["examples_to_target_per_seed"])
    ref_flops = m["reference_training_flops"] if m["uses_reference"] else 0.0
    if m["flops_to_target"] is not None and ref_flops is not None:
        m["flops_to_target_with_ref_training"] = m["flops_to_target"] + ref_flops

    # A seed that never reached the target is counted at its own run length (total FLOPs): a
    # lower bound on its true steps, so its speed-up is an upper bound (see ``censor``).
    never = [s for s, st in zip(seeds, steps, strict=True) if st is None]
    lengths = dict(zip(seeds, m["run_steps_per_seed"], strict=True))
    totals = dict(zip(seeds, m["total_flops_per_seed"], strict=True))
    t_c = {s: float(lengths[s]) if st is None else st for s, st in zip(seeds, steps, strict=True)}
    f_c = {s: totals[s] if f is None else f for s, f in zip(seeds, flops, strict=True)}
    paired_b = {s: v for s, v in zip(seeds, b_steps, strict=True) if v is not None}
    paired_bf = {s: v for s, v in zip(seeds, b_flops, strict=True) if v is not None}
    own_base = {s: v for s, v in bown.items() if v is not None}
    base_totals = dict(zip(base["seed_ids"], base["total_flops_per_seed"], strict=True))
    vs: dict[str, Any] = {
        "final": compare(m["_final_by_seed"], bfin, "difference"),
        "speedup": compare(paired_b, t_c, "ratio"),
        "speedup_vs_run_length": compare(
            {s: v for s, v in zip(seeds, b_len, strict=True) if v is not None}, t_c, "ratio"
        ),
        "speedup_vs_baseline_saturation": compare(own_base, t_c, "ratio"),
        "flops_speedup": compare(paired_bf, f_c, "ratio"),
        "flops_speedup_vs_total": compare(
            {s: v for s, v in base_totals.items() if s in set(seeds)}, f_c, "ratio"
        ),
    }
    if m["uses_reference"] and m["reference_training_flops"] is not None:
        vs["flops_speedup_with_ref_training"] = compare(
            paired_bf, {s: v + m["reference_training_flops"] for s, v in f_c.items()}, "ratio"
        )
    for k, c in vs.items():
        if k != "final":
            c["never_reached"] = never
    m["vs_baseline"] = vs
    if not never:  # the scalars only when every seed reached (else the ratio is a bound)
        m["speedup"] = vs["speedup"]["estimate"]
        m["speedup_vs_run_length"] = vs["speedup_vs_run_length"]["estimate"]
        m["speedup_vs_baseline_saturation"] = vs["speedup_vs_baseline_saturation"]["estimate"]
        m["flops_speedup"] = vs["flops_speedup"]["estimate"]


def _lr(run: Run) -> float | None:
    """A run's peak learning rate: its tags' or suite entry's ``lr``, else its config.json."""
    for v in ((run.info.get("tags") or {}).get("lr"), run.info.get("lr")):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    try:
        cfg = json.loads((run.dir / "config.json").read_text(encoding="utf-8"))
        return float(cfg["optim"]["lr"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _mean_of(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return math.fsum(vals) / len(vals) if vals else None


def _line_mean(run: Run, key: str) -> float | None:
    vals = [_finite(r.get(key)) for r in run.step_lines()]
    vals = [v for v in vals if not math.isnan(v)]
    return math.fsum(vals) / len(vals) if vals else None


def _final_eval(done: Sequence[Run]) -> dict[str, dict[str, float]]:
    keys = sorted({k for r in done for k in r.final if k.startswith("eval/")})
    out = {}
    for k in keys:
        vals = [_finite(r.final.get(k)) for r in done]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            mean, std = mean_std(vals)
            out[k] = {"mean": mean, "std": std}
    return out


def gap(joint: dict[str, Any], indep: dict[str, Any]) -> dict[str, Any]:
    """Joint - independent final-metric gap with its spread and 95% interval.

    Paired by seed over the seeds both ran (std of the per-seed differences) when they share at
    least two; otherwise the difference of means with std sqrt(std_j^2 + std_i^2) and Welch's
    interval.
    """
    cmp = compare(joint["_final_by_seed"], indep["_final_by_seed"], "difference")
    paired = cmp["test"] == PAIRED
    if paired:
        g, s = cmp["estimate"], cmp["sd"] if cmp["sd"] is not None else 0.0
    else:
        g = joint["final_metric"] - indep["final_metric"]
        s = math.hypot(joint["final_metric_std"], indep["final_metric_std"])
    return {
        "gap": g,
        "gap_std": s,
        "paired": paired,
        "seeds": cmp["n"] if paired else min(joint["seeds"], indep["seeds"]),
        "ci": cmp["ci"],
        "mde": cmp["mde"],
        "comparison": cmp,
        "joint": joint["final_metric"],
        "joint_std": joint["final_metric_std"],
        "independent": indep["final_metric"],
        "independent_std": indep["final_metric_std"],
        "methods": [joint["_name"], indep["_name"]],
    }


def batch_sweep(methods: dict[str, dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """Joint vs independent at each batch size of the batch-size sweep (sorted by b).

    Points come from runs tagged ``sweep: batch_size``; the main (untagged) f=0.8 pair joins as
    one more point when its batch size is not in the sweep and it ran as many steps.
    """
    tagged = [
        m
        for m in methods.values()
        if m["tags"].get("sweep") == "batch_size" and m["family"] == family
    ]
    if not tagged:
        return []
    steps = {m["steps"] for m in tagged}
    pool = tagged + [
        m
        for m in methods.values()
        if not m["tags"].get("sweep")
        and m["family"] == family
        and m["steps"] in steps
        and "uncurated" not in (m.get("reference") or "")
    ]
    by_b: dict[int, dict[str, dict[str, Any]]] = {}
    for m in pool:
        crit = (m.get("criterion") or "learnability").replace("-", "_")
        f = m.get("filter_ratio")
        if crit != "learnability" or f is None or abs(float(f) - 0.8) > 1e-9:
            continue
        if m["selection"] not in ("jest", "independent"):
            continue
        b = int(m["tags"].get("batch_size") or m["batch_size"] or 0)
        slot = by_b.setdefault(b, {})
        # A tagged run wins over the main run at the same b.
        if m["selection"] not in slot or m["tags"].get("sweep"):
            slot[m["selection"]] = m
    return [
        {
            "x": b,
            **gap(slot["jest"], slot["independent"]),
            "steps": slot["jest"]["steps"],
            "jest_noisy_selected_frac": slot["jest"]["noisy_selected_frac"],
            "independent_noisy_selected_frac": slot["independent"]["noisy_selected_frac"],
            "jest_diagnostics": slot["jest"].get("selection_diagnostics", {}),
            "independent_diagnostics": slot["independent"].get("selection_diagnostics", {}),
        }
        for b, slot in sorted(by_b.items())
        if "jest" in slot and "independent" in slot
    ]


# ----------------------------------------------------------------------------------------------
# Selection diagnostics (the sel/* lines), the bias-init ablation and the cheap-scoring ablation

DIAGNOSTICS = (
    "sel/joint_term_spread",
    "sel/example_score_spread",
    "sel/pool_joint_term_spread",
    "sel/pool_example_score_spread",
    "sel/neg_score_selected",
    "sel/learner_neg_loss_selected",
    "sel/reference_neg_loss_selected",
    "noisy_selected_frac",
)


def selection_diagnostics(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """Per logged key: its mean over every step line of ``runs`` (all seeds), and over the first
    and the last third of training (does it change later on?). Keys never logged are left out."""
    out: dict[str, dict[str, float]] = {}
    for key in DIAGNOSTICS:
        allv, early, late = [], [], []
        for run in runs:
            lines = run.step_lines()
            n = len(lines)
            for i, r in enumerate(lines):
                v = _finite(r.get(key))
                if math.isnan(v):
                    continue
                allv.append(v)
                if i < n / 3:
                    early.append(v)
                elif i >= 2 * n / 3:
                    late.append(v)
        if allv:
            out[key] = {
                "mean": math.fsum(allv) / len(allv),
                "early": math.fsum(early) / len(early) if early else math.nan,
                "late": math.fsum(late) / len(late) if late else math.nan,
            }
    return out


def _twin(methods: dict[str, dict[str, Any]], m: dict[str, Any]) -> str | None:
    """The untagged method of m's family with m's selector, criterion, f, b, steps, reference."""
    keys = ("family", "selection", "criterion", "filter_ratio", "batch_size", "steps")
    for name, other in sorted(methods.items()):
        if other["tags"].get("sweep") or other["kind"] != "learner":
            continue
        same_ref = (other.get("reference") or "") == (m.get("reference") or "")
        if same_ref and all(other.get(k) == m.get(k) for k in keys):
            return name
    return None


def bias_ablation(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each bias-init-ablated method next to its default-init twin: finals and diagnostics."""
    rows = []
    for name, m in sorted(methods.items()):
        if m["tags"].get("sweep") != "bias_init":
            continue
        twin = _twin(methods, m)
        t = methods.get(twin) if twin else None
        rows.append(
            {
                "method": name,
                "selection": m["selection"],
                "bias_init": m["tags"].get("bias_init"),
                "final": m["final_metric"],
                "final_std": m["final_metric_std"],
                "seeds": m["seeds"],
                "default": twin,
                "default_final": t["final_metric"] if t else None,
                "default_final_std": t["final_metric_std"] if t else None,
                "default_seeds": t["seeds"] if t else None,
                "diagnostics": m["selection_diagnostics"],
                "default_diagnostics": t["selection_diagnostics"] if t else None,
            }
        )
    gaps = {}
    for label, pick in (("ablated", lambda r: r["method"]), ("default", lambda r: r["default"])):
        sel = {r["selection"]: pick(r) for r in rows if pick(r) in methods}
        if "jest" in sel and "independent" in sel:
            gaps[label] = gap(methods[sel["jest"]], methods[sel["independent"]])
    for r in rows:
        r["gaps"] = gaps
    return rows


def _last(run: Run, key: str) -> float:
    """A cumulative counter at the end of a run: the final line's, else the last step line's."""
    if run.final is not None and key in run.final:
        return _finite(run.final[key])
    lines = [r for r in run.step_lines() if key in r]
    return _finite(lines[-1][key]) if lines else math.nan


def scorer_ablation(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Cheap-scoring runs (tag ``sweep: scorer``) against the full-learner run they replace."""
    rows = []
    for name, m in sorted(methods.items()):
        if m["tags"].get("sweep") != "scorer":
            continue
        full = methods.get(m["tags"].get("compare") or "")
        score = [_last(r, "flops/learner_score") for r in m["_runs"]]
        row = {
            "method": name,
            "scorer": m["tags"].get("scorer"),
            "compare": full["_name"] if full else None,
            "final": m["final_metric"],
            "final_std": m["final_metric_std"],
            "seeds": m["seeds"],
            "noisy_selected_frac": m["noisy_selected_frac"],
            "score_flops_per_step": math.fsum(score) / len(score) / m["steps"],
            "total_flops": m["total_flops"],
            "step_time_s": m["step_time_s"],
            "steps_to_target": m["steps_to_target"],
        }
        if full:
            fs = [_last(r, "flops/learner_score") for r in full["_runs"]]
            full_score = math.fsum(fs) / len(fs) / full["steps"]
            row |= {
                "compare_final": full["final_metric"],
                "compare_final_std": full["final_metric_std"],
                "compare_seeds": full["seeds"],
                "compare_noisy_selected_frac": full["noisy_selected_frac"],
                "compare_steps_to_target": full["steps_to_target"],
                "score_flops_ratio": _ratio(row["score_flops_per_step"], full_score),
                "total_flops_ratio": _ratio(m["total_flops"], full["total_flops"]),
                "step_time_ratio": _ratio(m["step_time_s"], full["step_time_s"]),
                "gap": gap(m, full) if m["seeds"] and full["seeds"] else None,
            }
        rows.append(row)
    return rows


def lr_grid(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each baseline's learning-rate grid and its pick (the best mean final metric).

    Grid members are methods tagged ``sweep: lr`` with ``lr_of: <baseline method>``; the
    baseline itself is a member too. Each member is compared with the pick, paired by seed:
    a baseline that is not the pick is a weaker baseline than the suite could have had.
    """
    groups: dict[str, list[str]] = {}
    for name, m in methods.items():
        of = m["tags"].get("lr_of")
        if m["tags"].get("sweep") == "lr" and of:
            groups.setdefault(str(of), []).append(name)
    rows = []
    for base, names in sorted(groups.items()):
        members = ([base] if base in methods else []) + sorted(names)
        pick = max(members, key=lambda n: methods[n]["final_metric"])
        grid = [
            {
                "method": n,
                "lr": methods[n]["lr"],
                "final": methods[n]["final_metric"],
                "final_std": methods[n]["final_metric_std"],
                "seeds": methods[n]["seeds"],
                "minus_pick": compare(
                    methods[n]["_final_by_seed"], methods[pick]["_final_by_seed"], "difference"
                ),
            }
            for n in sorted(members, key=lambda n: methods[n]["lr"] or 0.0)
        ]
        rows.append(
            {
                "baseline": base,
                "baseline_lr": methods[base]["lr"] if base in methods else None,
                "pick": pick,
                "pick_lr": methods[pick]["lr"],
                "baseline_is_pick": pick == base,
                "grid": grid,
            }
        )
    return rows


# The compute target: a JEST configuration at <= this fraction of uniform's FLOPs.
FLOP_FRACTION_TARGET = 0.5


def compute_answer(methods: dict[str, dict[str, Any]], min_seeds: int = 2) -> dict[str, Any] | None:
    """Per FLOP, does any selecting configuration reach its uniform baseline's final metric
    with fewer total FLOPs (learner training + scoring + reference inference)?

    One row per selecting method (every family, the cheap scorers and arms included): its FLOP
    speed-up against the baseline with its interval, two three-valued verdicts (fewer FLOPs;
    at most ``FLOP_FRACTION_TARGET`` of them), and where its FLOPs went. A seed that never
    reached the target makes the speed-up an upper bound, so "holds" is withheld then.
    """
    rows = []
    for name, m in sorted(methods.items()):
        base = methods.get(m.get("baseline") or "")
        if (
            m.get("kind") != "learner"
            or base is None
            or base is m
            or (m.get("selection") or "uniform") == "uniform"
        ):
            continue
        vs = m.get("vs_baseline") or {}
        cmp = vs.get("flops_speedup")
        if not cmp:
            continue
        never = bool(cmp.get("never_reached"))
        parts = {k: _mean_of(_last(r, f"flops/{k}") for r in m["_runs"]) for k in KINDS}
        total = math.fsum(v for v in parts.values() if v is not None)
        rows.append(
            {
                "method": name,
                "family": m.get("family"),
                "baseline": base["_name"],
                "seeds": m["seeds"],
                "flops_speedup": cmp,
                "flops_speedup_with_ref_training": vs.get("flops_speedup_with_ref_training"),
                "fewer_flops": censor(decide(cmp, 1.0, min_seeds), never, False),
                "target_met": censor(
                    decide(cmp, 1.0 / FLOP_FRACTION_TARGET, min_seeds), never, False
                ),
                "flops_share": {
                    k: (v / total if v is not None and total > 0 else None)
                    for k, v in parts.items()
                },
                "total_flops": m["total_flops"],
                "baseline_total_flops": base["total_flops"],
                "reference_training_flops": m.get("reference_training_flops")
                if m.get("uses_reference")
                else None,
            }
        )
    if not rows:
        return None

    def any_of(key: str) -> bool | None:
        verdicts = [r[key] for r in rows]
        if any(v is True for v in verdicts):
            return True
        return False if all(v is False for v in verdicts) else None

    best = max(rows, key=lambda r: r["flops_speedup"].get("estimate") or 0.0)
    return {
        "target_fraction": FLOP_FRACTION_TARGET,
        "fewer_flops": any_of("fewer_flops"),
        "target_met": any_of("target_met"),
        "best": best["method"],
        "rows": rows,
    }


def arm_comparisons(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Arms (tag ``sweep: arm``): each against the run it varies (tag ``compare``), paired by
    seed, and against its uniform baseline (final metric and step speed-up)."""
    rows = []
    for name, m in sorted(methods.items()):
        tags = m["tags"]
        if tags.get("sweep") != "arm":
            continue
        other = methods.get(tags.get("compare") or "")
        vs = m.get("vs_baseline") or {}
        rows.append(
            {
                "method": name,
                "arm": tags.get("arm"),
                "compare": other["_name"] if other else None,
                "final": m["final_metric"],
                "final_std": m["final_metric_std"],
                "seeds": m["seeds"],
                "compare_final": other["final_metric"] if other else None,
                "compare_final_std": other["final_metric_std"] if other else None,
                "vs_compare": compare(m["_final_by_seed"], other["_final_by_seed"], "difference")
                if other
                else None,
                "vs_baseline": vs.get("final"),
                "speedup": vs.get("speedup"),
            }
        )
    return rows


def reference_strength(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Data-quality bootstrapping: per reference, its final metric and the final metric of the
    learner it guides (jest at the same f), the learner against the reference (a fixed value:
    every seed scored with the same model) and against uniform.

    Rows: the main learner ``compare``d by the ablation's learners (tag ``sweep:
    reference_strength``), then those learners, in order of their reference's final metric.
    """
    learners = [
        m for m in methods.values() if m["tags"].get("sweep") == "reference_strength"
        and m.get("kind") == "learner"
    ]  # fmt: skip
    if not learners:
        return []
    main = methods.get(learners[0]["tags"].get("compare") or "")
    rows = []
    for m in ([main] if main else []) + learners:
        ref = methods.get(m.get("reference") or "")
        if ref is None:
            continue
        vs = m.get("vs_baseline") or {}
        rows.append(
            {
                "method": m["_name"],
                "reference": ref["_name"],
                "curated_fraction": ref["tags"].get("curated_fraction"),
                "reference_final": ref["final_metric"],
                "final": m["final_metric"],
                "final_std": m["final_metric_std"],
                "seeds": m["seeds"],
                "vs_reference": compare(m["_final_by_seed"], ref["final_metric"], "difference"),
                "vs_baseline": vs.get("final"),
            }
        )
    rows.sort(key=lambda r: r["reference_final"])
    # (i) a better reference, a better learner: each learner against the one guided by the next
    # weaker reference, paired by seed.
    for prev, row in itertools.pairwise(rows):
        a, b = methods[row["method"]], methods[prev["method"]]
        row["vs_weaker"] = compare(a["_final_by_seed"], b["_final_by_seed"], "difference")
    return rows


def bootstrapping_verdicts(rows: list[dict[str, Any]], min_seeds: int = 2) -> dict[str, Any]:
    """The two readings of data-quality bootstrapping over the reference-strength rows."""
    better = [decide(r["vs_weaker"], 0.0, min_seeds) for r in rows if r.get("vs_weaker")]
    above = [decide(r["vs_reference"], 0.0, min_seeds) for r in rows]
    return {
        "better_reference_better_learner": all_of(better) if better else None,
        "learner_above_reference": all_of(above) if above else None,
    }
