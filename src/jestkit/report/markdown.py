"""report.md, rendered from the report dict alone (never a number of its own)."""

from __future__ import annotations

from typing import Any


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
