"""JEST.md §5's claims, evaluated against the measured methods (and their formatting)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jestkit.report.stats import _ratio, batch_sweep, gap, mean_std
from jestkit.report.suite import DEFAULT_METRIC, Run

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
