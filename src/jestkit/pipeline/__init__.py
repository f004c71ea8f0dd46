"""`jestkit pipeline`: JEST on your own image-text data, from files to a report in one command.

    jestkit pipeline --pool pool.csv --curated curated.csv --eval eval.csv --out runs/mine
    jestkit pipeline --pool shards/pool --curated shards/curated --eval shards/eval \\
        --out runs/mine --model vit-tiny-56 --selector flexi-jest --steps 2000 --compare uniform
    jestkit pipeline --example-data mydata      # a small real example (sklearn digits as PNG files)

POOL, CURATED and EVAL are shard folders made by `jestkit make-shards` (or `prepare` splits),
CSV/TSV/JSONL/parquet files with columns ``image`` (a path) and ``caption`` (optionally ``label``
and ``class_name``), converted on the fly, or img2dataset webdataset shards (a folder of tars or
``'pool/{00000..00123}.tar'``), read in place. The stages, each skipped when its output in OUT is
already there and valid, so that an interrupted pipeline continues where it stopped:

1. data       inputs -> shards at the model's image size     OUT/data/{pool,curated,eval}
2. reference  uniform training on CURATED (or --reference)     OUT/runs/reference
3. cache      the reference exported and cached over POOL     OUT/references/, OUT/caches/
              + whether it can guide selection on POOL        OUT/diagnostic.json
4. learners   the selector on POOL, plus each --compare run   OUT/runs/NAME
              (by default uniform first, to its plateau: that sets every run's length)
5. report     report.md, report.json and plots/ (`jestkit report OUT` redraws them)

The pipeline is a thin layer: every training run is `jestkit.train.train` on a config the pipeline
writes (OUT/runs/NAME/config.json), OUT/data/dataset.json is an ordinary dataset manifest whose
splits point at the converted inputs, and OUT/suite.json makes OUT a suite that `jestkit report`
reads. OUT/pipeline.json records the inputs' fingerprints and the options; a re-run with other
inputs or options is refused (the finished stages would no longer match them).

Layout: ``options`` holds PipelineOptions, their checks and plan_sizes; ``inputs`` resolves and
fingerprints POOL / CURATED / EVAL and keeps the plan (OUT/pipeline.json); ``data`` is stage 1
(conversion, dataset manifest, overlap checks, zero-shot classes); ``runs`` is stages 2-4 (run
configs, training, the reference's cache, suite.json); ``sizing`` the default run length;
``diagnose`` the reference check; ``report`` the pipeline's report sections; ``example`` writes --example-data; ``cli``
holds the arguments. This module runs the stages in order and re-exports the public names.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from jestkit.errors import JestkitError, check
from jestkit.pipeline.cli import add_arguments, run
from jestkit.pipeline.data import add_zeroshot, check_data, prepare_data, zeroshot_classes
from jestkit.pipeline.example import write_example_data
from jestkit.pipeline.inputs import (
    INPUTS,
    PLAN_FORMAT,
    PLAN_VERSION,
    Input,
    check_plan,
    make_plan,
    resolve_input,
)
from jestkit.pipeline.options import (
    DEFAULT_MODEL,
    DEFAULT_TEMPLATES,
    FREE_OPTIONS,
    SELECTORS,
    PipelineOptions,
    Sizes,
    check_options,
    plan_sizes,
)
from jestkit.pipeline.report import report_sections, run_diagnostic
from jestkit.pipeline.runs import (
    TARGET_METRIC,
    describe,
    fits_in_memory,
    publish_reference,
    reference_source,
    run_config,
    train_run,
    write_suite,
)
from jestkit.pipeline.sizing import describe_rule, train_to_plateau
from jestkit.pipeline.util import say, say_skipped, write_json

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATES",
    "FREE_OPTIONS",
    "INPUTS",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "SELECTORS",
    "STAGES",
    "TARGET_METRIC",
    "Input",
    "PipelineOptions",
    "Sizes",
    "add_arguments",
    "check_data",
    "pipeline",
    "plan_sizes",
    "prepare_data",
    "publish_reference",
    "resolve_input",
    "run",
    "run_config",
    "write_example_data",
    "zeroshot_classes",
]

STAGES = 5


def pipeline(
    pool: str | os.PathLike,
    curated: str | os.PathLike,
    eval: str | os.PathLike,
    out: str | os.PathLike,
    **options: Any,
) -> dict[str, Any]:
    """Run (or continue) the pipeline into `out`; see the module docstring and docs/your-data.md.

    `options` are :class:`PipelineOptions` fields. Returns ``{"out", "stages": {stage: done |
    resumed | skipped}, "runs": {name: final record}, "sizes", "warnings", "interrupted"}``;
    ``interrupted`` names the stage a SIGINT/SIGTERM stopped (run again to continue), else None.
    """
    from jestkit.report import build_report

    unknown = sorted(set(options) - {f.name for f in fields(PipelineOptions)})
    check(not unknown, f"pipeline: unknown option(s) {unknown}")
    opts = check_options(PipelineOptions(**options))
    quiet = not opts.progress
    t0 = time.perf_counter()
    inputs = {n: resolve_input(n, v) for n, v in zip(INPUTS, (pool, curated, eval), strict=True)}
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JestkitError(f"--out {str(out)!r}: cannot create the folder ({e})") from None
    plan = make_plan(inputs, opts)
    plan_file = out / "pipeline.json"
    check_plan(out, plan)
    record: dict[str, Any] = {
        **plan,
        "paths": {n: str(i.path) for n, i in inputs.items()},
        "compare": list(opts.compare),
    }
    write_json(plan_file, record)
    warnings: list[str] = []
    stages: dict[str, str] = {}
    result: dict[str, Any] = {
        "out": str(out),
        "stages": stages,
        "runs": {},
        "warnings": warnings,
        "interrupted": None,
    }

    # 1. Data.
    say(f"[1/{STAGES}] data: POOL, CURATED and EVAL as shards in {out / 'data'}", quiet)
    data, stages["data"] = prepare_data(inputs, out, opts, warnings)
    say_skipped(stages["data"], quiet)
    for inp in inputs.values():
        say(f"  {inp.name}: {inp.count} examples ({inp.split_dir})", quiet)
    check_data(inputs, warnings)
    classes = zeroshot_classes(inputs["eval"], opts, warnings)
    add_zeroshot(data, classes, opts.templates)
    sizes = plan_sizes(inputs["pool"].count, inputs["curated"].count, opts)
    result["sizes"] = asdict(sizes)
    say(
        f"  learner: batch {sizes.batch_size} of super-batches of {sizes.super_batch}, "
        f"{sizes.steps} steps; reference: batch {sizes.reference_batch_size}, "
        f"{sizes.reference_steps} steps"
        + (f"; zero-shot over {len(classes)} classes" if classes else ""),
        quiet,
    )
    record.update(sizes=asdict(sizes), warnings=warnings, zeroshot_classes=classes)
    write_json(plan_file, record)

    learners = [opts.selector, *opts.compare]
    plateau = sizes.steps_rule == "plateau"
    if plateau:  # the uniform baseline trains first: its plateau sets everyone's length
        if "uniform" not in learners:
            say("  + uniform baseline: it trains until its eval metric plateaus and sets the "
                "run length", quiet)  # fmt: skip
        learners = ["uniform", *[n for n in learners if n != "uniform"]]
    needs_reference = any(sel != "uniform" for sel in learners)
    cfgs: dict[str, Any] = {}  # the runs' train configs, the reference first
    if needs_reference and not opts.reference:
        cfgs["reference"] = run_config(
            "reference", "uniform", data, out, sizes, opts, fits_in_memory(inputs["curated"])
        )
    for name in learners:
        cfgs[name] = run_config(name, name, data, out, sizes, opts, fits_in_memory(inputs["pool"]))
    chance = 1.0 / max(1, inputs["eval"].count)
    write_suite(out, cfgs, opts.seed, opts.model, chance)

    def interrupted(stage: str) -> dict[str, Any]:
        stages[stage] = "interrupted"
        result["interrupted"] = stage
        print(
            f"pipeline: interrupted during {stage}; run the same command again to continue",
            file=sys.stderr,
        )
        return result

    # 2-3. The reference (trained on CURATED, or pretrained as given) and its cache over the pool,
    # then whether it can guide selection on this pool.
    diag: dict[str, Any] | None = None
    if needs_reference:
        if "reference" in cfgs:
            say(
                f"[2/{STAGES}] reference: uniform training on CURATED -> {out / 'runs/reference'}",
                quiet,
            )
            final, stages["reference"] = train_run(
                cfgs["reference"], out / "runs" / "reference", quiet
            )
            say_skipped(stages["reference"], quiet)
            if final.get("interrupted"):
                return interrupted("reference")
            result["runs"]["reference"] = final
        else:
            say(f"[2/{STAGES}] reference: pretrained {opts.reference} (not trained)", quiet)
            stages["reference"] = "pretrained"
        say(
            f"[3/{STAGES}] cache: the reference's embeddings over POOL -> {out / 'caches/reference'}",
            quiet,
        )
        stages["cache"] = publish_reference(
            out, inputs["pool"], opts.device, opts.progress,
            pretrained=reference_source(out, opts) if opts.reference else "",
        )  # fmt: skip
        say_skipped(stages["cache"], quiet)
        diag = run_diagnostic(out, inputs, opts)
        say("  will JEST help? " + diag["verdict"], quiet)
        for h in diag["helps"]:
            say(f"    would help: {h}", quiet)
    else:
        say(f"[2-3/{STAGES}] reference and cache: not needed (uniform selection)", quiet)
        stages["reference"] = stages["cache"] = "not needed"

    # 4. The learner(s), the same length and batch size.
    length: dict[str, Any] = {"rule": sizes.steps_rule, "steps": sizes.steps}
    if sizes.steps_rule == "epochs":
        length["epochs"] = opts.epochs
    for name in learners:
        say(f"[4/{STAGES}] learner: {name} on POOL -> {out / 'runs' / name}", quiet)
        if plateau and name == "uniform":
            final, stages[name], info = train_to_plateau(
                cfgs[name], out / "runs" / name, sizes.steps, chance, TARGET_METRIC, quiet
            )
            if final.get("interrupted"):
                return interrupted(name)
            length = info
            for other, cfg in cfgs.items():
                if other != "reference":
                    cfg.train.steps = info["steps"]
            say(f"  run length: {describe_rule(info, TARGET_METRIC)}", quiet)
            result["sizes"]["steps"] = info["steps"]
            record.update(sizes=result["sizes"], run_length=info)
            write_json(plan_file, record)
            write_suite(out, cfgs, opts.seed, opts.model, chance)
        else:
            final, stages[name] = train_run(cfgs[name], out / "runs" / name, quiet)
        say_skipped(stages[name], quiet)
        if final.get("interrupted"):
            return interrupted(name)
        result["runs"][name] = final

    sections = report_sections(result["runs"], length, diag, opts, cfgs, chance)
    write_suite(out, cfgs, opts.seed, opts.model, chance, sections)
    result["diagnostic"] = diag
    result["run_length"] = length

    # 5. The report.
    say(f"[5/{STAGES}] report: {out / 'report.md'}", quiet)
    build_report(out, min_seeds=1, plots=opts.plots)
    stages["report"] = "done"
    summary = " | ".join(f"{n}: {describe(f)}" for n, f in result["runs"].items())
    print(f"pipeline: {summary} ({time.perf_counter() - t0:.0f}s) -> {out / 'report.md'}")
    return result
