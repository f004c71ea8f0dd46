"""The pipeline's own report sections: will JEST help (the reference diagnostic and the outcome),
how the run length was chosen, and how FLOPs were counted. They go into OUT/suite.json
(``sections``) and `jestkit report` renders them at the top of report.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jestkit.pipeline.inputs import Input
from jestkit.pipeline.options import PipelineOptions
from jestkit.pipeline.runs import TARGET_METRIC, reference_source
from jestkit.pipeline.util import write_json

DIAGNOSTIC_FILE = "diagnostic.json"


def run_diagnostic(out: Path, inputs: dict[str, Input], opts: PipelineOptions) -> dict[str, Any]:
    """Measure the reference on CURATED, EVAL and POOL (kept in OUT/diagnostic.json, reused)."""
    from jestkit.devices import resolve_device
    from jestkit.models import load_pretrained, model_fingerprint
    from jestkit.pipeline.diagnose import diagnose

    source = reference_source(out, opts)
    model, tokenizer = load_pretrained(source, device=resolve_device(opts.device))
    fp = model_fingerprint(model)
    path = out / DIAGNOSTIC_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("fingerprint") == fp:
                return old
        except (OSError, ValueError):
            pass
    name = opts.reference or "trained on CURATED"
    splits = {n: Path(inputs[n].split_dir) for n in ("curated", "eval", "pool")}
    d = diagnose(
        model, tokenizer, splits, name, seed=opts.seed, trained_on_curated=not opts.reference
    )
    d["fingerprint"] = fp
    write_json(path, d)
    return d


def _metric(final: dict[str, Any] | None) -> float | None:
    v = (final or {}).get(TARGET_METRIC)
    return float(v) if isinstance(v, (int, float)) else None


def report_sections(
    runs: dict[str, dict[str, Any]],
    length: dict[str, Any],
    diag: dict[str, Any] | None,
    opts: PipelineOptions,
    cfgs: dict[str, Any],
    chance: float,
) -> list[dict[str, Any]]:
    """Sections for report.md: the verdict with its numbers, the run length, the FLOP counting."""
    from jestkit.models.factory import is_factory
    from jestkit.pipeline.diagnose import lines as diagnostic_lines
    from jestkit.pipeline.sizing import describe_rule

    sections = []
    help_lines: list[str] = []
    if diag is not None:
        help_lines = diagnostic_lines(diag)
    uniform = _metric(runs.get("uniform"))
    outcome = []
    for name, final in runs.items():
        if name in ("reference", "uniform") or uniform is None:
            continue
        v = _metric(final)
        if v is not None and v < uniform:
            outcome.append(
                f"**{name} ended below uniform at an equal budget**: {v:.4f} vs {uniform:.4f} "
                f"({TARGET_METRIC}, one seed each, {final.get('step')} steps). Selection did not "
                "help on this data."
                + (
                    ""
                    if not (diag and diag["helps"])
                    else " What would help: " + "; ".join(diag["helps"]) + "."
                )
            )
        elif v is not None:
            outcome.append(
                f"{name} ended at {v:.4f} against uniform's {uniform:.4f} ({TARGET_METRIC}, one "
                f"seed each, {final.get('step')} steps): "
                f"{'+' if v >= uniform else ''}{v - uniform:.4f}."
            )
    if help_lines or outcome:
        sections.append(
            {
                "title": "Will JEST help on this data?",
                "lines": (
                    ["Before training, the reference alone:", "", *help_lines, ""]
                    if help_lines
                    else []
                )
                + (["After training:", ""] + [f"- {o}" for o in outcome] if outcome else []),
            }
        )
    steps = int(length.get("steps") or 0)
    run_lines = [describe_rule({**length, "steps": steps}, TARGET_METRIC) + "."]
    if length.get("rule") == "plateau":
        run_lines.append(
            "The learning rate is constant after warmup in these runs (the length is found while "
            "training); override with optim.min_lr_ratio."
        )
    run_lines.append(
        f"Chance for retrieval R@1 on EVAL is 1 / {round(1 / chance)} = {chance:.4f}; a method "
        "within 3 chance levels is marked '(near chance)' and no speed-up is given against it."
    )
    sections.append({"title": "Run length", "lines": run_lines})
    learner = (
        "measured once with torch.utils.flop_counter" if is_factory(opts.model) else "analytic"
    )
    flop_lines = [f"Learner `{opts.model}`: FLOPs {learner}."]
    if opts.reference:
        kind = (
            "measured once with torch.utils.flop_counter"
            if is_factory(opts.reference)
            else "analytic"
        )
        flop_lines.append(
            f"Pretrained reference `{opts.reference}`: FLOPs {kind}; its training is not counted "
            "(it was not trained here)."
        )
    elif "reference" in cfgs:
        flop_lines.append(
            "Reference trained on CURATED: the same model family, FLOPs as the learner's."
        )
    sections.append({"title": "How FLOPs were counted", "lines": flop_lines})
    return sections
