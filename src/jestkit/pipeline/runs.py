"""Stages 2-4: each run's `jestkit.train` config, training (skipped when finished, resumed when
interrupted), the reference's export and cache over POOL, and OUT/suite.json for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jestkit.metrics import final_record
from jestkit.pipeline.inputs import Input
from jestkit.pipeline.options import PipelineOptions, Sizes
from jestkit.pipeline.util import say, write_json

TARGET_METRIC = "eval/retrieval_r1"


def run_config(
    name: str,
    selector: str,
    data: Path,
    out: Path,
    sizes: Sizes,
    opts: PipelineOptions,
    in_memory: bool = True,
) -> Any:
    """The `jestkit.train` config of one run (reference: uniform on CURATED; else on POOL).

    `in_memory`: decode the training split into RAM once (the fast path), else stream it.
    """
    from jestkit.config import RunConfig, apply_overrides, validate
    from jestkit.step import FLEXI_MULTIRES_FRACTION

    cfg = RunConfig(name=name)
    cfg.data.dir = str(data.resolve())
    cfg.data.dataset = ""
    cfg.data.in_memory = in_memory
    cfg.model.name = opts.model
    cfg.train.seed = opts.seed
    cfg.train.device = opts.device
    cfg.train.progress = opts.progress
    cfg.train.eval_max_examples = 0
    if name == "reference":
        cfg.data.train_split = "curated"
        cfg.selection.method = "uniform"
        cfg.train.steps = sizes.reference_steps
        cfg.train.batch_size = sizes.reference_batch_size
        cfg.train.eval_every = sizes.reference_eval_every
        cfg.train.checkpoint_every = sizes.reference_eval_every
        cfg.optim.warmup_steps = sizes.reference_warmup_steps
    else:
        cfg.data.train_split = "pool"
        cfg.selection.method = selector
        cfg.selection.filter_ratio = opts.filter_ratio
        cfg.selection.n_chunks = sizes.n_chunks
        cfg.train.steps = sizes.steps
        cfg.train.batch_size = sizes.batch_size
        cfg.train.eval_every = sizes.eval_every
        cfg.train.checkpoint_every = sizes.checkpoint_every
        cfg.optim.warmup_steps = sizes.warmup_steps
        if sizes.steps_rule == "plateau":
            # Constant after warmup: the run length is found while training (pipeline.sizing),
            # and every method gets the same schedule.
            cfg.optim.min_lr_ratio = 1.0
        if selector == "flexi-jest":
            # Stated in the run's config (step.plan would default it too), so config.json says
            # what the run trained with.
            cfg.train.multires_fraction = FLEXI_MULTIRES_FRACTION
        if selector != "uniform":
            cfg.selection.reference = reference_source(out, opts)
            cfg.selection.reference_cache = str((out / "caches" / "reference").resolve())
    apply_overrides(cfg, opts.overrides)
    return validate(cfg)


def reference_source(out: Path, opts: PipelineOptions) -> str:
    """The reference the learners use: --reference as given (pretrained), or the trained one."""
    from jestkit.models.factory import is_factory

    if is_factory(opts.reference):
        return opts.reference
    if opts.reference:
        return str(Path(opts.reference).resolve())
    return str((out / "references" / "reference").resolve())


def fits_in_memory(inp: Input) -> bool:
    """Whether the decoded split fits in RAM (the loader's own rule for `in_memory=None`)."""
    from jestkit.data.loader import DEFAULT_MAX_MEMORY

    shape = int(inp.info["in_channels"]) * int(inp.info["image_size"]) ** 2
    return inp.count * shape <= DEFAULT_MAX_MEMORY


def train_run(cfg: Any, run_dir: Path, quiet: bool) -> tuple[dict[str, Any], str]:
    """(final record, "done" | "resumed" | "skipped"); a finished run is not touched."""
    from jestkit.checkpoint import latest_checkpoint
    from jestkit.train import train

    final = final_record(run_dir)
    if final is not None:
        return final, "skipped"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        say(f"  resuming from {ckpt}", quiet)
    return train(cfg, run_dir, resume="latest"), "resumed" if ckpt is not None else "done"


def publish_reference(
    out: Path, pool: Input, device: str, progress: bool, pretrained: str = ""
) -> str:
    """Stage 3: export the reference run's model (or take the ``pretrained`` one as given) and
    cache it over POOL (each skipped if valid)."""
    from jestkit.devices import resolve_device
    from jestkit.stages import cache_reference, export_reference

    model_dir = out / "references" / "reference"
    status = "skipped" if pretrained or (model_dir / "config.json").is_file() else "done"
    if pretrained:
        model_dir = pretrained  # a folder or py:module:function: load_pretrained reads both
    else:
        export_reference(out / "runs" / "reference", model_dir)
    cache_dir = out / "caches" / "reference"
    before = (
        (cache_dir / "meta.json").stat().st_mtime_ns
        if (cache_dir / "meta.json").is_file()
        else None
    )
    cache_reference(
        model_dir, pool.split_dir, cache_dir, device=resolve_device(device), progress=progress,
        verbose=False,
    )  # fmt: skip
    after = (cache_dir / "meta.json").stat().st_mtime_ns
    return "done" if before != after else status


def write_suite(
    out: Path,
    cfgs: dict[str, Any],
    seed: int,
    family: str,
    chance_level: float | None = None,
    sections: list[dict[str, Any]] | None = None,
) -> None:
    """OUT/suite.json: the runs as a suite, so `jestkit report OUT` (and build_report) reads it.

    ``chance_level`` (1 / eval size) lets the report flag near-chance methods; ``sections``
    (``{"title", "lines"}``) are the pipeline's own report sections (run length, diagnostic).
    """
    learners = {n: c for n, c in cfgs.items() if n != "reference"}
    uniform = [n for n, c in learners.items() if c.selection.method == "uniform"]
    entries = []
    for name, cfg in cfgs.items():
        ref = name == "reference"
        scores = cfg.selection.method != "uniform"
        entries.append(
            {
                "name": name,
                "method": name,
                "seed": seed,
                "kind": "reference" if ref else "learner",
                "family": family,
                "baseline": None if ref or not uniform else uniform[0],
                "reference": "reference" if scores and not ref and "reference" in cfgs else None,
                "selection": cfg.selection.method,
                "criterion": cfg.selection.criterion,
                "filter_ratio": cfg.selection.filter_ratio,
                "batch_size": cfg.train.batch_size,
                "steps": cfg.train.steps,
                "dir": f"runs/{name}",
            }
        )
    write_json(
        out / "suite.json",
        {
            "title": "jestkit pipeline report",
            "claims": False,
            "final_eval_table": True,
            "mode": "pipeline",
            "target_metric": TARGET_METRIC,
            "chance_level": chance_level,
            "sections": sections or [],
            "runs": entries,
        },
    )


def describe(final: dict[str, Any]) -> str:
    def get(key: str) -> str:
        v = final.get(f"eval/{key}")
        return "–" if v is None else f"{v:.3f}"

    text = f"R@1 i2t {get('i2t_r1')} t2i {get('t2i_r1')}"
    if "eval/zeroshot_top1" in final:
        text += f", zero-shot {get('zeroshot_top1')}"
    return text
