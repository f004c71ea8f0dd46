"""What `pipeline` can be told besides its inputs: the options, their checks and the sizes
(batch sizes, run lengths) chosen from the amount of data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from jestkit.errors import check

SELECTORS = ("jest", "flexi-jest", "independent", "uniform")
DEFAULT_MODEL = "mlp-tiny-56"
DEFAULT_TEMPLATES = ("a photo of a {}.", "{}")

# Defaults for small data (see plan_sizes).
MAX_BATCH = 256
MIN_BATCH = 8
CURATED_PASSES = 30  # the reference: ~30 passes of batches over the curated set
REFERENCE_STEPS_RANGE = (100, 600)
# Default learner length (#14): train the uniform baseline until its eval metric stops improving.
MAX_STEPS = 3000  # the cap on that run (--max-steps)
PLATEAU_MIN_EVALS = 8  # evaluations before a plateau can be declared
EVAL_EVERY_RANGE = (10, 200)  # steps between evaluations: about one pass of batches over the pool
STEP_RULES = ("plateau", "epochs", "given")


@dataclass(frozen=True)
class PipelineOptions:
    """Everything `pipeline` can be told besides its inputs; None = chosen from the data."""

    model: str = DEFAULT_MODEL
    selector: str = "jest"
    filter_ratio: float = 0.8
    steps: int | None = None
    epochs: float | None = None  # learner length as passes of batches over the pool
    max_steps: int = MAX_STEPS  # cap of the default length (uniform trained to its plateau)
    reference: str = ""  # a pretrained reference (model folder or py:module:function): not trained
    reference_steps: int | None = None
    batch_size: int | None = None
    compare: tuple[str, ...] = ()
    seed: int = 0
    channels: int | None = None  # 1 or 3; None: 3 if any input image is in colour
    resize: str = "crop"
    classes: tuple[str, ...] = ()  # zero-shot class names in label order
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    overrides: tuple[str, ...] = ()  # `section.key=value`, applied to every training run
    # Below: how the pipeline runs, not what it computes.
    device: str = "auto"
    progress: bool = True
    plots: bool = True


# Options that change no run's result, so they may differ on a re-run of the same OUT.
FREE_OPTIONS = ("compare", "device", "progress", "plots")


@dataclass(frozen=True)
class Sizes:
    """Batch sizes and run lengths, from the options or from the data (see plan_sizes)."""

    batch_size: int
    super_batch: int
    n_chunks: int
    steps: int  # with steps_rule "plateau": the cap, until the uniform baseline has plateaued
    eval_every: int
    checkpoint_every: int
    warmup_steps: int
    reference_batch_size: int
    reference_steps: int
    reference_eval_every: int
    reference_warmup_steps: int
    steps_rule: str = "given"  # plateau | epochs | given (see plan_sizes)


def check_options(opts: PipelineOptions) -> PipelineOptions:
    from jestkit.data.transforms import RESIZE_MODES
    from jestkit.models import list_models
    from jestkit.models.factory import is_factory, resolve_factory

    check(
        opts.selector in SELECTORS,
        f"--selector: unknown {opts.selector!r}; known: {list(SELECTORS)}",
    )
    compare = tuple(dict.fromkeys(opts.compare))
    for c in compare:
        check(c in SELECTORS, f"--compare: unknown selector {c!r}; known: {list(SELECTORS)}")
        check(c != opts.selector, f"--compare {c}: that is the --selector itself")
    check(
        isinstance(opts.filter_ratio, (int, float)) and 0.0 < opts.filter_ratio < 1.0,
        f"--filter-ratio must be in (0, 1) (the share of each super-batch filtered out), "
        f"got {opts.filter_ratio!r}",
    )
    check(
        opts.epochs is None
        or (
            isinstance(opts.epochs, (int, float))
            and not isinstance(opts.epochs, bool)
            and opts.epochs > 0
        ),
        f"--epochs must be a number > 0, got {opts.epochs!r}",
    )
    check(opts.steps is None or opts.epochs is None, "--steps and --epochs: give one, not both")
    for name, value, lo in (
        ("--steps", opts.steps, 1),
        ("--max-steps", opts.max_steps, 1),
        ("--reference-steps", opts.reference_steps, 1),
        ("--batch-size", opts.batch_size, 1),
        ("--seed", opts.seed, 0),
    ):
        check(
            value is None or (isinstance(value, int) and value >= lo),
            f"{name} must be an integer >= {lo}, got {value!r}",
        )
    check(opts.channels in (None, 1, 3), f"--channels must be 1 or 3, got {opts.channels!r}")
    check(
        opts.resize in RESIZE_MODES, f"--resize must be one of {RESIZE_MODES}, got {opts.resize!r}"
    )
    if is_factory(opts.model):
        resolve_factory(opts.model)  # a wrong path fails here, naming it
    else:
        check(
            opts.model in list_models(),
            f"--model {opts.model!r}: unknown model; known models: {', '.join(list_models())} "
            "(or py:package.module:function for your own open_clip-style model)",
        )
    if opts.reference:
        from pathlib import Path

        if is_factory(opts.reference):
            resolve_factory(opts.reference)
        else:
            check(
                (Path(opts.reference) / "config.json").is_file(),
                f"--reference {opts.reference!r}: not a model folder (no config.json) and not "
                "py:package.module:function",
            )
    check(len(opts.templates) > 0, "--templates: need at least one template such as 'a {}'")
    for t in opts.templates:
        check("{" in t, f"--templates: {t!r} has no '{{}}' placeholder for the class name")
    model_cfg = model_config(opts)
    for sel in (opts.selector, *compare):
        check(
            sel != "flexi-jest" or len(model_cfg.patch_sizes) > 1,
            f"--selector flexi-jest scores at a lower resolution and needs a FlexiViT with two or "
            f"more patch sizes (e.g. --model vit-tiny-56); {opts.model!r} has "
            f"{list(model_cfg.patch_sizes) or 'none'}",
        )
    return replace(
        opts,
        compare=compare,
        filter_ratio=float(opts.filter_ratio),
        classes=tuple(opts.classes),
        templates=tuple(opts.templates),
        overrides=tuple(opts.overrides),
    )


def model_config(opts: PipelineOptions) -> Any:
    """The model's config with the `model.*` overrides applied (image size, channels, ...);
    for a py: factory its FactoryConfig (the factory is called once)."""
    from jestkit.config import RunConfig, apply_overrides
    from jestkit.models.factory import create_factory_model, is_factory
    from jestkit.models.registry import get_model_config

    cfg = apply_overrides(RunConfig(), opts.overrides)  # fails fast on a bad override
    if is_factory(opts.model):
        if opts.model not in _FACTORY_CONFIGS:
            _FACTORY_CONFIGS[opts.model] = create_factory_model(opts.model)[0].config
        return _FACTORY_CONFIGS[opts.model]
    return get_model_config(opts.model, **cfg.model.overrides)


_FACTORY_CONFIGS: dict[str, Any] = {}


def _multiple(x: float, of: int) -> int:
    return int(x) // of * of


def plan_sizes(pool_count: int, curated_count: int, opts: PipelineOptions) -> Sizes:
    """Batch sizes and run lengths for this much data (the options win where given).

    Small data gets small batches: b is the largest multiple of 8 (at most 256, at least 8) whose
    super-batch N = b / (1 - f) is at most a quarter of the pool, so that every epoch offers
    several different super-batches to select from. The learner's length is ``--steps``,
    ``--epochs`` passes of batches over the pool, or by default (``steps_rule="plateau"``) the
    steps the uniform baseline takes to stop improving, at most ``--max-steps`` (then ``steps`` is
    that cap and evaluations come about once per pass over the pool). The reference uses b' <= b,
    at most a quarter of the curated set, for ~30 passes (100 to 600 steps). JEST's chunks: 16,
    fewer for small b.
    """
    f = opts.filter_ratio
    scoring = any(s != "uniform" for s in (opts.selector, *opts.compare))
    keep = (1.0 - f) if scoring else 1.0
    b = opts.batch_size or min(MAX_BATCH, max(MIN_BATCH, _multiple(pool_count / 4 * keep, 8)))
    n = round(b / (1.0 - f)) if scoring else b
    check(
        n <= pool_count,
        f"--pool has {pool_count} usable example(s), fewer than one super-batch of N = {n} "
        f"(batch {b} at --filter-ratio {f}): add data, lower --filter-ratio or pass a smaller "
        f"--batch-size",
    )
    n_chunks = min(16, max(1, b // 8))
    while b % n_chunks:
        n_chunks -= 1
    # Run length: given (--steps), a number of passes of batches over the pool (--epochs), or by
    # default "plateau": the uniform baseline trains (up to --max-steps) until its eval metric
    # stops improving, and every method then gets the steps it took (see pipeline.sizing).
    if opts.steps:
        steps, rule = opts.steps, "given"
    elif opts.epochs:
        steps, rule = max(1, math.ceil(opts.epochs * pool_count / b)), "epochs"
    else:
        steps, rule = opts.max_steps, "plateau"
    b_ref = min(b, max(MIN_BATCH, _multiple(curated_count / 4, 8)))
    check(
        b_ref <= curated_count,
        f"--curated has {curated_count} usable example(s): too few to train a reference "
        f"(one batch is {b_ref})",
    )
    ref_steps = opts.reference_steps or int(
        np.clip(math.ceil(CURATED_PASSES * curated_count / b_ref), *REFERENCE_STEPS_RANGE)
    )
    eval_every = max(1, steps // 10)
    if rule == "plateau":  # about one pass of batches over the pool between evaluations
        eval_every = min(steps, int(np.clip(math.ceil(pool_count / b), *EVAL_EVERY_RANGE)))
    ref_eval_every = max(1, ref_steps // 5)
    return Sizes(
        batch_size=b,
        super_batch=n,
        n_chunks=n_chunks,
        steps=steps,
        eval_every=eval_every,
        checkpoint_every=eval_every if rule == "plateau" else max(eval_every, steps // 4),
        warmup_steps=min(50, eval_every if rule == "plateau" else steps // 10),
        reference_batch_size=b_ref,
        reference_steps=ref_steps,
        reference_eval_every=ref_eval_every,
        reference_warmup_steps=min(50, ref_steps // 10),
        steps_rule=rule,
    )
