"""JEST.md §5's claims, evaluated against the measured methods (and their formatting).

Every claim is decided by a paired comparison over seeds (``jestkit.report.inference``): holds
when the 95% interval clears the claim's threshold, does not hold when it lies short of it,
undecided otherwise. The thresholds are written once, below, with their source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jestkit.report.inference import all_of, censor, compare, decide, fmt_cmp, verdict_word
from jestkit.report.stats import batch_sweep, gap
from jestkit.report.suite import DEFAULT_METRIC, Run


@dataclass(frozen=True)
class Threshold:
    """A claim's threshold: the value the compared quantity must exceed, and where it is from."""

    value: float
    scale: str  # "ratio": a speed-up or ratio (x); "difference": metric units
    source: str


# The paper's figures, as ../shared/JEST.md §5 states them. Written only here.
_FIG = "JEST.md §5: filtering 50% / 80% / 90% reaches a 3B-example uniform run's final quality"
THRESHOLDS: dict[str, Threshold] = {
    "1a": Threshold(3.0, "ratio", f"{_FIG} after 1B examples (3x fewer) at f = 0.8"),
    "1b": Threshold(4.5, "ratio", f"{_FIG} after 0.67B examples (4.5x fewer) at f = 0.9"),
    "1c": Threshold(1.5, "ratio", f"{_FIG} after 2B examples (1.5x fewer) at f = 0.5"),
    "2": Threshold(
        1.0, "ratio", "JEST.md §5: 2B > 1B > 0.67B examples as f goes 0.5 > 0.8 > 0.9 (each "
        "step to a higher f is faster: steps ratio > 1; the magnitudes are claims 1a-1c)"
    ),
    "3a": Threshold(0.0, "difference", "JEST.md §5: joint beats independent selection"),
    "3b": Threshold(1.0, "ratio", "JEST.md §5: joint beats independent selection (in steps)"),
    "3c": Threshold(
        0.0, "difference", "the joint terms are sums over the batch (JEST.md §2), so the gap "
        "should grow with b; not a figure of the paper"
    ),
    "3d": Threshold(0.0, "difference", "JEST.md §5: the joint - independent gap grows with f"),
    "4": Threshold(
        0.0, "difference", "JEST.md §5: learnability beats easy-reference, which beats "
        "hard-learner"
    ),
    "5a": Threshold(
        1.0, "ratio", "JEST.md §5: low-resolution scoring keeps the speed-up at a fraction of "
        "the scoring cost; at this scale: fewer total FLOPs than uniform (any saving)"
    ),
    "5b": Threshold(
        0.5, "ratio", "JEST.md §5: 'keeps most of the speed-up'; most read as >= 1/2 (no "
        "figure in the paper)"
    ),
    "6a": Threshold(0.0, "difference", "JEST.md §5: the learner ends up better than its reference"),
    "6b": Threshold(
        0.0, "difference", "JEST.md §5: a reference trained on uncurated data helps little"
    ),
}  # fmt: skip

# (claim id, filter ratio) of the iteration speed-up claims, each against THRESHOLDS[id].
SPEEDUP_CLAIMS = (("1a", 0.8), ("1b", 0.9), ("1c", 0.5))

# A rule's result: the verdict, the text for "measured", and the comparisons it rests on.
Result = tuple["bool | None", str, list[dict[str, Any]]]

# ----------------------------------------------------------------------------------------------
# Claims


@dataclass
class Claims:
    """Evaluates JEST.md §5's claims against the measured methods; ``min_seeds`` pairs to decide."""

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

    def _decide(self, cmp: dict[str, Any], threshold: float) -> tuple[bool | None, str]:
        """The verdict and, when undecided for want of seeds, why."""
        v = decide(cmp, threshold, self.min_seeds)
        if cmp["n"] < max(2, self.min_seeds):
            return v, f" (fewer than {max(2, self.min_seeds)} seeds to compare: undecided)"
        if cmp["ci"] is None:
            return v, f" (no interval: {cmp['test']})"
        return v, ""

    # -- the decision rules
    def higher_final(self, a: str, b: str, threshold: float = 0.0) -> Result:
        """a's final metric minus b's, paired by seed, against ``threshold``."""
        ma, mb = self.methods[a], self.methods[b]
        cmp = compare(ma["_final_by_seed"], mb["_final_by_seed"], "difference")
        v, why = self._decide(cmp, threshold)
        text = (
            f"{a} {_fmt_final(ma)} vs {b} {_fmt_final(mb)}: difference {fmt_cmp(cmp)} -> "
            f"{verdict_word(v)}{why}"
        )
        return v, text, [cmp]

    def above_fixed(self, a: str, ref: str, threshold: float = 0.0) -> Result:
        """a's final metric minus the final of the one reference run it scored with.

        Every learner seed scored with the same reference model, so that model's final metric
        is a fixed value here; the interval comes from the learner's seeds.
        """
        ma, mr = self.methods[a], self.methods[ref]
        run = _scored_with(ma, mr)
        value = mr["_final_by_seed"][mr["seed_ids"][mr["runs"].index(run)]]
        cmp = compare(ma["_final_by_seed"], value, "difference")
        v, why = self._decide(cmp, threshold)
        text = (
            f"{a} {_fmt_final(ma)} vs the reference it scored with ({run}) {value:.4f} "
            f"(the reference method over its seeds: {_fmt_final(mr)}): difference "
            f"{fmt_cmp(cmp)} -> {verdict_word(v)}{why}"
        )
        return v, text, [cmp]

    def fewer_steps(self, a: str, b: str, threshold: float = 1.0) -> Result:
        """b's steps to the (shared) baseline target over a's, paired by seed: > ``threshold``.

        A seed that never reached the target counts at its run length, a lower bound on its
        true steps: it can only keep a verdict from being proven, never flip one (``censor``).
        """
        ma, mb = self.methods[a], self.methods[b]
        if ma["target"] is None or mb["target"] is None:
            return None, f"not measured: no baseline for {a if ma['target'] is None else b}", []
        ta, na = _censored_steps(ma)
        tb, nb = _censored_steps(mb)
        cmp = compare(tb, ta, "ratio")
        cmp["never_reached"] = {a: na, b: nb}
        v, why = self._decide(cmp, threshold)
        v = censor(v, value_may_be_lower=bool(na), value_may_be_higher=bool(nb))
        text = (
            f"steps to target {a} {_fmt_steps(ma)} vs {b} {_fmt_steps(mb)}: {b}/{a} "
            f"{fmt_cmp(cmp)} -> {verdict_word(v)}{why}{_never_note(na, nb, a, b)}"
        )
        return v, text, [cmp]

    def speedup_at_least(self, a: str, factor: float) -> Result:
        """a's per-seed speed-up over its baseline, >= ``factor`` against both yardsticks.

        The yardsticks: the baseline's run length, and the least of that and where the baseline
        (or one of its frontier runs) first reached the target. A baseline that plateaus early
        cannot flatter a method: copies of it get a speed-up of 1.
        """
        m = self.methods[a]
        base = m["baseline"]
        if m["target"] is None or base not in self.methods:
            return None, f"not measured: {a}'s baseline {base!r} has no finished run", []
        strict = m["vs_baseline"]["speedup"]
        length = m["vs_baseline"]["speedup_vs_run_length"]
        never = strict.get("never_reached") or []
        vs = []
        for cmp in (strict, length):
            v, why = self._decide(cmp, factor)
            vs.append((censor(v, value_may_be_lower=bool(never), value_may_be_higher=False), why))
        verdict = all_of([v for v, _ in vs])
        text = (
            f"{a} reached {base}'s final {m['target']:.4f} at step {_fmt_steps(m)}; {base} "
            f"reached it (itself or a frontier run, else its run length) at "
            f"{_fmt_seeds(m['baseline_steps_to_target_per_seed'], none='unpaired')} of {m['baseline_steps']} "
            f"steps. Speed-up vs that {fmt_cmp(strict)}; vs {base}'s run length "
            f"{fmt_cmp(length)}; needed {factor:g}x against both -> {verdict_word(verdict)}"
            f"{vs[0][1]}{_never_note(never, [], a, base)}"
        )
        return verdict, text, [strict, length]

    def fewer_flops(self, a: str, threshold: float = 1.0) -> Result:
        """a's FLOPs to the target against the baseline's, both yardsticks as for steps."""
        m = self.methods[a]
        base = m["baseline"]
        if m["target"] is None or base not in self.methods:
            return None, f"not measured: {a}'s baseline {base!r} has no finished run", []
        strict = m["vs_baseline"]["flops_speedup"]
        total = m["vs_baseline"]["flops_speedup_vs_total"]
        never = strict.get("never_reached") or []
        vs = []
        for cmp in (strict, total):
            v, why = self._decide(cmp, threshold)
            vs.append((censor(v, value_may_be_lower=bool(never), value_may_be_higher=False), why))
        verdict = all_of([v for v, _ in vs])
        with_ref = m["vs_baseline"].get("flops_speedup_with_ref_training")
        text = (
            f"{a} FLOPs to {base}'s final: {_fmt_seeds(m['flops_to_target_per_seed'], '.3g')} "
            f"vs {base}'s (where it or a frontier run reached it, else its total) "
            f"{_fmt_seeds(m['baseline_flops_to_target_per_seed'], '.3g', 'unpaired')}: ratio "
            f"{fmt_cmp(strict)}; vs {base}'s total {fmt_cmp(total)} -> {verdict_word(verdict)}"
            f"{vs[0][1]}; with the reference's training "
            f"{fmt_cmp(with_ref) if with_ref else 'n/a (no reference used or measured)'}"
            f"{_never_note(never, [], a, base)}"
        )
        return verdict, text, [strict, total]

    def keeps_speedup(self, a: str, full: str, share: float) -> Result:
        """a keeps >= ``share`` of full's speed-up: full's steps to target / a's, paired."""
        ma, mf = self.methods[a], self.methods[full]
        if ma["target"] is None or mf["target"] is None:
            return None, f"not measured: no baseline for {a if ma['target'] is None else full}", []
        ta, na = _censored_steps(ma)
        tf, nf = _censored_steps(mf)
        if len(nf) == mf["seeds"]:
            return None, f"{full} never reached its target: no step speed-up to keep", []
        cmp = compare(tf, ta, "ratio")
        v, why = self._decide(cmp, share)
        v = censor(v, value_may_be_lower=bool(na), value_may_be_higher=bool(nf))
        text = (
            f"speed-up {a} {_fmt_x(ma['speedup'])} vs {full} {_fmt_x(mf['speedup'])} (same "
            f"baseline, so the share kept is {full}'s steps to target / {a}'s): "
            f"{fmt_cmp(cmp)}, needed >= {share:g} -> {verdict_word(v)}{why}"
            f"{_never_note(na, nf, a, full)}"
        )
        return v, text, [cmp]

    # -- the claims
    def evaluate(self) -> list[dict[str, Any]]:
        fam = self.main_family()
        claims: list[dict[str, Any]] = []

        def add(cid: str, claim: str, result: Result, methods: Sequence[str | None]):
            holds, measured, cmps = result
            claims.append(_record(cid, claim, holds, measured, cmps, methods))

        def jest(f: float, **kw: Any) -> tuple[str | None, str]:
            want = dict(family=fam, selection="jest", criterion="learnability", filter_ratio=f)
            want.update(kw)
            if "curated_reference" not in want:
                want["curated_reference"] = True
            return self.find(f"{_label(want)}", **want)

        def missing(*found: tuple[str | None, str]) -> Result | None:
            why = [w for n, w in found if n is None]
            return (None, "; ".join(why), []) if why else None

        def both(r1: Result, r2: Result) -> Result:
            return all_of([r1[0], r2[0]]), f"{r1[1]}. {r2[1]}", r1[2] + r2[2]

        # 1. Iteration speed-up at f = 0.8, 0.9 and 0.5.
        for cid, f in SPEEDUP_CLAIMS:
            factor = THRESHOLDS[cid].value
            j = jest(f)
            claim = (
                f"JEST at f={f} reaches the uniform baseline's final {self.metric_name} in "
                f"<= 1/{factor:g} of its steps"
            )
            add(cid, claim, missing(j) or self.speedup_at_least(j[0], factor), [j[0]])

        # 2. More aggressive filtering helps.
        js = [jest(f) for f in (0.5, 0.8, 0.9)]
        thr = THRESHOLDS["2"].value
        res = missing(*js) or both(
            self.fewer_steps(js[1][0], js[0][0], thr), self.fewer_steps(js[2][0], js[1][0], thr)
        )
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
            missing(j8, i8) or self.higher_final(j8[0], i8[0], THRESHOLDS["3a"].value),
            [j8[0], i8[0]],
        )
        add(
            "3b",
            "Joint beats independent selection at f=0.8 (fewer steps to target)",
            missing(j8, i8) or self.fewer_steps(j8[0], i8[0], THRESHOLDS["3b"].value),
            [j8[0], i8[0]],
        )
        sweep = batch_sweep(self.methods, fam)
        add(
            "3c",
            "The joint - independent gap (final metric) grows with the batch size b",
            self.gap_grows(sweep, "b", THRESHOLDS["3c"].value),
            [n for p in sweep for n in p["methods"]],
        )
        by_f = self.gap_by_filter_ratio(fam)
        if len(by_f) >= 2:
            add(
                "3d",
                "The joint - independent gap (final metric) grows with the filtering ratio f",
                self.gap_grows(by_f, "f", THRESHOLDS["3d"].value),
                [n for p in by_f for n in p["methods"]],
            )

        # 4. Learnability > easy reference > hard learner.
        crit = {
            c: jest(0.8, criterion=c) for c in ("learnability", "easy_reference", "hard_learner")
        }
        for c in ("easy_reference", "hard_learner"):  # any selector if no jest run of it
            if crit[c][0] is None:
                alt = self.find(c, family=fam, criterion=c, filter_ratio=0.8)
                if alt[0] is not None:
                    crit[c] = alt
        thr = THRESHOLDS["4"].value
        res = missing(*crit.values()) or both(
            self.higher_final(crit["learnability"][0], crit["easy_reference"][0], thr),
            self.higher_final(crit["easy_reference"][0], crit["hard_learner"][0], thr),
        )
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
            missing(flexi) or self.fewer_flops(flexi[0], THRESHOLDS["5a"].value),
            [flexi[0]],
        )
        add(
            "5b",
            "Flexi-JEST keeps most (>= 1/2) of full-resolution JEST's step speed-up",
            missing(flexi, jvit) or self.keeps_speedup(flexi[0], jvit[0], THRESHOLDS["5b"].value),
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
            missing(j8, ref) or self.above_fixed(j8[0], ref[0], THRESHOLDS["6a"].value),
            [j8[0], ref[0]],
        )
        unc = jest(0.8, curated_reference=False)
        add(
            "6b",
            "A reference trained on uncurated data helps less (uncurated-reference JEST ends "
            "below curated-reference JEST)",
            missing(j8, unc) or self.higher_final(j8[0], unc[0], THRESHOLDS["6b"].value),
            [j8[0], unc[0]],
        )
        return claims

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

    def gap_grows(
        self, points: Sequence[dict[str, Any]], axis: str, threshold: float = 0.0
    ) -> Result:
        """The gap at the largest x minus the gap at the smallest, paired by seed, > threshold.

        Per seed: (jest - independent at the largest x) - (the same at the smallest x); the
        interval needs both gaps paired over >= 2 common seeds, else the claim is undecided.
        """
        if len(points) < 2:
            what = "batch sizes in the sweep" if axis == "b" else "filter ratios"
            return (
                None,
                f"not measured: fewer than two {what} with both jest and independent runs",
                [],
            )
        lo, hi = points[0], points[-1]
        per = [
            dict(zip(p["comparison"]["seeds"], p["comparison"]["values"], strict=True))
            if p["paired"]
            else {}
            for p in (lo, hi)
        ]
        cmp = compare(per[1], per[0], "difference")
        if cmp["estimate"] is None:
            cmp = dict(cmp, estimate=hi["gap"] - lo["gap"], ci=None, test="unpaired gaps")
        v, why = self._decide(cmp, threshold)
        series = ", ".join(f"{axis}={p['x']:g}: {fmt_cmp(p['comparison'])}" for p in points)
        return (
            v,
            (
                f"gap (jest - independent) {series}; change from {axis}={lo['x']:g} to "
                f"{axis}={hi['x']:g}: {fmt_cmp(cmp)} -> {verdict_word(v)}{why}"
            ),
            [cmp],
        )


def _record(
    cid: str,
    claim: str,
    holds: bool | None,
    measured: str,
    cmps: list[dict[str, Any]],
    methods: Sequence[str | None],
) -> dict[str, Any]:
    """A claims-table entry; ``ci``/``n``/``mde`` are those of the comparison that decided it
    (the first that does not hold, else the first undecided, else the first)."""
    not_measured = measured.startswith("not measured")
    thr = THRESHOLDS[cid]
    decisive = None
    if cmps:
        ranked = sorted(
            range(len(cmps)),
            key=lambda i: {False: 0, None: 1, True: 2}[decide(cmps[i], thr.value, 0)],
        )
        decisive = cmps[ranked[0]] if holds is not True else cmps[0]
    return {
        "id": cid,
        "claim": claim,
        "measured": measured,
        "holds": None if not_measured else holds,
        "verdict": "not measured" if not_measured else verdict_word(holds),
        "status": "not measured" if not_measured else "measured",
        "threshold": thr.value,
        "threshold_scale": thr.scale,
        "threshold_source": thr.source,
        "estimate": decisive["estimate"] if decisive else None,
        "ci": decisive["ci"] if decisive else None,
        "n": decisive["n"] if decisive else 0,
        "mde": decisive["mde"] if decisive else None,
        "test": decisive["test"] if decisive else None,
        "comparisons": [{k: v for k, v in c.items()} for c in cmps],
        "methods": [m for m in methods if m],
    }


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


def _censored_steps(m: dict[str, Any]) -> tuple[dict[int, float], list[int]]:
    """Per-seed steps to target, a seed that never reached counted at its run length; and
    the seeds that never reached (their value is a lower bound)."""
    out, never = {}, []
    for seed, s, length in zip(
        m["seed_ids"], m["steps_to_target_per_seed"], m["run_steps_per_seed"], strict=True
    ):
        if s is None:
            never.append(seed)
        out[seed] = float(length if s is None else s)
    return out, never


def _scored_with(m: dict[str, Any], ref: dict[str, Any]) -> str:
    """The reference run a learner scored with: the run named by its ``reference`` field, else
    the reference method's seed 0 (the one `jestkit reproduce` publishes), else its first."""
    if m["reference"] in ref["runs"]:
        return m["reference"]
    if 0 in ref["seed_ids"]:
        return ref["runs"][ref["seed_ids"].index(0)]
    return ref["runs"][0]


def _never_note(na: list[int], nb: list[int], a: str, b: str) -> str:
    parts = [f"{x} never reached it in seed(s) {', '.join(map(str, n))} (counted at its run "
             "length: a bound, so only a verdict it cannot overturn is kept)"
             for x, n in ((a, na), (b, nb)) if n]  # fmt: skip
    return "; " + "; ".join(parts) if parts else ""


def _fmt_seeds(
    values: Sequence[float | None] | None, spec: str = ".0f", none: str = "never"
) -> str:
    """Per-seed values joined by '/' (``none`` for a missing one)."""
    if not values:
        return "n/a"
    return "/".join(none if v is None or math.isnan(v) else format(v, spec) for v in values)


def _fmt_final(m: dict[str, Any]) -> str:
    return f"{m['final_metric']:.4f} ± {m['final_metric_std']:.4f} (n={m['seeds']})"


def _fmt_steps(m: dict[str, Any]) -> str:
    return f"{_fmt_opt(m['steps_to_target'], '.0f')} (per seed {_fmt_seeds(m['steps_to_target_per_seed'])})"


def _fmt_opt(v: float | None, spec: str = "") -> str:
    return "never" if v is None else format(v, spec)


def _fmt_x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"
