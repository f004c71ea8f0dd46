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
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jestkit.errors import JestkitError, check
from jestkit.metrics import read_metrics

DEFAULT_METRIC = "eval/retrieval_r1"
REACH_RTOL = 1e-9  # "reached" tolerates float rounding of the baseline's mean
INF = math.inf

# ----------------------------------------------------------------------------------------------
# Loading the suite


@dataclass
class Run:
    """One run of the suite: its suite.json entry plus what its metrics.jsonl says."""

    name: str
    method: str
    seed: int
    dir: Path
    info: dict[str, Any]
    status: str = "missing"  # finished | partial | missing | no-metric
    records: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return self.info.get("kind") or "learner"

    @property
    def family(self) -> str:
        return self.info.get("family") or "default"

    @property
    def steps(self) -> int | None:
        s = self.info.get("steps")
        if s is None and self.final is not None:
            s = self.final.get("step")
        return None if s is None else int(s)

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), int)]
        return max(steps) if steps else None

    def step_lines(self) -> list[dict[str, Any]]:
        """Training-step records (not the step-0 eval line, not the final line)."""
        return [r for r in self.records if not r.get("final") and "loss" in r]


def _finite(v: Any) -> float:
    """A float, NaN for null / non-numeric values (metrics.jsonl writes non-finite as null)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def load_suite(suite_dir: str | Path) -> tuple[dict[str, Any], list[Run]]:
    """suite.json and every run it lists, each with its metrics and status."""
    suite_dir = Path(suite_dir)
    check(suite_dir.is_dir(), f"suite_dir {str(suite_dir)!r}: no such folder")
    path = suite_dir / "suite.json"
    check(path.is_file(), f"suite_dir {str(suite_dir)!r}: no suite.json (not a suite folder)")
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise JestkitError(f"{path}: cannot read it as JSON ({e})") from None
    check(
        isinstance(suite, dict) and isinstance(suite.get("runs"), list),
        f"{path}: expected an object with a 'runs' list, got {str(suite)[:120]!r}",
    )
    runs: list[Run] = []
    seen: set[str] = set()
    for i, entry in enumerate(suite["runs"]):
        check(
            isinstance(entry, dict) and all(k in entry for k in ("name", "method")),
            f"{path}: runs[{i}] needs 'name' and 'method', got {str(entry)[:120]!r}",
        )
        name = str(entry["name"])
        check(name not in seen, f"{path}: run name {name!r} is listed twice")
        seen.add(name)
        run_dir = Path(entry.get("dir") or Path("runs") / name)
        run = Run(
            name=name,
            method=str(entry["method"]),
            seed=int(entry.get("seed", 0)),
            dir=run_dir if run_dir.is_absolute() else suite_dir / run_dir,
            info=entry,
        )
        metrics = run.dir / "metrics.jsonl"
        if metrics.is_file():
            run.records = read_metrics(metrics)
            run.final = next((r for r in reversed(run.records) if r.get("final")), None)
            run.status = "finished" if run.final is not None else "partial"
        runs.append(run)
    metric = suite.get("target_metric") or DEFAULT_METRIC
    for run in runs:
        if run.status == "finished" and math.isnan(_finite(run.final.get(metric))):
            run.status = "no-metric"  # no eval, or a non-finite final metric: not comparable
    return suite, runs


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


def _round_int(v: float | None) -> int | None:
    return None if v is None else int(v)


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


def compute_methods(runs: Sequence[Run], metric: str) -> dict[str, dict[str, Any]]:
    """Every method with at least one finished run: finals, targets, speed-ups, costs."""
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    baselines_used = {r.info.get("baseline") for r in runs} - {None}

    # Pass 1: what each method measured by itself.
    out: dict[str, dict[str, Any]] = {}
    for name, all_runs in sorted(by_method.items()):
        done = sorted((r for r in all_runs if r.status == "finished"), key=lambda r: r.seed)
        if not done:
            continue
        m = _method_info(all_runs)
        finals = [_finite(r.final[metric]) for r in done]
        mean, std = mean_std(finals)
        baseline = m["baseline"] or (name if name in baselines_used else None)
        totals = [_finite(r.final.get("flops/total")) for r in done]
        # When each seed first reached the value it ended at (its saturation point).
        own = [
            first_reach(eval_points(r.records, metric), f)
            for r, f in zip(done, finals, strict=True)
        ]
        own_steps = [None if p is None else p["step"] for p in own]
        m.update(
            {
                "seeds": len(done),
                "seed_ids": [r.seed for r in done],
                "runs": [r.name for r in done],
                "unfinished_runs": [r.name for r in all_runs if r.status != "finished"],
                "final_metric": mean,
                "final_metric_std": std,
                "final_metric_min": min(finals),
                "final_metric_max": max(finals),
                "final_metric_per_seed": finals,
                "final_eval": _final_eval(done),
                "steps_to_own_final_per_seed": own_steps,
                "steps_to_own_final": _round_int(median_high(own_steps)),
                "baseline": baseline,
                "steps": m["steps"] if m["steps"] is not None else done[0].steps,
                "total_flops": mean_std(totals)[0],
                "flops_per_step": _mean_of(per_step_flops(r) for r in done),
                "step_time_s": _mean_of(median_step_time(r) for r in done),
                "noisy_selected_frac": _mean_of(_line_mean(r, "noisy_selected_frac") for r in done),
                "noisy_pool_frac": _mean_of(_line_mean(r, "noisy_pool_frac") for r in done),
            }
        )
        m["_runs"], m["_name"] = done, name
        out[name] = m

    # Pass 2: everything relative to the baseline and the reference.
    for m in out.values():
        base = out.get(m["baseline"]) if m["baseline"] else None
        ref = out.get(m["reference"]) if m.get("reference") else None
        target = base["final_metric"] if base else None
        per_seed = [
            first_reach(eval_points(r.records, metric), target) if base else None
            for r in m["_runs"]
        ]
        steps = [None if p is None else p["step"] for p in per_seed]
        flops = [None if p is None else p["flops"] for p in per_seed]
        examples = [None if p is None else p["examples"] for p in per_seed]
        m["target"] = target
        m["steps_to_target_per_seed"] = steps if base else None
        m["seeds_reaching_target"] = sum(s is not None for s in steps) if base else None
        m["steps_to_target"] = _round_int(median_high(steps)) if base else None
        m["flops_to_target_per_seed"] = flops if base else None
        m["flops_to_target"] = median_high(flops) if base else None
        m["examples_to_target"] = median_high(examples) if base else None
        m["reference_training_flops"] = ref["total_flops"] if ref else None
        needs_ref = bool(m.get("reference"))
        if m["flops_to_target"] is None:
            m["flops_to_target_with_ref_training"] = None
        elif not needs_ref:
            m["flops_to_target_with_ref_training"] = m["flops_to_target"]
        else:
            ref_flops = m["reference_training_flops"]
            m["flops_to_target_with_ref_training"] = (
                None if ref_flops is None else m["flops_to_target"] + ref_flops
            )
        m["baseline_steps"] = base["steps"] if base else None
        m["baseline_total_flops"] = base["total_flops"] if base else None
        m["baseline_final_metric_std"] = base["final_metric_std"] if base else None
        m["baseline_seeds"] = base["seeds"] if base else None
        m["speedup"] = m["speedup_vs_baseline_saturation"] = m["flops_speedup"] = None
        m["wall_ratio_vs_baseline"] = m["flop_ratio_vs_baseline"] = None
        m["final_minus_baseline"] = (m["final_metric"] - target) if base else None
    for m in out.values():
        base = out.get(m["baseline"]) if m["baseline"] else None
        if base is None:
            continue
        m["baseline_steps_to_own_final"] = base["steps_to_own_final"]
        s = m["steps_to_target"]
        if s:
            m["speedup"] = _ratio(base["steps"], s)
            m["speedup_vs_baseline_saturation"] = _ratio(base["steps_to_own_final"], s)
        if m["flops_to_target"]:
            m["flops_speedup"] = _ratio(base["total_flops"], m["flops_to_target"])
        m["wall_ratio_vs_baseline"] = _ratio(m["step_time_s"], base["step_time_s"])
        m["flop_ratio_vs_baseline"] = _ratio(m["flops_per_step"], base["flops_per_step"])
    for m in out.values():
        m.setdefault("baseline_steps_to_own_final", None)
    return out


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


# ----------------------------------------------------------------------------------------------
# Claims


@dataclass
class Claims:
    """Evaluates JEST.md §5's claims against the measured methods; ``min_seeds`` per side to hold."""

    methods: dict[str, dict[str, Any]]
    runs: Sequence[Run]
    min_seeds: int = 2
    metric_name: str = DEFAULT_METRIC.split("/")[-1]

    # -- finding the methods a claim is about, by their attributes, not their names
    def find(self, label: str, **want: Any) -> tuple[str | None, str]:
        """(method name or None, why not) for the suite's method matching ``want``.

        Keys: family, selection, criterion, filter_ratio, kind, curated_reference (bool).
        Sweep-tagged runs never match. Among several matches the one with most seeds wins.
        """
        listed: dict[str, dict[str, Any]] = {}
        for run in self.runs:
            listed.setdefault(run.method, run.info)
        found = [n for n, info in listed.items() if _matches(info, want)]
        if not found:
            return None, f"not measured: the suite has no {label} run"
        done = [n for n in found if n in self.methods]
        if not done:
            return None, f"not measured: no finished run of {', '.join(sorted(found))}"
        return max(sorted(done), key=lambda n: self.methods[n]["seeds"]), ""

    def main_family(self) -> str:
        fams = [r.family for r in self.runs if r.kind == "learner"]
        if "mlp" in fams:
            return "mlp"
        return max(sorted(set(fams)), key=fams.count) if fams else "mlp"

    def _seeds_ok(self, *names: str) -> str:
        few = [n for n in names if self.methods[n]["seeds"] < self.min_seeds]
        if few:
            counts = ", ".join(f"{n}: {self.methods[n]['seeds']}" for n in few)
            return (
                f"; fewer than {self.min_seeds} finished seeds ({counts}): no spread, "
                "cannot be told from noise"
            )
        return ""

    # -- the decision rules
    def higher_final(self, a: str, b: str) -> tuple[bool, str]:
        """a's final metric above b's by more than the larger of the two spreads."""
        ma, mb = self.methods[a], self.methods[b]
        d = ma["final_metric"] - mb["final_metric"]
        spread = max(ma["final_metric_std"], mb["final_metric_std"])
        few = self._seeds_ok(a, b)
        holds = d > spread and not few
        verdict = "" if holds else (few or ("; within noise" if d > 0 else "; not higher"))
        text = (
            f"{a} {_fmt_final(ma)} vs {b} {_fmt_final(mb)}: difference {d:+.4f}, "
            f"larger std {spread:.4f}{verdict}"
        )
        return holds, text

    def fewer_steps(self, a: str, b: str) -> tuple[bool, str]:
        """a reaches the target in fewer steps than b, by more than the larger spread.

        A seed that never reaches is counted at its run length (a lower bound on its true value),
        which can only make a claim harder to hold for the method that never reaches.
        """
        ma, mb = self.methods[a], self.methods[b]
        if ma["target"] is None or mb["target"] is None:
            return False, f"not measured: no baseline for {a if ma['target'] is None else b}"
        va, vb = _censored_steps(ma), _censored_steps(mb)
        (ea, sa), (eb, sb) = mean_std(va), mean_std(vb)
        d = eb - ea
        spread = max(sa, sb)
        reached_a = ma["seeds_reaching_target"] == ma["seeds"]
        few = self._seeds_ok(a, b)
        holds = reached_a and d > spread and not few
        if holds:
            verdict = ""
        elif not reached_a:
            verdict = f"; {a} did not reach the target in every seed"
        else:
            verdict = few or ("; within noise" if d > 0 else "; not fewer")
        text = (
            f"steps to target {a} {_fmt_steps(ma)} vs {b} {_fmt_steps(mb)}: "
            f"mean difference {d:.0f}, larger std {spread:.0f}{verdict}"
        )
        return holds, text

    def speedup_at_least(self, a: str, factor: float) -> tuple[bool, str]:
        """Every seed of a reaches the target within baseline_steps / factor."""
        m = self.methods[a]
        base = m["baseline"]
        if m["target"] is None or base not in self.methods:
            return False, f"not measured: {a}'s baseline {base!r} has no finished run"
        limit = m["baseline_steps"] / factor
        per_seed = m["steps_to_target_per_seed"]
        ok = all(s is not None and s <= limit for s in per_seed)
        few = self._seeds_ok(a, base)
        holds = ok and not few
        sp = m["speedup"]
        sat = m["speedup_vs_baseline_saturation"]
        text = (
            f"{a} reached {base}'s final {m['target']:.4f} at step {_fmt_steps(m)}; "
            f"{base} ran {m['baseline_steps']} steps, so the bound is {limit:.0f} "
            f"(speed-up {_fmt_x(sp)}, needed {factor:g}x); {base} itself first reached its "
            f"final at step {_fmt_opt(m['baseline_steps_to_own_final'])} "
            f"(speed-up vs that {_fmt_x(sat)})"
        )
        if not ok:
            text += "; not every seed within the bound"
        return holds, text + (few if ok else "")

    # -- the claims
    def evaluate(self) -> list[dict[str, Any]]:
        fam = self.main_family()
        claims: list[dict[str, Any]] = []

        def add(cid: str, claim: str, result: tuple[bool, str], methods: Sequence[str | None]):
            holds, measured = result
            claims.append(
                {
                    "id": cid,
                    "claim": claim,
                    "measured": measured,
                    "holds": bool(holds),
                    "status": "not measured" if measured.startswith("not measured") else "measured",
                    "methods": [m for m in methods if m],
                }
            )

        def jest(f: float, **kw: Any) -> tuple[str | None, str]:
            want = dict(family=fam, selection="jest", criterion="learnability", filter_ratio=f)
            want.update(kw)
            if "curated_reference" not in want:
                want["curated_reference"] = True
            return self.find(f"{_label(want)}", **want)

        def missing(*found: tuple[str | None, str]) -> tuple[bool, str] | None:
            why = [w for n, w in found if n is None]
            return (False, "; ".join(why)) if why else None

        # 1. Iteration speed-up at f = 0.8 and 0.9.
        for cid, f, factor in (("1a", 0.8, 3.0), ("1b", 0.9, 4.0)):
            j = jest(f)
            claim = (
                f"JEST at f={f} reaches the uniform baseline's final {self.metric_name} in "
                f"<= 1/{factor:g} of its steps"
            )
            add(cid, claim, missing(j) or self.speedup_at_least(j[0], factor), [j[0]])

        # 2. More aggressive filtering helps.
        js = [jest(f) for f in (0.5, 0.8, 0.9)]
        res = missing(*js)
        if res is None:
            r1, r2 = self.fewer_steps(js[1][0], js[0][0]), self.fewer_steps(js[2][0], js[1][0])
            res = (r1[0] and r2[0], f"{r1[1]}. {r2[1]}")
        add(
            "2",
            "More aggressive filtering helps: steps-to-target decreases from f=0.5 to 0.8 to 0.9",
            res,
            [n for n, _ in js],
        )

        # 3. Joint beats independent.
        j8 = jest(0.8)
        i8 = jest(0.8, selection="independent")
        add(
            "3a",
            "Joint beats independent selection of the same scores at f=0.8 (final metric)",
            missing(j8, i8) or self.higher_final(j8[0], i8[0]),
            [j8[0], i8[0]],
        )
        add(
            "3b",
            "Joint beats independent selection at f=0.8 (fewer steps to target)",
            missing(j8, i8) or self.fewer_steps(j8[0], i8[0]),
            [j8[0], i8[0]],
        )
        sweep = batch_sweep(self.methods, fam)
        add(
            "3c",
            "The joint - independent gap (final metric) grows with the batch size b",
            self.gap_grows(sweep, "b"),
            [n for p in sweep for n in p["methods"]],
        )
        by_f = self.gap_by_filter_ratio(fam)
        if len(by_f) >= 2:
            add(
                "3d",
                "The joint - independent gap (final metric) grows with the filtering ratio f",
                self.gap_grows(by_f, "f"),
                [n for p in by_f for n in p["methods"]],
            )

        # 4. Learnability > easy reference > hard learner.
        crit = {
            c: jest(0.8, criterion=c) for c in ("learnability", "easy_reference", "hard_learner")
        }
        for c in (
            "easy_reference",
            "hard_learner",
        ):  # any selector if no jest run of this criterion
            if crit[c][0] is None:
                alt = self.find(c, family=fam, criterion=c, filter_ratio=0.8)
                if alt[0] is not None:
                    crit[c] = alt
        res = missing(*crit.values())
        if res is None:
            a = self.higher_final(crit["learnability"][0], crit["easy_reference"][0])
            b = self.higher_final(crit["easy_reference"][0], crit["hard_learner"][0])
            res = (a[0] and b[0], f"{a[1]}. {b[1]}")
        add(
            "4",
            "Learnability beats easy-reference, which beats hard-learner (final metric, f=0.8)",
            res,
            [n for n, _ in crit.values()],
        )

        # 5. Flexi-JEST.
        vit = "vit" if any(r.family == "vit" for r in self.runs) else fam
        flexi = self.find("flexi-jest f=0.8", family=None, selection="flexi-jest", filter_ratio=0.8)
        flexi_fam = self.methods[flexi[0]]["family"] if flexi[0] else vit
        jvit = self.find(
            f"jest f=0.8 ({flexi_fam})",
            family=flexi_fam,
            selection="jest",
            criterion="learnability",
            filter_ratio=0.8,
            curated_reference=True,
        )
        add(
            "5a",
            "Flexi-JEST (low-res scoring, multi-resolution training, cached reference) reaches "
            "the uniform baseline's final metric with fewer total FLOPs than uniform used",
            missing(flexi) or self.fewer_flops(flexi[0]),
            [flexi[0]],
        )
        add(
            "5b",
            "Flexi-JEST keeps most (>= 1/2) of full-resolution JEST's step speed-up",
            missing(flexi, jvit) or self.keeps_speedup(flexi[0], jvit[0], 0.5),
            [flexi[0], jvit[0]],
        )

        # 6. Data quality bootstrapping.
        ref_name = self.methods[j8[0]]["reference"] if j8[0] else None
        if ref_name in self.methods:
            ref: tuple[str | None, str] = (ref_name, "")
        elif ref_name:
            ref = (None, f"not measured: no finished run of the reference {ref_name!r}")
        else:
            ref = (None, j8[1] or f"not measured: {j8[0]} names no reference")
        add(
            "6a",
            "Data quality bootstrapping: the JEST learner (f=0.8) ends above its reference model",
            missing(j8, ref) or self.higher_final(j8[0], ref[0]),
            [j8[0], ref[0]],
        )
        unc = jest(0.8, curated_reference=False)
        add(
            "6b",
            "A reference trained on uncurated data helps less (uncurated-reference JEST ends "
            "below curated-reference JEST)",
            missing(j8, unc) or self.higher_final(j8[0], unc[0]),
            [j8[0], unc[0]],
        )
        return claims

    def fewer_flops(self, a: str) -> tuple[bool, str]:
        m = self.methods[a]
        base = m["baseline"]
        if m["target"] is None or base not in self.methods:
            return False, f"not measured: {a}'s baseline {base!r} has no finished run"
        budget = m["baseline_total_flops"]
        per_seed = m["flops_to_target_per_seed"]
        ok = all(f is not None and f < budget for f in per_seed)
        few = self._seeds_ok(a, base)
        seeds = "/".join("never" if f is None else f"{f:.3g}" for f in per_seed)
        with_ref = m["flops_to_target_with_ref_training"]
        text = (
            f"{a} FLOPs to {base}'s final: {_fmt_opt(m['flops_to_target'], '.3g')} "
            f"(per seed {seeds}) vs {base}'s total {budget:.3g} "
            f"(ratio {_fmt_x(m['flops_speedup'])}); with the reference's training "
            f"{_fmt_opt(with_ref, '.3g')}"
        )
        if with_ref is not None:
            text += f" ({'below' if with_ref < budget else 'not below'} {base}'s total)"
        if not ok:
            text += "; not every seed below"
        return ok and not few, text + (few if ok else "")

    def keeps_speedup(self, a: str, full: str, share: float) -> tuple[bool, str]:
        ma, mf = self.methods[a], self.methods[full]
        if ma["target"] is None:
            return False, f"not measured: {a}'s baseline {ma['baseline']!r} has no finished run"
        if mf["speedup"] is None:
            return False, f"{full} never reached its target: no step speed-up to keep"
        need = share * mf["speedup"]
        per_seed = [
            None if s is None else ma["baseline_steps"] / s for s in ma["steps_to_target_per_seed"]
        ]
        ok = all(s is not None and s >= need for s in per_seed)
        few = self._seeds_ok(a, full)
        seeds = "/".join("never" if s is None else f"{s:.2f}x" for s in per_seed)
        text = (
            f"speed-up {a} {_fmt_x(ma['speedup'])} (per seed {seeds}) vs {full} "
            f"{_fmt_x(mf['speedup'])}: keeps {_fmt_opt(_ratio(ma['speedup'], mf['speedup']), '.0%')}"
            f" (needed >= {share:.0%} in every seed)"
        )
        if not ok:
            text += "; not every seed"
        return ok and not few, text + (few if ok else "")

    def gap_by_filter_ratio(self, fam: str) -> list[dict[str, Any]]:
        points = []
        for f in sorted({_f(r.info.get("filter_ratio")) for r in self.runs} - {None}):
            j = self.find("", family=fam, selection="jest", criterion="learnability",
                          filter_ratio=f, curated_reference=True)[0]  # fmt: skip
            i = self.find("", family=fam, selection="independent", criterion="learnability",
                          filter_ratio=f, curated_reference=True)[0]  # fmt: skip
            if j and i:
                points.append({"x": f, **gap(self.methods[j], self.methods[i])})
        return points

    def gap_grows(self, points: Sequence[dict[str, Any]], axis: str) -> tuple[bool, str]:
        """The gap at the largest x exceeds the gap at the smallest by more than their spread."""
        if len(points) < 2:
            what = "batch sizes in the sweep" if axis == "b" else "filter ratios"
            return False, f"not measured: fewer than two {what} with both jest and independent runs"
        lo, hi = points[0], points[-1]
        d = hi["gap"] - lo["gap"]
        spread = max(lo["gap_std"], hi["gap_std"])
        few = min(p["seeds"] for p in (lo, hi)) < self.min_seeds
        holds = d > spread and not few
        series = ", ".join(
            f"{axis}={p['x']:g}: {p['gap']:+.4f} ± {p['gap_std']:.4f} (n={p['seeds']})"
            for p in points
        )
        verdict = ""
        if not holds:
            verdict = (
                f"; fewer than {self.min_seeds} seeds: cannot be told from noise"
                if few
                else ("; within noise" if d > 0 else "; does not grow")
            )
        return holds, (
            f"gap (jest - independent) {series}; change {d:+.4f} vs larger std "
            f"{spread:.4f}{verdict}"
        )


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _matches(info: dict[str, Any], want: dict[str, Any]) -> bool:
    if (info.get("tags") or {}).get("sweep"):
        return False
    if (info.get("kind") or "learner") != want.get("kind", "learner"):
        return False
    for key in ("family", "selection"):
        if want.get(key) is not None and info.get(key) != want[key]:
            return False
    if want.get("criterion") is not None:
        crit = (info.get("criterion") or "learnability").replace("-", "_")
        if crit != want["criterion"]:
            return False
    if want.get("filter_ratio") is not None:
        f = info.get("filter_ratio")
        if f is None or abs(float(f) - want["filter_ratio"]) > 1e-9:
            return False
    if "curated_reference" in want:
        ref = info.get("reference") or ""
        if ("uncurated" in ref) == want["curated_reference"]:
            return False
    return True


def _label(want: dict[str, Any]) -> str:
    parts = [want.get("selection") or "any selector"]
    if want.get("criterion") and want["criterion"] != "learnability":
        parts.append(want["criterion"])
    if want.get("filter_ratio") is not None:
        parts.append(f"f={want['filter_ratio']:g}")
    if want.get("family"):
        parts.append(f"({want['family']})")
    if want.get("curated_reference") is False:
        parts.append("with an uncurated reference")
    return " ".join(parts)


def _censored_steps(m: dict[str, Any]) -> list[float]:
    return [float(m["steps"]) if s is None else float(s) for s in m["steps_to_target_per_seed"]]


def gap(joint: dict[str, Any], indep: dict[str, Any]) -> dict[str, Any]:
    """Joint - independent final-metric gap with its spread.

    Paired by seed when both ran the same seeds (std of the per-seed differences), otherwise
    the difference of means with std sqrt(std_j^2 + std_i^2).
    """
    pj = dict(zip(joint["seed_ids"], joint["final_metric_per_seed"], strict=True))
    pi = dict(zip(indep["seed_ids"], indep["final_metric_per_seed"], strict=True))
    common = sorted(set(pj) & set(pi))
    if common and len(common) == len(pj) == len(pi):
        g, s = mean_std([pj[k] - pi[k] for k in common])
        paired = True
    else:
        g = joint["final_metric"] - indep["final_metric"]
        s = math.hypot(joint["final_metric_std"], indep["final_metric_std"])
        paired = False
    return {
        "gap": g,
        "gap_std": s,
        "paired": paired,
        "seeds": min(joint["seeds"], indep["seeds"]),
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
        {"x": b, **gap(slot["jest"], slot["independent"])}
        for b, slot in sorted(by_b.items())
        if "jest" in slot and "independent" in slot
    ]


def _fmt_final(m: dict[str, Any]) -> str:
    return f"{m['final_metric']:.4f} ± {m['final_metric_std']:.4f} (n={m['seeds']})"


def _fmt_steps(m: dict[str, Any]) -> str:
    per = m["steps_to_target_per_seed"] or []
    seeds = "/".join("never" if s is None else str(s) for s in per)
    return f"{_fmt_opt(m['steps_to_target'])} (per seed {seeds})"


def _fmt_opt(v: float | None, spec: str = "") -> str:
    return "never" if v is None else format(v, spec)


def _fmt_x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot state, no backend switching)


@dataclass
class Plot:
    file: str
    title: str
    caption: str


def _figure(ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5 * ncols if ncols > 1 else 8.5, 5.0), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _colors(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A stable colour per method, distinct within its family (baselines are drawn black)."""
    from matplotlib import colormaps

    out: dict[str, Any] = {}
    for fam in sorted({m["family"] for m in methods.values()}):
        names = sorted(n for n, m in methods.items() if m["family"] == fam and m["baseline"] != n)
        cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
        out |= {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    return out


def _aligned(
    runs: Sequence[Run], series: Callable[[Run], list[dict[str, float]]], x: str, y: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """x (mean over seeds) and y [seeds, points] at the steps every seed logged."""
    per_run = [{int(p["step"]): p for p in series(r)} for r in runs]
    per_run = [d for d in per_run if d]
    if not per_run:
        return None
    common = sorted(set.intersection(*(set(d) for d in per_run)))
    if not common:
        return None
    xs = np.array([[d[s][x] for s in common] for d in per_run], dtype=float).mean(0)
    ys = np.array([[d[s][y] for s in common] for d in per_run], dtype=float)
    return xs, ys


def _band(
    ax: Any, xs: np.ndarray, ys: np.ndarray, label: str | None, color: Any, **kw: Any
) -> None:
    mean = np.nanmean(ys, axis=0)
    text = "_nolegend_" if label is None else f"{label} (n={len(ys)})"
    ax.plot(xs, mean, label=text, color=color, **kw)
    if len(ys) > 1:
        ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.15, lw=0)


def _smooth(v: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(v) < window:
        return v
    kernel = np.ones(window) / window
    pad = np.concatenate([np.full(window - 1, v[0]), v])
    return np.convolve(pad, kernel, mode="valid")


def _step_series(keys: Sequence[str]) -> Callable[[Run], list[dict[str, float]]]:
    def series(run: Run) -> list[dict[str, float]]:
        out = []
        for r in run.step_lines():
            point = {"step": r["step"], **{k: _finite(r.get(k)) for k in keys}}
            if not all(math.isnan(point[k]) for k in keys):
                out.append(point)
        return out

    return series


class Plotter:
    """Writes the report's figures into ``plots/``; each method returns the Plot it wrote, or None."""

    def __init__(
        self, out_dir: Path, methods: dict[str, dict[str, Any]], metric: str, runs: Sequence[Run]
    ):
        self.out_dir = out_dir
        self.methods = methods
        self.metric = metric
        self.short = metric.split("/")[-1]
        self.colors = _colors(methods)
        self.runs = runs

    def _save(self, fig: Any, file: str, title: str, caption: str) -> Plot:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.out_dir / file, format="png")
        return Plot(f"plots/{file}", title, caption)

    def _main(self, family: str, *, scoring_only: bool = False) -> list[str]:
        names = [
            n
            for n, m in self.methods.items()
            if m["family"] == family and m["kind"] == "learner" and not m["tags"].get("sweep")
        ]
        if scoring_only:
            names = [n for n in names if self.methods[n]["selection"] not in (None, "uniform")]
        return sorted(names)

    def _style(self, name: str) -> dict[str, Any]:
        m = self.methods[name]
        if m["baseline"] == name:
            return {"color": "black", "lw": 2.2}
        return {"color": self.colors[name], "lw": 1.6}

    def curves(self, family: str, x: str) -> Plot | None:
        names = self._main(family)
        xlabel = {
            "step": "learner steps (optimizer updates)",
            "examples": "training examples seen (selected, not scored)",
        }[x]
        fig, (ax,) = _figure()
        drawn = 0
        for n in names:
            data = _aligned(self.methods[n]["_runs"], self._evals, x, "value")
            if data is None:
                continue
            _band(ax, *data, n, **self._style(n))
            drawn += 1
        if not drawn:
            return None
        self._target_lines(ax, names, with_refs=(x == "step"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{self.short} (held-out eval)")
        what = "learner steps" if x == "step" else "examples seen"
        ax.set_title(f"{self.short} vs {what} ({family} family; mean, min-max band over seeds)")
        ax.legend(fontsize=7, loc="lower right")
        file = f"{self.short}_vs_{'steps' if x == 'step' else 'examples'}_{family}.png"
        cap = (
            "a curve left of the black baseline reaching the dotted target line sooner is the "
            "speed-up; the band is the min-max over seeds"
        )
        if x == "examples":
            cap = (
                "the same curves per training example: selection does not change the examples "
                "trained on per step, so this mirrors the steps plot"
            )
        return self._save(fig, file, f"{self.short} vs {what} ({family})", cap)

    def _target_lines(self, ax: Any, names: Sequence[str], with_refs: bool) -> None:
        bases = sorted({self.methods[n]["baseline"] for n in names} - {None})
        for b in bases:
            if b in self.methods:
                ax.axhline(
                    self.methods[b]["final_metric"],
                    color="black",
                    ls=":",
                    lw=1,
                    label=f"target: {b} final",
                )
        if with_refs:
            refs = sorted({self.methods[n].get("reference") for n in names} - {None})
            styles = ["-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)), (0, (3, 3))]
            for i, r in enumerate(r for r in refs if r in self.methods):
                ax.axhline(
                    self.methods[r]["final_metric"],
                    color="dimgrey",
                    ls=styles[i % len(styles)],
                    lw=1.2,
                    label=f"{r} (reference) final",
                )

    def _evals(self, run: Run) -> list[dict[str, float]]:
        return eval_points(run.records, self.metric)

    def curves_flops(self, family: str) -> Plot | None:
        names = self._main(family)
        fig, axes = _figure(2)
        drawn = 0
        for n in names:
            m = self.methods[n]
            data = _aligned(m["_runs"], self._evals, "flops", "value")
            if data is None:
                continue
            xs, ys = data
            keep = xs > 0
            if not keep.any():
                continue
            _band(axes[0], xs[keep], ys[:, keep], n, **self._style(n))
            ref = m["reference_training_flops"] if m.get("reference") else 0.0
            if ref is not None:
                _band(axes[1], xs[keep] + ref, ys[:, keep], n, **self._style(n))
            drawn += 1
        if not drawn:
            return None
        for ax, title in zip(
            axes,
            (
                "learner training + scoring + reference inference",
                "... + the reference model's training",
            ),
            strict=True,
        ):
            self._target_lines(ax, names, with_refs=False)
            ax.set_xscale("log")
            ax.set_xlabel("total FLOPs (log scale)")
            ax.set_ylabel(f"{self.short} (held-out eval)")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{self.short} vs total compute ({family} family)")
        return self._save(
            fig,
            f"{self.short}_vs_flops_{family}.png",
            f"{self.short} vs total FLOPs ({family})",
            "compare where each curve crosses the target line: left of the baseline means the "
            "selection paid for its scoring; the right panel adds the reference's training cost",
        )

    def noisy_fraction(self, family: str) -> Plot | None:
        names = self._main(family)
        fig, (ax,) = _figure()
        drawn, pool = 0, []
        series = _step_series(["noisy_selected_frac", "noisy_pool_frac"])
        for n in names:
            data = _aligned(self.methods[n]["_runs"], series, "step", "noisy_selected_frac")
            if data is None:
                continue
            xs, ys = data
            w = max(1, len(xs) // 50)
            ys = np.stack([_smooth(y, w) for y in ys])
            _band(ax, xs, ys, n, **self._style(n))
            p = self.methods[n]["noisy_pool_frac"]
            if p is not None:
                pool.append(p)
            drawn += 1
        if not drawn:
            return None
        if pool:
            ax.axhline(
                float(np.mean(pool)), color="grey", ls="--", lw=1, label="pool's noisy fraction"
            )
        ax.set_xlabel("learner steps")
        ax.set_ylabel("fraction of the selected batch marked noisy")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Noisy examples selected over training ({family} family; moving average)")
        ax.legend(fontsize=7)
        return self._save(
            fig,
            f"noisy_selected_{family}.png",
            f"noisy examples selected ({family})",
            "a scoring selector should sit well below the dashed pool fraction (uniform sits on "
            "it); watch whether it drifts up as the learner catches up with the reference",
        )

    def joint_terms(self, family: str) -> Plot | None:
        names = [
            n
            for n in self._main(family, scoring_only=True)
            if any("sel/joint_term_spread" in r for r in self.methods[n]["_runs"][0].step_lines())
        ]
        if not names:
            return None
        fig, axes = _figure(2)
        keys = (
            ("sel/joint_term_spread", "sel/example_score_spread"),
            ("sel/learner_neg_loss_selected", "sel/reference_neg_loss_selected"),
        )
        for ax, (k1, k2) in zip(axes, keys, strict=True):
            series = _step_series([k1, k2])
            for n in names:
                color = self._style(n)["color"]
                for key, ls in ((k1, "-"), (k2, "--")):
                    data = _aligned(self.methods[n]["_runs"], series, "step", key)
                    if data is None or np.isnan(data[1]).all():
                        continue
                    xs, ys = data
                    w = max(1, len(xs) // 50)
                    ys = np.stack([_smooth(y, w) for y in ys])
                    # One legend entry per method (its colour); the line style is in the title.
                    _band(ax, xs, ys, n if ls == "-" else None, color, ls=ls, lw=1.4)
            ax.set_xlabel("learner steps")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("std over the selected batch (score units)")
        axes[0].set_title("joint terms (solid) vs per-example scores (dashed)", fontsize=10)
        axes[1].set_ylabel("mean negative-pair sigmoid loss in the selected batch")
        axes[1].set_yscale("log")
        axes[1].set_title("negative-pair losses: learner (solid), reference (dashed)", fontsize=10)
        fig.suptitle(f"Did the joint terms have anything to work with? ({family} family)")
        return self._save(
            fig,
            f"joint_terms_{family}.png",
            f"joint-term diagnostics ({family})",
            "joint selection can only differ from independent where the solid joint-term spread "
            "is comparable to the dashed per-example spread; the right panel shows why (tiny "
            "negative-pair losses make tiny joint terms)",
        )

    def batch_sweep(self, family: str) -> Plot | None:
        points = batch_sweep(self.methods, family)
        if not points:
            return None
        fig, axes = _figure(2)
        bs = np.array([p["x"] for p in points], dtype=float)
        for key, label, color in (("joint", "jest", "C0"), ("independent", "independent", "C1")):
            axes[0].errorbar(
                bs,
                [p[key] for p in points],
                yerr=[p[f"{key}_std"] for p in points],
                marker="o",
                capsize=3,
                color=color,
                label=f"{label} f=0.8",
            )
        axes[1].errorbar(
            bs,
            [p["gap"] for p in points],
            yerr=[p["gap_std"] for p in points],
            marker="o",
            capsize=3,
            color="C2",
            label="jest - independent (± std over seeds)",
        )
        axes[1].axhline(0, color="black", lw=0.8)
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("training batch size b (log2)")
            ax.legend(fontsize=8)
        axes[0].set_ylabel(f"final {self.short}")
        axes[0].set_title("final metric (mean ± std over seeds)", fontsize=10)
        axes[1].set_ylabel(f"final {self.short} gap")
        axes[1].set_title("joint - independent gap", fontsize=10)
        fig.suptitle(f"Batch-size sweep ({family} family)")
        return self._save(
            fig,
            f"batch_sweep_{family}.png",
            f"batch-size sweep ({family})",
            "the joint terms are sums over the selected batch, so the gap should grow with b; "
            "an error bar crossing zero means no measurable difference at that b",
        )

    def bias_init(self, family: str) -> Plot | None:
        ablated = sorted(
            n
            for n, m in self.methods.items()
            if m["tags"].get("sweep") == "bias_init" and m["family"] == family
        )
        if not ablated:
            return None
        fig, (ax,) = _figure()
        main = self._main(family)
        for n in ablated:
            m = self.methods[n]
            color = self.colors[n]
            data = _aligned(m["_runs"], self._evals, "step", "value")
            if data is not None:
                bias = m["tags"].get("bias_init", m["tags"].get("bias"))
                _band(ax, *data, f"{n} (bias init {bias})", color)
            twin = next(
                (
                    t
                    for t in main
                    if all(
                        self.methods[t].get(k) == m.get(k)
                        for k in ("selection", "criterion", "filter_ratio", "batch_size")
                    )
                ),
                None,
            )
            if twin is not None:
                data = _aligned(self.methods[twin]["_runs"], self._evals, "step", "value")
                if data is not None:
                    _band(ax, *data, f"{twin} (default bias init)", color, ls="--")
        ax.set_xlabel("learner steps")
        ax.set_ylabel(f"{self.short} (held-out eval)")
        ax.set_title(f"Bias-initialisation ablation ({family} family)")
        ax.legend(fontsize=7, loc="lower right")
        return self._save(
            fig,
            f"bias_init_{family}.png",
            f"bias-init ablation ({family})",
            "solid: the ablated bias init, dashed: the default (-10) with the same selector; a "
            "larger effect on jest than on uniform means the bias mattered to the joint terms",
        )

    def overhead(self, family: str) -> Plot | None:
        names = [
            n
            for n in self._main(family)
            if self.methods[n]["wall_ratio_vs_baseline"] is not None
            and self.methods[n]["flop_ratio_vs_baseline"] is not None
        ]
        if not names:
            return None
        fig, (ax,) = _figure()
        xs = [self.methods[n]["flop_ratio_vs_baseline"] for n in names]
        ys = [self.methods[n]["wall_ratio_vs_baseline"] for n in names]
        for n, x, y in zip(names, xs, ys, strict=True):
            ax.scatter([x], [y], color=self._style(n)["color"], s=40, zorder=3)
            ax.annotate(n, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        hi = max(max(xs), max(ys)) * 1.15
        grid = np.linspace(0, hi, 50)
        ax.plot(grid, grid, color="grey", lw=1, label="wall ratio = FLOP ratio")
        ax.fill_between(grid, grid * 0.75, grid * 1.25, color="grey", alpha=0.12, label="± 25%")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("FLOPs per step / baseline's (analytic FLOP model)")
        ax.set_ylabel("median wall time per step / baseline's (measured)")
        ax.set_title(f"Per-step cost: measured vs FLOP model ({family} family)")
        ax.legend(fontsize=8, loc="upper left")
        return self._save(
            fig,
            f"step_cost_{family}.png",
            f"per-step wall time vs FLOPs ({family})",
            "points above the diagonal cost more wall time than the FLOP model predicts "
            "(selection, lookups and Python overhead are not FLOPs); the runs of a suite share "
            "one machine but not one moment, so treat this as indicative",
        )

    def all(self) -> list[Plot]:
        families = sorted({m["family"] for m in self.methods.values() if m["kind"] == "learner"})
        plots: list[Plot] = []
        for fam in families:
            for make in (
                lambda f: self.curves(f, "step"),
                lambda f: self.curves(f, "examples"),
                self.curves_flops,
                self.noisy_fraction,
                self.joint_terms,
                self.batch_sweep,
                self.bias_init,
                self.overhead,
            ):
                plot = make(fam)
                if plot is not None:
                    plots.append(plot)
        return plots


# ----------------------------------------------------------------------------------------------
# The report


def build_report(suite_dir: str | Path, min_seeds: int = 2, plots: bool = True) -> dict[str, Any]:
    """Write report.json, report.md and plots/*.png into ``suite_dir``; return the report dict.

    ``min_seeds``: finished seeds each compared method needs before a claim can hold (with one
    seed there is no spread to beat). ``plots=False`` skips the figures (faster; for scripts).
    """
    check(
        isinstance(min_seeds, int) and min_seeds >= 1,
        f"min_seeds must be an int >= 1, got {min_seeds!r}",
    )
    suite_dir = Path(suite_dir)
    suite, runs = load_suite(suite_dir)
    metric = suite.get("target_metric") or DEFAULT_METRIC
    methods = compute_methods(runs, metric)
    claims_eval = Claims(methods, runs, min_seeds=min_seeds, metric_name=metric.split("/")[-1])
    claims = claims_eval.evaluate()
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
    notes = _notes(runs, methods, metric)
    report = {
        "target_metric": metric,
        "suite_dir": str(suite_dir),
        "min_seeds": min_seeds,
        "methods": {
            n: {k: v for k, v in m.items() if not k.startswith("_")} for n, m in methods.items()
        },
        "claims": claims,
        "batch_sweep": batch_sweep(methods, fam),
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
        if m.get("reference") and m["reference_training_flops"] is None:
            notes.append(
                f"method {name}: its reference {m['reference']!r} has no finished run, so "
                "FLOPs with reference training are unknown"
            )
    return notes


def _cell(v: Any, spec: str = "") -> str:
    if v is None:
        return "–"
    return format(v, spec) if spec else str(v)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md from the report dict (only what the dict holds: never a number of its own)."""
    metric = report["target_metric"]
    short = metric.split("/")[-1]
    runs = report["runs"]
    done = sum(r["status"] == "finished" for r in runs)
    lines = [
        "# JEST reproduction report",
        "",
        f"Suite `{report['suite_dir']}`: {done} of {len(runs)} runs finished. Target metric: "
        f"`{metric}` (held-out, full resolution). Every number below is read from the runs' "
        "`metrics.jsonl`; see `report.json` for all of them.",
        "",
    ]
    unfinished = report["unfinished_runs"]
    if unfinished:
        lines += [
            "**Unfinished runs (left out of every statistic):** "
            + ", ".join(
                f"{r['name']} ({r['status']}, step {_cell(r['last_step'])})" for r in unfinished
            ),
            "",
        ]
    lines += [
        "## Claims (JEST.md §5, at this scale)",
        "",
        "| # | claim | measured | holds |",
        "|---|---|---|---|",
    ]
    for c in report["claims"]:
        holds = (
            "**yes**" if c["holds"] else ("not measured" if c["status"] == "not measured" else "no")
        )
        lines.append(f"| {c['id']} | {c['claim']} | {c['measured']} | {holds} |")
    lines += [
        "",
        f"A comparison of final metrics holds when the difference of means exceeds the larger of "
        f"the two standard deviations over seeds; a steps comparison likewise on per-seed steps "
        f"(a seed that never reaches counts at its run length); a threshold (speed-up, FLOPs) "
        f"holds when every seed meets it. Each side needs at least {report['min_seeds']} finished "
        "seeds: with fewer there is no spread, and the claim is reported as not holding.",
        "",
        "## Methods",
        "",
        f"| method | seeds | final {short} (mean ± std) | baseline | steps to target (per seed) "
        "| speed-up | baseline reached own final at | FLOPs to target | + reference training "
        "| FLOP speed-up | noisy selected |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        per = m["steps_to_target_per_seed"]
        per_txt = (
            ""
            if per is None
            else " (" + "/".join(_cell(s) if s is not None else "never" for s in per) + ")"
        )
        lines.append(
            f"| {name}{' (baseline)' if m['baseline'] == name else ''} | {m['seeds']} "
            f"| {m['final_metric']:.4f} ± {m['final_metric_std']:.4f} | {_cell(m['baseline'])} "
            f"| {_cell(m['steps_to_target'])}{per_txt} | {_cell(m['speedup'], '.2f')} "
            f"| {_cell(m['baseline_steps_to_own_final'])} | {_cell(m['flops_to_target'], '.3g')} "
            f"| {_cell(m['flops_to_target_with_ref_training'], '.3g')} "
            f"| {_cell(m['flops_speedup'], '.2f')} | {_cell(m['noisy_selected_frac'], '.3f')} |"
        )
    lines += [
        "",
        "Target = the baseline's final metric (mean over its seeds). Steps to target: the first "
        "evaluated step at which a seed reaches it; the column gives the upper median over seeds "
        "('–' when that median seed never reached it). Speed-up = the baseline's run length / "
        "steps to target. FLOPs count learner training, learner scoring and reference inference "
        "(the one-off reference cache build included); '+ reference training' adds the "
        "reference model's own training run. FLOP speed-up = the baseline's total FLOPs / FLOPs to "
        "target.",
        "",
    ]
    if report["batch_sweep"]:
        lines += [
            "## Batch-size sweep (joint - independent, f=0.8)",
            "",
            "| b | jest | independent | gap ± std | seeds | paired |",
            "|---|---|---|---|---|---|",
        ]
        for p in report["batch_sweep"]:
            lines.append(
                f"| {p['x']} | {p['joint']:.4f} ± {p['joint_std']:.4f} "
                f"| {p['independent']:.4f} ± {p['independent_std']:.4f} "
                f"| {p['gap']:+.4f} ± {p['gap_std']:.4f} | {p['seeds']} | {p['paired']} |"
            )
        lines.append("")
    if report["plots"]:
        lines += ["## Plots", ""]
        for p in report["plots"]:
            lines += [
                f"### {p['title']}",
                "",
                f"![{p['title']}]({p['file']})",
                "",
                p["caption"],
                "",
            ]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


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
