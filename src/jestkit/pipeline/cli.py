"""`jestkit pipeline`'s arguments and entry point: `jestkit.cli` calls `add_arguments` and `run`."""

from __future__ import annotations

import argparse
from pathlib import Path

from jestkit.errors import check
from jestkit.pipeline.example import write_example_data
from jestkit.pipeline.inputs import INPUTS
from jestkit.pipeline.options import DEFAULT_MODEL, DEFAULT_TEMPLATES, SELECTORS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jestkit.data.transforms import RESIZE_MODES

    parser.add_argument(
        "--pool",
        help="the large, noisy set: CSV/TSV/JSONL/parquet, a jestkit shard folder, or img2dataset "
        "shards (a folder of .tar, or a brace pattern such as 'pool/{00000..00123}.tar')",
    )
    parser.add_argument("--curated", help="the small, clean set the reference learns from")
    parser.add_argument("--eval", help="held-out set for retrieval (and zero-shot with labels)")
    parser.add_argument("--out", help="pipeline folder (data, runs, report)")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="registered model, or py:package.module:function returning an open_clip-style "
        "(model, preprocess, tokenizer) (default: %(default)s)",
    )
    parser.add_argument(
        "--reference",
        default="",
        help="a pretrained reference instead of training one on CURATED: a model folder or "
        "py:package.module:function (e.g. an open_clip model; see docs/your-data.md)",
    )
    parser.add_argument("--selector", default="jest", choices=SELECTORS)
    parser.add_argument(
        "--filter-ratio", type=float, default=0.8, help="f: N = b / (1 - f) (default 0.8)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="learner steps (default: until the uniform baseline's eval metric plateaus)",
    )
    parser.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="learner length as passes of batches over POOL (instead of --steps)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=3000,
        help="cap of the default length (the uniform baseline's plateau) (default 3000)",
    )
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=None,
        help="reference steps (default: by curated size)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="learner batch b (default: by pool size)"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        choices=SELECTORS,
        metavar="SELECTOR",
        help="also train these selectors for the same steps (e.g. uniform, the baseline)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--channels", type=int, default=None, choices=(1, 3),
        help="1 = grey, 3 = RGB (default: 3 if any input image is in colour)",
    )  # fmt: skip
    parser.add_argument(
        "--resize",
        default="crop",
        choices=RESIZE_MODES,
        help="how images are fitted to the model's size (default crop)",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="zero-shot class names in label order: comma-separated, or a file with one per line",
    )
    parser.add_argument(
        "--templates",
        nargs="+",
        default=list(DEFAULT_TEMPLATES),
        help="zero-shot prompt templates with {} for the class name",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-plots", action="store_true", help="skip the report's figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    parser.add_argument(
        "--example-data",
        metavar="DIR",
        default=None,
        help="write a small example (digits as PNG files + pool/curated/eval CSVs) into DIR and exit",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides for every training run, e.g. optim.lr=3e-3",
    )


def _classes_arg(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [c.strip() for c in value.split(",")]
    names = [n for n in names if n]
    check(bool(names), f"--classes {value!r}: no class names")
    return tuple(names)


def run(args: argparse.Namespace) -> int:
    from jestkit.pipeline import pipeline  # the package imports this module

    if args.example_data:
        paths = write_example_data(args.example_data)
        d = args.example_data
        print(
            f"wrote {', '.join(str(p) for p in paths.values())} and their images; try:\n"
            f"  jestkit pipeline --pool {d}/pool.csv --curated {d}/curated.csv --eval {d}/eval.csv "
            f"--out runs/{Path(d).name}"
        )
        return 0
    missing = [f"--{n}" for n in (*INPUTS, "out") if not getattr(args, n)]
    check(not missing, f"{', '.join(missing)} required (or --example-data DIR for an example)")
    result = pipeline(
        args.pool, args.curated, args.eval, args.out, model=args.model, selector=args.selector,
        filter_ratio=args.filter_ratio, steps=args.steps, reference_steps=args.reference_steps,
        epochs=args.epochs, max_steps=args.max_steps, reference=args.reference,
        batch_size=args.batch_size, compare=tuple(args.compare), seed=args.seed,
        channels=args.channels, resize=args.resize, classes=_classes_arg(args.classes),
        templates=tuple(args.templates), overrides=tuple(args.overrides), device=args.device,
        progress=not args.quiet, plots=not args.no_plots,
    )  # fmt: skip
    return 130 if result["interrupted"] else 0
