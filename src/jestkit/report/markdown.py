"""report.md, rendered from the report dict alone (never a number of its own)."""

from __future__ import annotations

from typing import Any

from jestkit.report.probe import (
    render_joint_probe,
    render_scorer_agreement,
    render_scorer_timing,
)


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
        f"# {report.get('title') or 'JEST reproduction report'}",
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
    for section in report.get("sections") or []:
        lines += [f"## {section['title']}", "", *section["lines"], ""]
    if report["claims"]:
        lines += _claims(report)
    lines += [
        "## Methods",
        "",
        f"| method | seeds | final {short} (mean ± std) | baseline | steps to target (per seed) "
        "| speed-up | baseline reached own final at | FLOPs to target | + reference training "
        "| FLOP speed-up | noisy selected |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        # Data without noise labels (every pool fraction 0): a selected fraction says nothing.
        noisy = m["noisy_selected_frac"] if m.get("noisy_pool_frac") else None
        per = m["steps_to_target_per_seed"]
        per_txt = (
            ""
            if per is None
            else " (" + "/".join(_cell(s) if s is not None else "never" for s in per) + ")"
        )
        lines.append(
            f"| {name}{' (baseline)' if m['baseline'] == name else ''}"
            f"{' (near chance)' if m.get('near_chance') else ''} | {m['seeds']} "
            f"| {m['final_metric']:.4f} ± {m['final_metric_std']:.4f} | {_cell(m['baseline'])} "
            f"| {_cell(m['steps_to_target'])}{per_txt} | {_cell(m['speedup'], '.2f')} "
            f"| {_cell(m['baseline_steps_to_own_final'])} | {_cell(m['flops_to_target'], '.3g')} "
            f"| {_cell(m['flops_to_target_with_ref_training'], '.3g')} "
            f"| {_cell(m['flops_speedup'], '.2f')} | {_cell(noisy, '.3f')} |"
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
    if report.get("final_eval_table"):
        lines += _final_eval(report)
    if report["batch_sweep"]:
        lines += _batch_sweep(report["batch_sweep"])
    if report.get("bias_ablation"):
        lines += _bias(report["bias_ablation"])
    if report.get("scorer_ablation"):
        lines += _scorers(report["scorer_ablation"])
    probes = report.get("probes") or {}
    if probes.get("joint"):
        lines += render_joint_probe(probes["joint"])
    if probes.get("scorers"):
        lines += render_scorer_agreement(probes["scorers"])
    if probes.get("timing"):
        lines += render_scorer_timing(probes["timing"])
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


def _claims(report: dict[str, Any]) -> list[str]:
    lines = [
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
    return [
        *lines,
        "",
        f"A comparison of final metrics holds when the difference of means exceeds the larger of "
        f"the two standard deviations over seeds; a steps comparison likewise on per-seed steps "
        f"(a seed that never reaches counts at its run length); a threshold (speed-up, FLOPs) "
        f"holds when every seed meets it. Each side needs at least {report['min_seeds']} finished "
        "seeds: with fewer there is no spread, and the claim is reported as not holding.",
        "",
    ]


def _final_eval(report: dict[str, Any]) -> list[str]:
    """Every final eval metric of every method (mean over seeds), one column per metric."""
    keys = sorted({k for m in report["methods"].values() for k in m.get("final_eval", {})})
    if not keys:
        return []
    lines = [
        "## Final evaluation",
        "",
        "| method | " + " | ".join(f"`{k.split('/')[-1]}`" for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, m in report["methods"].items():
        cells = [m.get("final_eval", {}).get(k) for k in keys]
        lines.append(
            f"| {name} | "
            + " | ".join("–" if c is None else f"{c['mean']:.4f}" for c in cells)
            + " |"
        )
    return [
        *lines,
        "",
        "i2t = image→text, t2i = text→image retrieval (R@k: the true caption or image among the "
        "top k); `retrieval_r1` is the mean of the two R@1; `zeroshot_top1` is zero-shot "
        "classification accuracy (present when the eval set has labels and class names).",
        "",
    ]


def _diag(d: dict[str, Any] | None, key: str, part: str = "mean", spec: str = ".3g") -> str:
    v = (d or {}).get(key, {}).get(part)
    return "–" if v is None else format(v, spec)


def _ratio_cell(d: dict[str, Any] | None, num: str, den: str, part: str = "mean") -> str:
    a, b = (d or {}).get(num, {}).get(part), (d or {}).get(den, {}).get(part)
    return "–" if a is None or not b else f"{a / b:.2f}"


def _batch_sweep(points: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Batch-size sweep (joint - independent, f=0.8)",
        "",
        "| b | steps | jest | independent | gap ± std | seeds | paired | noisy selected: jest / "
        "indep |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['x']} | {_cell(p.get('steps'))} | {p['joint']:.4f} ± {p['joint_std']:.4f} "
            f"| {p['independent']:.4f} ± {p['independent_std']:.4f} "
            f"| {p['gap']:+.4f} ± {p['gap_std']:.4f} | {p['seeds']} | {p['paired']} "
            f"| {_cell(p.get('jest_noisy_selected_frac'), '.3f')} / "
            f"{_cell(p.get('independent_noisy_selected_frac'), '.3f')} |"
        )
    lines += [
        "",
        "Did the joint terms have anything to work with? Means over every logged step and seed of "
        "the jest runs (early / late = first / last third of training). 'in batch': std over the "
        "selected examples of their joint terms (row + column sums of A within the batch) vs of "
        "their own scores A[i,i]; 'in pool': std over up to 512 candidates that lost of their "
        "joint term given the chosen batch vs std of A[k,k] over the super-batch (what the sampler "
        "weighs against each other). A negative pair's learnability is `neg A`.",
        "",
        "| b | joint / per-example spread, in batch | in pool (early → late) | joint spread in "
        "pool | per-example spread in pool | neg A | learner neg-pair loss | reference neg-pair "
        "loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        d = p.get("jest_diagnostics") or {}
        lines.append(
            f"| {p['x']} "
            f"| {_ratio_cell(d, 'sel/joint_term_spread', 'sel/example_score_spread')} "
            f"| {_ratio_cell(d, 'sel/pool_joint_term_spread', 'sel/pool_example_score_spread')} "
            f"({_ratio_cell(d, 'sel/pool_joint_term_spread', 'sel/pool_example_score_spread', 'early')}"
            f" → {_ratio_cell(d, 'sel/pool_joint_term_spread', 'sel/pool_example_score_spread', 'late')})"
            f" | {_diag(d, 'sel/pool_joint_term_spread')} "
            f"| {_diag(d, 'sel/pool_example_score_spread')} | {_diag(d, 'sel/neg_score_selected')} "
            f"| {_diag(d, 'sel/learner_neg_loss_selected')} "
            f"| {_diag(d, 'sel/reference_neg_loss_selected')} |"
        )
    return [*lines, ""]


def _bias(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Bias-initialisation ablation",
        "",
        "| method | bias init | final (mean ± std, n) | default -10 twin | its final (n) | learner "
        "neg-pair loss: ablated / default | joint / per-example spread in pool: ablated / "
        "default |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, t = r["diagnostics"], r["default_diagnostics"]
        twin = (
            "–"
            if r["default_final"] is None
            else f"{r['default_final']:.4f} ± {r['default_final_std']:.4f} ({r['default_seeds']})"
        )
        lines.append(
            f"| {r['method']} | {r['bias_init']} | {r['final']:.4f} ± {r['final_std']:.4f} "
            f"({r['seeds']}) | {_cell(r['default'])} | {twin} "
            f"| {_diag(d, 'sel/learner_neg_loss_selected')} / "
            f"{_diag(t, 'sel/learner_neg_loss_selected')} "
            f"| {_ratio_cell(d, 'sel/pool_joint_term_spread', 'sel/pool_example_score_spread')} / "
            f"{_ratio_cell(t, 'sel/pool_joint_term_spread', 'sel/pool_example_score_spread')} |"
        )
    gaps = rows[0].get("gaps") or {} if rows else {}
    for label, g in sorted(gaps.items()):
        lines.append(
            f"\nJoint - independent with the {label} bias init: {g['gap']:+.4f} ± "
            f"{g['gap_std']:.4f} (n={g['seeds']}, {'paired' if g['paired'] else 'unpaired'})."
        )
    return [*lines, ""]


def _scorers(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Cheap scoring (jestkit.scorers)",
        "",
        "Each cheap-scorer run against the full-learner-scoring run it replaces (same family, "
        "steps, batch). Scoring FLOPs per step include a proxy's own training step. The step-time "
        "ratio compares runs that may have run at different times on a shared machine (runs "
        "reused from another suite certainly did): the side-by-side timing probe is the wall-time "
        "measurement.",
        "",
        "| method | scorer | final (n) | full-scoring run: final (n) | difference ± std "
        "| noisy selected: cheap / full | scoring FLOPs / full's | total FLOPs / full's "
        "| step time / full's | steps to target: cheap / full |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r.get("gap")
        diff = "–" if not g else f"{g['gap']:+.4f} ± {g['gap_std']:.4f}"
        full = (
            "–"
            if r.get("compare_final") is None
            else f"{r['compare']} {r['compare_final']:.4f} ± {r['compare_final_std']:.4f} "
            f"({r['compare_seeds']})"
        )
        lines.append(
            f"| {r['method']} | {r['scorer']} | {r['final']:.4f} ± {r['final_std']:.4f} "
            f"({r['seeds']}) | {full} "
            f"| {diff} "
            f"| {_cell(r['noisy_selected_frac'], '.3f')} / "
            f"{_cell(r.get('compare_noisy_selected_frac'), '.3f')} "
            f"| {_cell(r.get('score_flops_ratio'), '.2f')} | {_cell(r.get('total_flops_ratio'), '.2f')} "
            f"| {_cell(r.get('step_time_ratio'), '.2f')} "
            f"| {_cell(r['steps_to_target'])} / {_cell(r.get('compare_steps_to_target'))} |"
        )
    return [*lines, ""]
