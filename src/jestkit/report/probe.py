"""The probes of `jestkit.analysis` (joint terms, scorer agreement), read from the suite folder.

`python -m jestkit.analysis ... --out SUITE/analysis.json` (the joint-term probe) and
`... --scorers --out SUITE/scorer_agreement.json` and `... --time-scorers STEPS --out
SUITE/scorer_timing.json` write them; the report renders what it finds
and never runs a probe itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jestkit.errors import JestkitError

FILES = {
    "joint": "analysis.json",
    "scorers": "scorer_agreement.json",
    "timing": "scorer_timing.json",
}


def load_probes(suite_dir: Path) -> dict[str, Any]:
    """{"joint": ..., "scorers": ...} for the probe files present (a bad file is an error)."""
    out: dict[str, Any] = {}
    for key, name in FILES.items():
        path = suite_dir / name
        if not path.is_file():
            continue
        try:
            out[key] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise JestkitError(f"{path}: cannot read it as JSON ({e})") from None
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def render_joint_probe(probe: dict[str, Any]) -> list[str]:
    """Tables: what jest and independent select from the same super-batches, per step and b."""
    lines = [
        "## Which examples the joint terms favour (probe)",
        "",
        "From `python -m jestkit.analysis` over saved learner checkpoints: at each step, "
        "super-batches of N = b/(1-f) drawn from the pool, selected twice with the same Gumbel "
        "noise, jointly (jest) and independently (the same criterion's diagonal). `twin` = a clean "
        "scene whose hard-negative near-twin is in the same super-batch. Shares are of the "
        "selected examples; 'x' = jest share / independent share. J = a candidate's joint term "
        "given the jest batch (sum of its learnability with every selected example), split into "
        "its learner (+) and reference (-) parts; A = its own learnability.",
        "",
    ]
    for run in probe.get("runs", []):
        lines += [f"### `{run['name']}` ({run['method']}, b={run['batch_size']})", ""]
        kinds = sorted(
            {k for c in run["checkpoints"] for r in c["by_b"] for k in r["share"]["pool"]}
        )
        head = " | ".join(f"{k}: jest / indep (x)" for k in kinds)
        lines += [
            f"| step | b | overlap jest-indep (redraw indep, jest) | twin pairs kept both: jest / "
            f"indep | {head} |",
            "|---|---|---|---|" + "---|" * len(kinds),
        ]
        for c in run["checkpoints"]:
            for r in c["by_b"]:
                cells = []
                for k in kinds:
                    j, i = r["share"]["jest"].get(k, 0.0), r["share"]["independent"].get(k, 0.0)
                    x = f"{j / i:.2f}x" if i > 0 else "–"
                    cells.append(f"{_pct(j)} / {_pct(i)} ({x})")
                tp = r.get("twin_pairs") or {}
                pairs = tp.get("present", 0)
                kept = (
                    f"{tp['jest_both']}/{pairs} / {tp['independent_both']}/{pairs}"
                    if pairs
                    else "no pairs"
                )
                lines.append(
                    f"| {c['step']} | {r['b']} | {r['overlap_jest_independent']:.2f} "
                    f"({r['overlap_independent_redraw']:.2f}, {r['overlap_jest_redraw']:.2f}) "
                    f"| {kept} | " + " | ".join(cells) + " |"
                )
        lines += ["", "Mean joint term J per candidate category (given the jest batch):", ""]
        lines += [
            "| step | b | std J / std A | "
            + " | ".join(f"{k}: J (learner, reference)" for k in kinds)
            + " |",
            "|---|---|---|" + "---|" * len(kinds),
        ]
        for c in run["checkpoints"]:
            for r in c["by_b"]:
                cells = []
                for k in kinds:
                    jm = r["joint_mean"].get(k)
                    cells.append(
                        "–"
                        if jm is None
                        else f"{jm['total']:+.2f} ({jm.get('learner', 0):+.2f}, "
                        f"{jm.get('reference', 0):+.2f})"
                    )
                ratio = (
                    r["joint_term_std"] / r["example_score_std"] if r["example_score_std"] else None
                )
                lines.append(
                    f"| {c['step']} | {r['b']} | {'–' if ratio is None else f'{ratio:.2f}'} | "
                    + " | ".join(cells)
                    + " |"
                )
        lines.append("")
    return lines


def render_scorer_agreement(probe: dict[str, Any]) -> list[str]:
    rows = probe.get("scorer_agreement", [])
    if not rows:
        return []
    lines = [
        "## Cheap scorers: agreement with the full learner's selection (probe)",
        "",
        "From `python -m jestkit.analysis --scorers`: the same super-batches and Gumbel noise, "
        "selected with the cheap scorer's learner-side embeddings and with the learner's own. "
        "'redraw' = the learner with other noise (a perfect scorer's overlap).",
        "",
        "| run | step | scorer | overlap with the learner's selection | redraw | noisy selected: "
        "scorer / learner / pool |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{Path(r['run']).name}` | {r['step']} | {r['scorer']} | {r['overlap']:.2f} "
            f"| {r['overlap_redraw']:.2f} | {_pct(r['noisy_scorer'])} / {_pct(r['noisy_live'])} "
            f"/ {_pct(r['noisy_pool'])} |"
        )
    return [*lines, ""]


def render_scorer_timing(probe: dict[str, Any]) -> list[str]:
    rows = probe.get("scorer_timing", [])
    if not rows:
        return []
    lines = [
        "## Cheap scorers: wall time and FLOPs per step, side by side (probe)",
        "",
        "From `python -m jestkit.analysis --time-scorers STEPS`: in one process, each step times "
        "every scorer in rotating order on the same super-batch (a snapshot's uid cache filling "
        "and emptying as in a run; the proxy includes its training step), and one learner "
        "training step on b for scale. Means over steps.",
        "",
        "| run | b (N) | scorer | ms per step | / learner scoring | / a training step | scoring "
        "FLOPs per step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fl = r.get("flops_per_step")
        lines.append(
            f"| `{Path(r['run']).name}` | {r['b']} ({r['n']}) | {r['scorer']} "
            f"| {r['ms_per_step']:.1f} | {r['vs_learner_scoring']:.2f} "
            f"| {r['vs_train_step']:.2f} | {'–' if fl is None else f'{fl:.3g}'} |"
        )
    return [*lines, ""]
