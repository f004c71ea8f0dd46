"""report.md, rendered from the report dict alone (never a number of its own)."""

from __future__ import annotations

from typing import Any

from jestkit.report.inference import verdict_word
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
    if report.get("regime"):
        lines += _regime(report["regime"])
    if report["claims"]:
        lines += _claims(report)
    lines += _methods(report, short)
    if report.get("compute"):
        lines += _compute(report["compute"])
    if report.get("final_eval_table"):
        lines += _final_eval(report)
    if report["batch_sweep"]:
        lines += _batch_sweep(report["batch_sweep"])
    if report.get("bias_ablation"):
        lines += _bias(report["bias_ablation"])
    if report.get("scorer_ablation"):
        lines += _scorers(report["scorer_ablation"])
    if report.get("arms"):
        lines += _arms(report["arms"])
    if report.get("reference_strength"):
        lines += _reference_strength(report["reference_strength"], report.get("bootstrapping"))
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
    if report.get("lr_grid"):
        lines += _lr_grid(report["lr_grid"])
    if report.get("environment"):
        lines += _environment(report["environment"])
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def _ci(c: dict[str, Any] | None, ratio: bool | None = None) -> str:
    """'+0.012 [−0.004, +0.029]' or '2.41x [1.90x, 3.05x]' (a comparison's estimate and CI)."""
    if not c or c.get("estimate") is None:
        return "–"
    ratio = c["scale"] == "ratio" if ratio is None else ratio

    def f(v: float) -> str:
        return f"{v:.2f}x" if ratio else f"{v:+.4f}"

    ci = "" if c.get("ci") is None else f" [{f(c['ci'][0])}, {f(c['ci'][1])}]"
    return f(c["estimate"]) + ci


def _mde(c: dict[str, Any] | None) -> str:
    if not c or c.get("mde") is None:
        return "–"
    return f"x{c['mde']:.2f}" if c["scale"] == "ratio" else f"{c['mde']:.4f}"


def _verdict(v: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "undecided"}[v]


def _against(c: dict[str, Any] | None, threshold: float) -> str:
    """The verdict of one comparison against a threshold, for the methods table."""
    if not c or c.get("ci") is None:
        return "undecided"
    lo, hi = c["ci"]
    return _verdict(True if lo > threshold else False if hi < threshold else None)


def _methods(report: dict[str, Any], short: str) -> list[str]:
    lines = [
        "## Methods",
        "",
        f"| method | seeds | final {short} (mean ± std) | baseline | final − baseline [95% CI] "
        "(> 0?) | steps to target (per seed) | speed-up [95% CI] | speed-up vs run length "
        "| FLOPs to target | + reference training | FLOP speed-up [95% CI] | noisy selected |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        # Data without noise labels (every pool fraction 0): a selected fraction says nothing.
        noisy = m["noisy_selected_frac"] if m.get("noisy_pool_frac") else None
        per = m["steps_to_target_per_seed"]
        per_txt = (
            ""
            if per is None
            else " (" + "/".join(_cell(s, ".0f") if s is not None else "never" for s in per) + ")"
        )
        vs = m.get("vs_baseline") or {}
        is_base = m["baseline"] == name
        diff = (
            "–"
            if is_base or "final" not in vs
            else f"{_ci(vs['final'])} ({_against(vs['final'], 0.0)})"
        )
        never = (vs.get("speedup") or {}).get("never_reached")
        bound = " (bound: a seed never reached)" if never else ""
        sp = "–" if is_base else _ci(vs.get("speedup")) + bound
        lines.append(
            f"| {name}{' (baseline)' if is_base else ''}{' (near chance)' if m.get('near_chance') else ''} | {m['seeds']} "
            f"| {m['final_metric']:.4f} ± {m['final_metric_std']:.4f} | {_cell(m['baseline'])} "
            f"| {diff} | {_cell(m['steps_to_target'], '.0f')}{per_txt} | {sp} "
            f"| {'–' if is_base else _ci(vs.get('speedup_vs_run_length'))} "
            f"| {_cell(m['flops_to_target'], '.3g')} "
            f"| {_cell(m['flops_to_target_with_ref_training'], '.3g')} "
            f"| {'–' if is_base else _ci(vs.get('flops_speedup'))} | {_cell(noisy, '.3f')} |"
        )
    return [
        *lines,
        "",
        f"Final metric: the mean of a run's last {report.get('final_evals', 1)} evaluations. "
        "Everything against the baseline is paired by seed: seed s's target is the baseline's "
        "seed-s final; steps (FLOPs) to target are interpolated linearly between evaluations "
        "(the column: upper median over seeds). Speed-up: per seed, the baseline's steps to the "
        "target — the least of its run length, the step at which it first reached its own final "
        "and where a frontier run reached it — over the method's; geometric mean over seeds "
        "with a 95% t interval. 'vs run length' divides the baseline's run length instead. FLOPs "
        "count learner training, learner scoring and reference inference (the one-off reference "
        "cache build included); '+ reference training' adds the reference model's own training "
        "run, only for runs whose selection reads the reference. FLOP speed-up as the step "
        "speed-up, on FLOPs. 'bound': a seed that never reached the target is counted at its run "
        "length, so the figure is an upper bound.",
        "",
    ]


def _claims(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Claims (JEST.md §5, at this scale)",
        "",
        "| # | claim | threshold | estimate [95% CI] | n | MDE | verdict | measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report["claims"]:
        ratio = c.get("threshold_scale") == "ratio"
        thr = c.get("threshold")
        thr_txt = "–" if thr is None else (f"{thr:g}x" if ratio else f"> {thr:+g}")
        cmp = {"estimate": c.get("estimate"), "ci": c.get("ci"), "scale": c.get("threshold_scale"),
               "mde": c.get("mde")}  # fmt: skip
        verdict = c.get("verdict") or _verdict(c["holds"])
        if verdict == "holds":
            verdict = "**holds**"
        lines.append(
            f"| {c['id']} | {c['claim']} | {thr_txt} | {_ci(cmp)} | {c.get('n', '–')} "
            f"| {_mde(cmp)} | {verdict} | {c['measured']} |"
        )
    return [
        *lines,
        "",
        "**Decision rule.** " + str(report.get("decision_rule") or ""),
        f"A comparison needs at least {report['min_seeds']} paired seeds to be decided. A seed "
        "that never reached a target is counted at its run length (a bound): a verdict it could "
        "overturn is reported as undecided. Estimate, interval, n and MDE are those of the "
        "comparison that decided the claim (the weakest, for a claim made of several).",
        "",
    ]


def _compute(c: dict[str, Any]) -> list[str]:
    """The per-FLOP answer: any selecting configuration against uniform, with intervals."""
    share = 1.0 / c["target_fraction"]
    answer = {
        True: "yes",
        False: "no",
        None: "undecided (no interval lies wholly above 1, not every one lies below it)",
    }[c["fewer_flops"]]
    lines = [
        "## Compute: does any JEST configuration beat uniform per FLOP?",
        "",
        f"Fewer total FLOPs than its uniform baseline to reach the baseline's final metric: "
        f"**{answer}**. At most {c['target_fraction']:g}x of them (a FLOP speed-up above "
        f"{share:g}): **{verdict_word(c['target_met'])}**. Highest estimate: {c['best']}.",
        "",
        "| method | family | seeds | FLOP speed-up [95% CI] | fewer FLOPs? | "
        f"<= {c['target_fraction']:g}x? | + reference training [95% CI] | FLOPs: train / "
        "score / reference | total FLOPs / baseline's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in c["rows"]:
        parts = " / ".join(
            _cell(r["flops_share"].get(k), ".0%")
            for k in ("learner_train", "learner_score", "reference")
        )
        ratio = (
            r["total_flops"] / r["baseline_total_flops"]
            if r.get("total_flops") and r.get("baseline_total_flops")
            else None
        )
        lines.append(
            f"| {r['method']} | {r['family']} | {r['seeds']} | {_ci(r['flops_speedup'])} "
            f"| {verdict_word(r['fewer_flops'])} | {verdict_word(r['target_met'])} "
            f"| {_ci(r.get('flops_speedup_with_ref_training'))} | {parts} | {_cell(ratio, '.2f')} |"
        )
    return [
        *lines,
        "",
        "FLOP speed-up: per seed, the baseline's FLOPs to its seed's final metric over the "
        "method's (learner training + learner scoring + reference inference, the one-off cache "
        "build included), geometric mean with a 95% t interval; the reference's own training is "
        "in its own column. A verdict holds only when the whole interval is past the line, and "
        "never when a seed did not reach the target (its figure is then a bound). The FLOPs "
        "columns show where a run's compute went over its whole run.",
        "",
    ]


def _arms(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Arms that separate causes",
        "",
        "Each arm changes one thing of the run it is compared with (same seeds, steps, batch).",
        "",
        "| arm | method | final (n) | compared with: final (n) | arm − compared [95% CI] "
        "| arm − uniform [95% CI] | step speed-up vs uniform [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        other = (
            "–"
            if r.get("compare_final") is None
            else f"{r['compare']} {r['compare_final']:.4f} ± {r['compare_final_std']:.4f}"
        )
        lines.append(
            f"| {r['arm']} | {r['method']} | {r['final']:.4f} ± {r['final_std']:.4f} "
            f"({r['seeds']}) | {other} | {_ci(r.get('vs_compare'))} "
            f"| {_ci(r.get('vs_baseline'))} | {_ci(r.get('speedup'))} |"
        )
    return [*lines, ""]


def _reference_strength(rows: list[dict[str, Any]], verdicts: dict[str, Any] | None) -> list[str]:
    v = verdicts or {}
    lines = [
        "## Reference strength (data-quality bootstrapping)",
        "",
        "The paper's framing: a better reference gives a better learner, and the learner ends "
        "above the reference that chose its data. Rows in order of the reference's final metric. "
        "A better reference, a better learner (each learner above the one of the next weaker "
        f"reference): **{verdict_word(v.get('better_reference_better_learner'))}**; the learner "
        f"ends above its reference (every row): "
        f"**{verdict_word(v.get('learner_above_reference'))}**.",
        "",
        "| reference (curated fraction) | reference final | learner | learner final (n) "
        "| learner − reference [95% CI] (> 0?) | − the next weaker row's learner [95% CI] "
        "| learner − uniform [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        frac = "suite's" if r["curated_fraction"] is None else f"{r['curated_fraction']:g}"
        lines.append(
            f"| {r['reference']} ({frac}) | {r['reference_final']:.4f} | {r['method']} "
            f"| {r['final']:.4f} ± {r['final_std']:.4f} ({r['seeds']}) "
            f"| {_ci(r['vs_reference'])} ({_against(r['vs_reference'], 0.0)}) "
            f"| {_ci(r.get('vs_weaker'))} | {_ci(r.get('vs_baseline'))} |"
        )
    return [*lines, ""]


def _lr_grid(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Baseline learning-rate grid", ""]
    for r in rows:
        lines += [
            f"Baseline `{r['baseline']}` (lr {_cell(r['baseline_lr'], 'g')}); pick: "
            f"`{r['pick']}` (lr {_cell(r['pick_lr'], 'g')}, the best mean final)"
            + ("" if r["baseline_is_pick"] else " — **the baseline is not the pick**")
            + ".",
            "",
            "| method | lr | final (mean ± std, n) | minus the pick [95% CI] |",
            "|---|---|---|---|",
        ]
        for g in r["grid"]:
            lines.append(
                f"| {g['method']} | {_cell(g['lr'], 'g')} | {g['final']:.4f} ± "
                f"{g['final_std']:.4f} ({g['seeds']}) | "
                f"{'–' if g['method'] == r['pick'] else _ci(g['minus_pick'])} |"
            )
        lines.append("")
    return lines


def _regime(r: dict[str, Any]) -> list[str]:
    """What the pool offers selection: JEST's gains depend on it (see docs/reproduction.md)."""
    kinds = ", ".join(f"{k} {v:.1%}" for k, v in r.get("noise_share", {}).items()) or "none"
    passes = r.get("pool_passes") or {}
    spread = (
        f"{min(passes.values()):.1f}-{max(passes.values()):.1f} (uniform: "
        f"{_cell(passes.get('uniform'), '.1f')})"
        if passes
        else "-"
    )
    return [
        "## Regime",
        "",
        f"- Pool: {r['pool_size']} examples, {r['imperfect_share']:.1%} imperfect ({kinds}).",
        f"- Near-twins: {r['twin_group_mates']:.2f} group-mates per example in the pool; "
        f"{r['near_twins_per_example']:.2f} per example in a random super-batch of "
        f"{r['super_batch']} (b = {r['batch_size']}, f = {r['filter_ratio']}).",
        f"- Passes over the pool (examples scored / pool size) per learner: {spread}.",
        "",
    ]


def _environment(env: dict[str, Any]) -> list[str]:
    keys = ("cpu_model", "cpu_count", "threads_per_run", "jobs", "torch", "numpy", "tokenizers",
            "python", "platform", "jestkit_commit")  # fmt: skip
    return [
        "## Environment",
        "",
        f"Source: {env.get('source', 'suite.json')}. CPU runs are bit-identical only on the same "
        "CPU model, library versions and threads per run; elsewhere they reproduce "
        "statistically (within the intervals above).",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(_cell(env.get(k)) for k in keys) + " |",
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
        "classification accuracy (present when the eval set has labels and class names); "
        "`twin_acc` is the fine-grained eval among near-twins (own caption vs its twins', chance "
        "1 / group size; docs/evaluation.md).",
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
        "| b | steps | jest | independent | gap ± std [95% CI] | seeds | paired | noisy selected: jest / "
        "indep |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['x']} | {_cell(p.get('steps'))} | {p['joint']:.4f} ± {p['joint_std']:.4f} "
            f"| {p['independent']:.4f} ± {p['independent_std']:.4f} "
            f"| {p['gap']:+.4f} ± {p['gap_std']:.4f} {_ci(p.get('comparison'))} | {p['seeds']} "
            f"| {p['paired']} "
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
            f"{g['gap_std']:.4f}, 95% CI {_ci(g.get('comparison'))} "
            f"(n={g['seeds']}, {'paired' if g['paired'] else 'unpaired'})."
        )
    return [*lines, ""]


def _scorers(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Cheap scoring (jestkit.sources)",
        "",
        "Each cheap-scorer run against the full-learner-scoring run it replaces (same family, "
        "steps, batch). Scoring FLOPs per step include a proxy's own training step. The step-time "
        "ratio compares runs that may have run at different times on a shared machine (runs "
        "reused from another suite certainly did): the side-by-side timing probe is the wall-time "
        "measurement.",
        "",
        "| method | scorer | final (n) | full-scoring run: final (n) | difference ± std [95% CI] "
        "| noisy selected: cheap / full | scoring FLOPs / full's | total FLOPs / full's "
        "| step time / full's | steps to target: cheap / full |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r.get("gap")
        diff = "–" if not g else f"{g['gap']:+.4f} ± {g['gap_std']:.4f} {_ci(g.get('comparison'))}"
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
            f"| {_cell(r['steps_to_target'], '.0f')} / {_cell(r.get('compare_steps_to_target'), '.0f')} |"
        )
    return [*lines, ""]
