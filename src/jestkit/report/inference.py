"""Comparisons over seeds: mean difference, 95% t interval, minimum detectable effect, verdicts.

Why: with 2-5 seeds the old rule ("difference of means > the larger std") called two methods
drawn from the same distribution different 10-17% of the time. Here every comparison is a
t interval over *paired* seeds (seed s of both methods shares initial weights and super-batches,
so most seed-to-seed noise cancels in the per-seed difference), and a claim is decided by where
the interval lies against the claim's threshold:

- holds:          the whole 95% interval is beyond the threshold (lower end > threshold);
- does not hold:  the whole interval is short of it (upper end < threshold);
- undecided:      the interval spans it, or there is no interval (fewer than 2 pairs).

A claim is one-sided, the interval two-sided 95%, so a method that is really no better than the
threshold is called "holds" at most 2.5% of the time (tested by simulation).

Scales: ``difference`` compares a - b (final metrics); ``ratio`` compares a / b on the log scale
(steps, FLOPs, speed-ups: the per-seed log ratios get the t interval, which is exponentiated
back, so the estimate is the geometric mean ratio).

Minimum detectable effect (MDE): the true distance from the threshold that the rule detects with
80% power at this n and spread, ``(t_{0.975, df} + t_{0.80, df}) * SE`` with
``SE = sd_diff / sqrt(n)`` (paired; Welch's SE and df when unpaired). On the ratio scale it is
reported as a factor: a true ratio of threshold * mde is detected with 80% power.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CONFIDENCE = 0.95  # two-sided interval
POWER = 0.80  # for the minimum detectable effect

PAIRED = "paired t over seeds"
WELCH = "Welch t (unpaired: the two methods share fewer than 2 seeds)"
ONE_SAMPLE = "one-sample t against a fixed value"


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (scipy, via scikit-learn)."""
    from scipy.special import stdtrit  # scipy ships with scikit-learn, a jestkit dependency

    if df <= 0 or math.isnan(df):
        return math.nan
    return float(stdtrit(df, p))


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _interval(est: float, se: float, df: float) -> tuple[list[float] | None, float | None]:
    """(95% interval, MDE) for an estimate with standard error ``se`` on ``df`` dof."""
    if df < 1 or math.isnan(se):
        return None, None
    q = t_quantile(0.5 + CONFIDENCE / 2, df)
    mde = (q + t_quantile(POWER, df)) * se
    return [est - q * se, est + q * se], mde


def _transform(v: float, scale: str) -> float:
    if scale == "ratio":
        return math.log(v) if v > 0 else math.nan
    return v


def compare(
    a: Mapping[int, float],
    b: Mapping[int, float] | float,
    scale: str = "difference",
) -> dict[str, Any]:
    """Compare per-seed values ``a`` with ``b`` (per-seed values, or one fixed value).

    Paired over the seeds both have when they share >= 2; otherwise Welch's unpaired interval
    when each side has >= 2 seeds; otherwise no interval. Non-finite (or, on the ratio scale,
    non-positive) values are left out. Returns a JSON-ready dict: ``estimate``, ``ci``, ``n``,
    ``mde``, ``sd`` (of the per-seed differences, log scale for ratios), ``test``, ``scale``,
    ``seeds`` and ``values`` (the per-seed differences or ratios, when paired).
    """
    if scale not in ("difference", "ratio"):
        raise ValueError(f"scale must be 'difference' or 'ratio', got {scale!r}")
    ta = {s: _transform(v, scale) for s, v in a.items() if v is not None}
    ta = {s: v for s, v in ta.items() if math.isfinite(v)}
    if isinstance(b, Mapping):
        tb = {s: _transform(v, scale) for s, v in b.items() if v is not None}
        tb = {s: v for s, v in tb.items() if math.isfinite(v)}
        common = sorted(set(ta) & set(tb))
        if len(common) >= 2 or (common and not (len(ta) >= 2 and len(tb) >= 2)):
            diffs = [ta[s] - tb[s] for s in common]
            return _paired(diffs, common, scale, PAIRED)
        if len(ta) >= 2 and len(tb) >= 2:
            return _welch(list(ta.values()), list(tb.values()), scale)
        return _result(None, None, None, None, 0, scale, "no seeds to compare", [], [])
    c = _transform(b, scale) if b is not None else math.nan
    if not math.isfinite(c):
        return _result(None, None, None, None, 0, scale, "no fixed value to compare with", [], [])
    seeds = sorted(ta)
    return _paired([ta[s] - c for s in seeds], seeds, scale, ONE_SAMPLE)


def _paired(diffs: list[float], seeds: list[int], scale: str, test: str) -> dict[str, Any]:
    n = len(diffs)
    if n == 0:
        return _result(None, None, None, None, 0, scale, "no seeds to compare", [], [])
    mean, sd = _mean_sd(diffs)
    ci, mde = _interval(mean, sd / math.sqrt(n), n - 1) if n >= 2 else (None, None)
    return _result(mean, ci, mde, sd, n, scale, test, seeds, diffs)


def _welch(xa: list[float], xb: list[float], scale: str) -> dict[str, Any]:
    (ma, sa), (mb, sb) = _mean_sd(xa), _mean_sd(xb)
    na, nb = len(xa), len(xb)
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    denom = (va * va / (na - 1) if va else 0.0) + (vb * vb / (nb - 1) if vb else 0.0)
    df = (va + vb) ** 2 / denom if denom > 0 else float(na + nb - 2)
    ci, mde = _interval(ma - mb, se, df)
    out = _result(ma - mb, ci, mde, None, min(na, nb), scale, WELCH, [], [])
    out["n_each"] = [na, nb]
    return out


def _result(
    est: float | None,
    ci: list[float] | None,
    mde: float | None,
    sd: float | None,
    n: int,
    scale: str,
    test: str,
    seeds: list[int],
    values: list[float],
) -> dict[str, Any]:
    if scale == "ratio":  # back from the log scale
        est = None if est is None else math.exp(est)
        ci = None if ci is None else [math.exp(ci[0]), math.exp(ci[1])]
        mde = None if mde is None else math.exp(mde)
        values = [math.exp(v) for v in values]
    return {
        "estimate": est,
        "ci": ci,
        "n": n,
        "mde": mde,
        "sd": None if sd is None or math.isnan(sd) else sd,
        "test": test,
        "scale": scale,
        "seeds": seeds,
        "values": values,
    }


def decide(cmp: dict[str, Any], threshold: float, min_n: int = 2) -> bool | None:
    """Three-valued verdict for "the compared quantity exceeds ``threshold``".

    True when the interval lies above the threshold, False when it lies below, None when it
    spans it, when there is no interval, or when fewer than ``min_n`` seeds were compared.
    """
    ci = cmp.get("ci")
    if ci is None or cmp["n"] < max(2, min_n):
        return None
    if ci[0] > threshold:
        return True
    if ci[1] < threshold:
        return False
    return None


def censor(
    verdict: bool | None, value_may_be_lower: bool, value_may_be_higher: bool
) -> bool | None:
    """Drop a verdict that a censored seed (a bound, not a value) could overturn.

    A seed that never reached the target is recorded at its run length: a bound. If the true
    compared value may be lower than recorded, "holds" is not proven; if it may be higher,
    "does not hold" is not proven.
    """
    if verdict is True and value_may_be_lower:
        return None
    if verdict is False and value_may_be_higher:
        return None
    return verdict


def all_of(verdicts: Sequence[bool | None]) -> bool | None:
    """A claim made of several comparisons: False if any is False, True if all are True."""
    if any(v is False for v in verdicts):
        return False
    if verdicts and all(v is True for v in verdicts):
        return True
    return None


def verdict_word(v: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "undecided"}[v]


def fmt_cmp(cmp: dict[str, Any] | None, spec: str = "+.4f") -> str:
    """'+0.0123 [−0.0040, +0.0286] (paired, n=3, MDE 0.021)' (ratios as '2.41x [...]')."""
    if cmp is None or cmp.get("estimate") is None:
        return "n/a"
    ratio = cmp["scale"] == "ratio"

    def f(v: float) -> str:
        return f"{v:.2f}x" if ratio else format(v, spec)

    ci = "no interval" if cmp["ci"] is None else f"95% CI [{f(cmp['ci'][0])}, {f(cmp['ci'][1])}]"
    kind = {PAIRED: "paired", WELCH: "unpaired", ONE_SAMPLE: "vs a fixed value"}.get(
        cmp["test"], cmp["test"]
    )
    mde = ""
    if cmp.get("mde") is not None:
        mde = f", MDE x{cmp['mde']:.2f}" if ratio else f", MDE {cmp['mde']:.4f}"
    return f"{f(cmp['estimate'])} ({ci}; {kind}, n={cmp['n']}{mde})"
