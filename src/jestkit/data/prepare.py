"""`jestkit prepare`: build the embedded dataset (pool, curated, uncurated, eval, zeroshot shards).

    jestkit prepare --out data/fashion                       # fashion-scenes, web-noise, seed 0
    jestkit prepare --dataset digits --out /tmp/digits --pool-size 1000
    jestkit prepare --out data/f --noise caption_swap=0.2 junk_caption=0 --hard-negative-density 0.4

Splits: ``pool`` (the uncurated web pool, with the recipe's noise), ``curated`` (small and clean,
``--curated-fraction`` of the pool, optionally class-imbalanced; fresh scenes from train items),
``uncurated`` (the curated size, drawn with the pool's recipe: the reference-data ablation),
``eval`` (clean scenes from official test-split items, for image<->text retrieval) and
``zeroshot`` (single test-split items with a ``label``, for zero-shot classification).

Deterministic: the same options and seed give the same uids and the same bytes. Written into a
temporary folder and renamed into place, so an interrupted run never leaves a half dataset.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jestkit.data import recipes as rc
from jestkit.data.fashion import DIGIT_CLASSES, FASHION_CLASSES, load_digits
from jestkit.data.scenes import zeroshot_templates
from jestkit.data.shards import (
    FORMAT_VERSION,
    SplitWriter,
    check_out_dir,
    dataset_fingerprint,
    make_tmp_dir,
    publish_dir,
    write_manifest,
)
from jestkit.errors import JestkitError
from jestkit.rng import np_generator

SPLITS = ("pool", "curated", "uncurated", "eval", "zeroshot")
HARD_NEGATIVE_EDITS = ("attribute", "layout")
EVAL_TWIN_GROUP = 4


@dataclass
class PrepareConfig:
    """Everything that determines a prepared dataset (saved in its manifest under ``options``)."""

    dataset: str = "fashion-scenes"
    recipe: str = "web-noise"
    seed: int = 0
    pool_size: int | None = None  # None: the dataset's default (60k for fashion, 2k for digits)
    curated_fraction: float = 0.08
    eval_size: int | None = None
    zeroshot_size: int | None = None
    noise: dict[str, float] = field(default_factory=dict)  # overrides of the recipe's rates
    hard_negative_density: float | None = None  # None: 0.25 for scenes, 0 otherwise
    hard_negative_group_size: int = 2
    hard_negative_edits: str = "attribute"  # or "layout": class changes and edit pairs too
    near_duplicate_groups: int = 1
    curated_imbalance: str | None = None
    min_items: int = 2
    max_items: int = 4
    shard_size: int = 5000

    def resolved(self) -> PrepareConfig:
        """Defaults filled in and every value validated (errors name the CLI flag)."""
        c = PrepareConfig(**{**asdict(self), "noise": dict(self.noise)})
        c.dataset = rc.canonical_dataset(c.dataset)
        defaults = rc.DATASET_DEFAULTS[c.dataset]
        for key in ("pool_size", "eval_size", "zeroshot_size", "hard_negative_density"):
            if getattr(c, key) is None:
                setattr(c, key, defaults[key])
        rc.noise_rates(c.recipe, c.noise)

        def check_int(name: str, value: Any, lo: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise JestkitError(
                    f"--{name.replace('_', '-')}: must be an integer >= {lo}, got {value!r}"
                )

        check_int("seed", c.seed, 0)
        check_int("pool_size", c.pool_size, 1)
        check_int("eval_size", c.eval_size, 0)
        check_int("zeroshot_size", c.zeroshot_size, 0)
        check_int("hard_negative_group_size", c.hard_negative_group_size, 2)
        check_int("near_duplicate_groups", c.near_duplicate_groups, 1)
        check_int("shard_size", c.shard_size, 1)
        check_int("min_items", c.min_items, 1)
        check_int("max_items", c.max_items, c.min_items)
        if c.max_items > 4:
            raise JestkitError(f"--max-items: a 2x2 grid holds at most 4 items, got {c.max_items}")
        if not 0.0 <= c.curated_fraction <= 1.0:
            raise JestkitError(f"--curated-fraction: must be in [0, 1], got {c.curated_fraction!r}")
        if not 0.0 <= c.hard_negative_density <= 1.0:
            raise JestkitError(
                f"--hard-negative-density: must be in [0, 1], got {c.hard_negative_density!r}"
            )
        n_classes = len(DIGIT_CLASSES if c.dataset == "digits" else FASHION_CLASSES)
        if c.hard_negative_edits not in HARD_NEGATIVE_EDITS:
            raise JestkitError(
                f"--hard-negative-edits: must be one of {list(HARD_NEGATIVE_EDITS)}, got {c.hard_negative_edits!r}"
            )
        most = max_group_size(c.hard_negative_edits, c.min_items, c.max_items, n_classes)
        if c.hard_negative_group_size > most:
            what = (
                "a distinct single edit"
                if c.hard_negative_edits == "attribute"
                else "a distinct edit, or pair or triple of edits,"
            )
            raise JestkitError(
                f"--hard-negative-group-size: must be <= {most} with --hard-negative-edits "
                f"{c.hard_negative_edits} (each twin is {what} of the group's first scene), got "
                f"{c.hard_negative_group_size}"
            )
        rc.parse_class_weights(c.curated_imbalance, n_classes)
        return c

    @property
    def curated_size(self) -> int:
        return round(self.curated_fraction * self.pool_size)


def max_group_size(edits: str, min_items: int, max_items: int, n_classes: int) -> int:
    """The largest near-twin group every scene size can fill: the base plus one variant per
    distinct single edit ("attribute"), or per distinct single edit, compatible pair or compatible
    triple ("layout"). Edit counts depend only on the number of items, so a scene in the first
    cells stands for all."""
    from jestkit.data import scenes as sc

    most = []
    for n in range(min_items, max_items + 1):
        scene = tuple(sc.Item(0, 0, cell, False, False) for cell in range(n))
        if edits == "attribute":
            most.append(1 + len(sc.twin_edits(scene)))
            continue
        singles = sc.layout_edits(scene, n_classes)
        pairs, triples = (len(sc.compatible_combinations(singles, k)) for k in (2, 3))
        most.append(1 + len(singles) + pairs + triples)
    return min(most)


def plan_splits(config: PrepareConfig) -> list[rc.SplitPlan]:
    """The splits of a prepared dataset, in generation order (fixed: it seeds uid de-duplication)."""
    c = config
    train, test = rc.load_source(c.dataset, "train"), rc.load_source(c.dataset, "test")
    rates = rc.noise_rates(c.recipe, c.noise)
    clean = dict.fromkeys(rc.NOISE_KINDS, 0.0)
    hnd = c.hard_negative_density
    n_classes = train.n_classes
    common = {
        "group_size": c.hard_negative_group_size,
        "twin_edits": c.hard_negative_edits,
        "dup_groups": c.near_duplicate_groups,
    }
    # The eval split's twins are the fine-grained eval (own caption among the group's): groups
    # of at most EVAL_TWIN_GROUP keep it readable (chance 1/4) and leave most of the split to
    # ordinary retrieval, whatever the pool's group size.
    eval_common = {**common, "group_size": min(c.hard_negative_group_size, EVAL_TWIN_GROUP)}
    plans = [
        rc.SplitPlan("pool", c.pool_size, train, rates, hnd, label=f"pool/{c.recipe}", **common),
        rc.SplitPlan(
            "curated", c.curated_size, train, clean, hnd,
            class_probs=rc.parse_class_weights(c.curated_imbalance, n_classes), label="curated/clean", **common,
        ),
        rc.SplitPlan("uncurated", c.curated_size, train, rates, hnd, label=f"uncurated/{c.recipe}", **common),
        rc.SplitPlan("eval", c.eval_size, test, clean, hnd, label="eval/clean", **eval_common),
        rc.SplitPlan("zeroshot", c.zeroshot_size, test, clean, 0.0, single_item=True, label="zeroshot/clean", **common),
    ]  # fmt: skip
    return [p for p in plans if p.size > 0]


def prepare_dataset(
    dataset: str | PrepareConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Generate and write a dataset to ``out``; returns its manifest.

    ``prepare_dataset("fashion-scenes", "data/f", recipe="web-noise", seed=0, pool_size=20000)``:
    ``options`` are :class:`PrepareConfig` fields; or pass a whole ``PrepareConfig`` as ``dataset``.
    """
    from tqdm import tqdm

    from jestkit import __version__

    if isinstance(dataset, PrepareConfig):
        if options:
            raise JestkitError(
                f"prepare_dataset: pass options in the PrepareConfig, not as {sorted(options)}"
            )
        config = dataset
    else:
        unknown = sorted(set(options) - set(PrepareConfig.__dataclass_fields__))
        if unknown:
            raise JestkitError(
                f"prepare_dataset: unknown option(s) {unknown}; known: {sorted(PrepareConfig.__dataclass_fields__)}"
            )
        config = PrepareConfig(dataset=dataset, **options)
    c = config.resolved()
    out = Path(out)
    check_out_dir(out, overwrite)
    plans = plan_splits(c)
    off_source = None
    if c.dataset != "digits":
        images, labels = load_digits()
        off_source = rc.Source(images, labels, "digits", len(DIGIT_CLASSES))
    image_size = int(rc.DATASET_DEFAULTS[c.dataset]["image_size"])
    shape = (1, image_size, image_size)

    tmp = make_tmp_dir(out)  # a JestkitError naming --out if it cannot be written
    try:
        seen: set[str] = set()
        splits: dict[str, dict[str, Any]] = {}
        bar = tqdm(
            total=sum(p.size for p in plans),
            desc="prepare",
            unit="ex",
            disable=not progress or None,
        )
        for plan in plans:
            bar.set_postfix_str(plan.name)
            gen = rc.SplitGenerator(
                c.dataset, plan, np_generator(c.seed, "prepare", plan.name), seen,
                n_items=(c.min_items, c.max_items), off_source=off_source, progress=bar.update,
            )  # fmt: skip
            records = gen.generate()
            measured = rc.measured_rates(records)
            writer = SplitWriter(
                tmp / plan.name, shape, shard_size=c.shard_size, strict=True, name=plan.name
            )
            for r in records:
                writer.write(r.png, r.caption, r.meta, uid=r.uid)
            info = writer.close(extra={"dataset": c.dataset, "noise_rates": measured})
            splits[plan.name] = {
                "path": plan.name,
                "count": info["count"],
                "shards": info["shards"],
                "fingerprint": info["fingerprint"],
                "source": plan.label,
                "noise_rates": {k: measured[k] for k in rc.NOISE_KINDS},
                "hard_negative_density": measured["hard_negative_density"],
                "twin_group_mates": measured["twin_group_mates"],
            }
        bar.close()
        classes = list(DIGIT_CLASSES if c.dataset == "digits" else FASHION_CLASSES)
        requested = rc.noise_rates(c.recipe, c.noise)
        manifest = {
            "format": "jestkit-dataset",
            "version": FORMAT_VERSION,
            "name": c.dataset,
            "recipe": c.recipe,
            "seed": c.seed,
            "image_size": image_size,
            "in_channels": 1,
            "classes": classes,
            "templates": zeroshot_templates(c.dataset),
            "splits": splits,
            "noise_rates": {"requested": requested, "measured": splits["pool"]["noise_rates"]},
            "hard_negative_density": {
                "requested": c.hard_negative_density,
                "measured": splits["pool"]["hard_negative_density"],
            },
            "fingerprint": dataset_fingerprint(splits),
            "options": asdict(c),
            "created_by": f"jestkit {__version__}",
        }
        write_manifest(tmp, manifest)
        publish_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------------------------------------
# CLI


def parse_noise(items: list[str] | None) -> dict[str, float]:
    """``["caption_swap=0.1", "junk-caption=0"]`` -> ``{"caption_swap": 0.1, "junk_caption": 0.0}``."""
    rates: dict[str, float] = {}
    for item in items or []:
        kind, sep, value = item.partition("=")
        kind = kind.strip().replace("-", "_")
        try:
            if not sep:
                raise ValueError
            rates[kind] = float(value)
        except ValueError:
            raise JestkitError(
                f"--noise: expected KIND=RATE, got {item!r} (kinds: {', '.join(rc.NOISE_KINDS)})"
            ) from None
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument(
        "--dataset",
        default="fashion-scenes",
        help=f"one of {', '.join(rc.DATASETS)} (fashion-mnist = fashion-scenes)",
    )
    parser.add_argument("--recipe", default="web-noise", choices=sorted(rc.RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pool-size", type=int, help="pool examples (default 60000; 2000 for digits)"
    )
    parser.add_argument(
        "--curated-fraction",
        type=float,
        default=0.08,
        help="curated size as a fraction of the pool (default 0.08)",
    )
    parser.add_argument(
        "--eval-size", type=int, help="retrieval eval examples (default 2000; 256 for digits)"
    )
    parser.add_argument(
        "--zeroshot-size", type=int, help="zero-shot examples (default 2000; 256 for digits)"
    )
    parser.add_argument(
        "--noise",
        nargs="*",
        metavar="KIND=RATE",
        help=f"override the recipe's rates; kinds: {', '.join(rc.NOISE_KINDS)}",
    )
    parser.add_argument(
        "--hard-negative-density",
        type=float,
        help="fraction of scenes with near-twins (default 0.25 for scenes)",
    )
    parser.add_argument(
        "--hard-negative-group-size",
        type=int,
        default=2,
        help="scenes per near-twin group (default 2)",
    )
    parser.add_argument(
        "--hard-negative-edits",
        default="attribute",
        choices=HARD_NEGATIVE_EDITS,
        help="attribute: twins differ in one item's position, intensity or size (groups <= 9); "
        "layout: also in its class, then in two edits (groups of dozens: near-twins in every "
        "super-batch)",
    )
    parser.add_argument(
        "--near-duplicate-groups",
        type=int,
        default=1,
        help="distinct pairs the near-duplicates copy (default 1)",
    )
    parser.add_argument(
        "--curated-imbalance",
        help="imbalance ratio r >= 1 (long tail) or one weight per class, comma-separated",
    )
    parser.add_argument(
        "--min-items", type=int, default=2, help="items per scene, at least (default 2)"
    )
    parser.add_argument(
        "--max-items", type=int, default=4, help="items per scene, at most (default 4)"
    )
    parser.add_argument(
        "--shard-size", type=int, default=5000, help="examples per tar shard (default 5000)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    config = PrepareConfig(
        dataset=args.dataset,
        recipe=args.recipe,
        seed=args.seed,
        pool_size=args.pool_size,
        curated_fraction=args.curated_fraction,
        eval_size=args.eval_size,
        zeroshot_size=args.zeroshot_size,
        noise=parse_noise(args.noise),
        hard_negative_density=args.hard_negative_density,
        hard_negative_group_size=args.hard_negative_group_size,
        hard_negative_edits=args.hard_negative_edits,
        near_duplicate_groups=args.near_duplicate_groups,
        curated_imbalance=args.curated_imbalance,
        min_items=args.min_items,
        max_items=args.max_items,
        shard_size=args.shard_size,
    )
    t0 = time.perf_counter()
    manifest = prepare_dataset(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        for name, s in manifest["splits"].items():
            noisy = sum(s["noise_rates"].values())
            print(
                f"  {name:<10} {s['count']:>7} examples  {len(s['shards'])} shard(s)  noise {noisy:.1%}  near-twins {s['hard_negative_density']:.1%} ({s['twin_group_mates']:.1f} group-mates each)"
            )
        req, meas = manifest["noise_rates"]["requested"], manifest["noise_rates"]["measured"]
        print(
            "  pool noise (requested -> measured): "
            + ", ".join(f"{k} {req[k]:.3f}->{meas[k]:.3f}" for k in rc.NOISE_KINDS)
        )
        print(
            f"wrote {manifest['name']} ({manifest['recipe']}, seed {manifest['seed']}) to {args.out} in {time.perf_counter() - t0:.1f}s"
        )
    return 0
