"""Recipes: a noisy "web" pool, a small clean curated set, held-out eval splits.

A split is generated from a seed as a list of :class:`Record` (PNG bytes, caption, uid, metadata).
Noise kinds are assigned to exact counts (``round(rate * size)``), so measured rates equal the
requested ones up to rounding, and every record says in its metadata which noise, if any, it got:

- ``caption_swap``: the true caption of another example with different content;
- ``junk_caption``: web boilerplate unrelated to any image ("IMG_2034.JPG", "click here", ...);
- ``image_corrupt``: gaussian noise, a blank image or a heavy occlusion (``noise_detail``);
- ``near_duplicate``: one (image, caption) pair repeated many times, a few pixels perturbed by +-1
  in each copy so that every copy keeps its own uid (``dup_group``);
- ``off_distribution``: handwritten sklearn digits drawn on the canvas, with a caption that
  describes them (simple shapes for the ``digits`` dataset).

Graded noise (the ``graded-web`` recipe), a continuum of quality rather than right-or-wrong:

- ``caption_partial``: a true scene whose caption gets one detail wrong (``noise_detail``: one
  item's ``class``, ``tone``, ``size`` or position (``move``), an item ``missing`` from the caption
  or an ``extra`` one in it): mostly right, so worth less than a clean pair, more than a swap;
- ``image_degrade``: gaussian noise or an occluder at severity 1, 2 or 3 (``noise_detail``
  ``gaussian-2``, ``occlusion-3``, ...): the content stays visible, less so with each step.

Hard negatives: a fraction of the clean scenes come in groups of near-twins that differ from the
group's first scene in exactly one item's position, intensity or size (``hard_negative_group``);
twins share the caption wording, so their captions differ only where the scenes do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jestkit.data import scenes as sc
from jestkit.data.fashion import DIGIT_CLASSES, FASHION_CLASSES, load_digits, load_fashion_mnist
from jestkit.data.shards import DEFAULT_META
from jestkit.data.transforms import encode_png
from jestkit.data.uids import compute_uid
from jestkit.errors import JestkitError

NOISE_KINDS = (
    "caption_swap",
    "junk_caption",
    "image_corrupt",
    "near_duplicate",
    "off_distribution",
    "caption_partial",
    "image_degrade",
)
RECIPES: dict[str, dict[str, float]] = {
    "web-noise": {
        "caption_swap": 0.10,
        "junk_caption": 0.05,
        "image_corrupt": 0.05,
        "near_duplicate": 0.02,
        "off_distribution": 0.05,
    },
    # Half the pool imperfect, mostly in degrees: f = 0.9 still has worse examples to drop than
    # f = 0.8 (the binary web-noise recipe is mostly gone at f = 0.5).
    "graded-web": {
        "caption_swap": 0.06,
        "junk_caption": 0.03,
        "image_corrupt": 0.03,
        "near_duplicate": 0.02,
        "off_distribution": 0.03,
        "caption_partial": 0.20,
        "image_degrade": 0.13,
    },
    "clean": dict.fromkeys(NOISE_KINDS, 0.0),
}
SCENE_ONLY_NOISE = ("caption_partial",)
DEGRADE_KINDS = ("gaussian", "occlusion")
DEGRADE_SEVERITIES = (1, 2, 3)
DATASETS = ("fashion-scenes", "fashion-single", "digits")
DATASET_ALIASES = {"fashion-mnist": "fashion-scenes"}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "fashion-scenes": {
        "image_size": sc.CANVAS,
        "pool_size": 60_000,
        "eval_size": 2000,
        "zeroshot_size": 2000,
        "hard_negative_density": 0.25,
    },
    "fashion-single": {
        "image_size": 28,
        "pool_size": 60_000,
        "eval_size": 2000,
        "zeroshot_size": 2000,
        "hard_negative_density": 0.0,
    },
    "digits": {
        "image_size": 8,
        "pool_size": 2000,
        "eval_size": 256,
        "zeroshot_size": 256,
        "hard_negative_density": 0.0,
    },
}
CORRUPTIONS = ("gaussian", "blank", "occlusion")
JUNK_CAPTIONS = (
    "click here to download",
    "IMG_{n4}.JPG",
    "DSC{n5}.jpg",
    "image not found",
    "404 page not found",
    "free shipping on orders over ${n2}",
    "buy now and save {n2}%",
    "untitled-{n3}",
    "thumbnail {n3}x{n3}",
    "cookie settings | privacy policy | terms of use",
    "subscribe to our newsletter",
    "copyright {year} all rights reserved",
    "loading...",
    "advertisement",
    "sponsored",
    "share on facebook twitter pinterest",
    "best price guaranteed!!!",
    "lorem ipsum dolor sit amet",
    "click to enlarge",
    "see more like this",
    "screenshot {year}-{m}-{d} at {h}.{m}.{d}",
    "placeholder",
    "no description available",
    "default alt text",
    "banner_{n3}x{n2}.gif",
    "product_{n6}_main",
    "https://cdn.example.com/img/{hex}.jpg",
)
SHAPES = (
    "square",
    "cross",
    "horizontal bar",
    "vertical bar",
    "diagonal line",
    "frame",
    "dot",
    "checkerboard",
)
SHAPE_TEMPLATES = ("a white {}.", "a drawing of a {}.", "a {} icon.", "a simple {}.")
MAX_ATTEMPTS = 200


@dataclass
class Record:
    """One generated example, encoded: what goes into a shard."""

    png: bytes
    caption: str
    uid: str
    meta: dict[str, Any]


@dataclass
class Source:
    """The real images a split draws its items from."""

    images: np.ndarray  # uint8 [n, h, w]
    labels: np.ndarray  # int64 [n]
    origin: str  # "fashion-train", "digits-test", ...
    n_classes: int
    by_class: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(self.n_classes)]


def canonical_dataset(name: str) -> str:
    name = DATASET_ALIASES.get(name, name)
    if name not in DATASETS:
        raise JestkitError(
            f"--dataset: unknown dataset {name!r}; choose from {[*DATASETS, *DATASET_ALIASES]}"
        )
    return name


def load_source(dataset: str, split: str) -> Source:
    if dataset == "digits":
        images, labels = load_digits(split)
        return Source(images, labels, f"digits-{split}", len(DIGIT_CLASSES))
    images, labels = load_fashion_mnist(split)
    return Source(images, labels, f"fashion-{split}", len(FASHION_CLASSES))


def noise_rates(recipe: str, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The recipe's noise rates with ``overrides`` applied, validated."""
    if recipe not in RECIPES:
        raise JestkitError(f"--recipe: unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    rates = dict.fromkeys(NOISE_KINDS, 0.0) | RECIPES[recipe]  # every kind, 0 when not in it
    for kind, rate in (overrides or {}).items():
        if kind not in NOISE_KINDS:
            raise JestkitError(
                f"--noise: unknown noise kind {kind!r}; choose from {list(NOISE_KINDS)}"
            )
        if not 0.0 <= float(rate) <= 1.0:
            raise JestkitError(f"--noise: {kind} rate must be in [0, 1], got {rate!r}")
        rates[kind] = float(rate)
    if sum(rates.values()) > 1.0 + 1e-9:
        raise JestkitError(f"--noise: rates sum to {sum(rates.values()):.3f} > 1 ({rates})")
    return rates


def parse_class_weights(spec: str | float | None, n_classes: int) -> np.ndarray | None:
    """Class probabilities for a class-imbalanced curated set.

    ``None``/``1``: balanced. A number r > 1: a long tail, class c weighted ``r ** (-c / (K - 1))``
    (the most frequent class r times the least). ``"w0,w1,..."``: one weight per class.
    """
    if spec is None or spec == "":
        return None
    text = str(spec)
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise JestkitError(
            f"--curated-imbalance: expected a number or {n_classes} comma-separated weights, got {spec!r}"
        ) from None
    if len(values) == 1:
        r = values[0]
        if not r >= 1.0:
            raise JestkitError(
                f"--curated-imbalance: the imbalance ratio must be >= 1, got {spec!r}"
            )
        if r == 1.0:
            return None
        w = r ** (-np.arange(n_classes) / max(n_classes - 1, 1))
    else:
        if len(values) != n_classes or min(values) < 0 or sum(values) <= 0:
            raise JestkitError(
                f"--curated-imbalance: expected {n_classes} non-negative weights with a positive sum, got {spec!r}"
            )
        w = np.asarray(values)
    return w / w.sum()


# ---------------------------------------------------------------------------------------------
# noise operations (pure functions of an image and a generator)


def corrupt_image(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Gaussian noise (sigma 96), a blank image, or an occluder over 60-90% of the canvas."""
    kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
    if kind == "gaussian":
        noisy = image.astype(np.float32) + rng.normal(0.0, 96.0, size=image.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), kind
    if kind == "blank":
        return np.full_like(image, int(rng.integers(0, 256))), kind
    out = image.copy()
    _, h, w = image.shape
    fh, fw = rng.uniform(0.78, 0.95, size=2)
    oh, ow = max(1, round(h * fh)), max(1, round(w * fw))
    y, x = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    out[:, y : y + oh, x : x + ow] = int(rng.integers(0, 256))
    return out, kind


def degrade_image(
    image: np.ndarray, rng: np.random.Generator, severity: int
) -> tuple[np.ndarray, str]:
    """Graded damage: gaussian noise of sigma ``24 * severity``, or an occluder over
    ``0.15 * severity`` of the canvas (severity 1-3; :func:`corrupt_image` is the ruinous kind)."""
    if severity not in DEGRADE_SEVERITIES:
        raise ValueError(f"severity must be one of {DEGRADE_SEVERITIES}, got {severity!r}")
    kind = DEGRADE_KINDS[int(rng.integers(len(DEGRADE_KINDS)))]
    if kind == "gaussian":
        noisy = image.astype(np.float32) + rng.normal(0.0, 24.0 * severity, size=image.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), f"{kind}-{severity}"
    out = image.copy()
    _, h, w = image.shape
    side = np.sqrt(0.15 * severity)
    oh, ow = max(1, round(h * side)), max(1, round(w * side))
    y, x = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    out[:, y : y + oh, x : x + ow] = int(rng.integers(0, 256))
    return out, f"{kind}-{severity}"


def perturb_pixels(image: np.ndarray, rng: np.random.Generator, n_pixels: int = 3) -> np.ndarray:
    """A near-duplicate: ``n_pixels`` pixels moved by +-1 (visually identical, new bytes)."""
    out = image.copy()
    flat = out.reshape(-1)
    for i in rng.choice(flat.size, size=min(n_pixels, flat.size), replace=False):
        v = int(flat[i])
        step = 1 if v == 0 else -1 if v == 255 else int(rng.choice((-1, 1)))
        flat[i] = v + step
    return out


def junk_caption(rng: np.random.Generator) -> str:
    """Web boilerplate: text unrelated to any image."""
    t = JUNK_CAPTIONS[int(rng.integers(len(JUNK_CAPTIONS)))]
    r = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    return t.format(
        n2=r(10, 100), n3=r(100, 1000), n4=r(1000, 10000), n5=r(10000, 100000), n6=r(100000, 1000000),
        year=r(2005, 2025), m=f"{r(1, 13):02d}", d=f"{r(1, 29):02d}", h=f"{r(0, 24):02d}",
        hex=f"{r(0, 2**31):08x}",
    )  # fmt: skip


def draw_shape(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A simple white shape on black, ``uint8 [size, size]`` (off-distribution for ``digits``)."""
    img = np.zeros((size, size), np.uint8)
    v = int(rng.integers(180, 256))
    a, b = size // 4, size - size // 4
    m = size // 2
    if name == "square":
        img[a:b, a:b] = v
    elif name == "cross":
        img[m - 1 : m + 1, :] = v
        img[:, m - 1 : m + 1] = v
    elif name == "horizontal bar":
        img[m - 1 : m + 1, 1:-1] = v
    elif name == "vertical bar":
        img[1:-1, m - 1 : m + 1] = v
    elif name == "diagonal line":
        np.fill_diagonal(img, v)
    elif name == "frame":
        img[[0, -1], :] = v
        img[:, [0, -1]] = v
    elif name == "dot":
        img[m - 1 : m + 1, m - 1 : m + 1] = v
    elif name == "checkerboard":
        img[(np.add.outer(np.arange(size), np.arange(size)) // max(1, size // 4)) % 2 == 0] = v
    else:
        raise ValueError(f"unknown shape {name!r}")
    return img


# ---------------------------------------------------------------------------------------------
# split generation


@dataclass
class SplitPlan:
    """What one split holds: size, item source, noise rates, twins, class skew."""

    name: str
    size: int
    source: Source
    rates: dict[str, float]
    hard_negative_density: float = 0.0
    group_size: int = 2
    # "attribute": twins differ from the group's first scene in one item's position, intensity or
    # size (groups of at most 9). "layout": also in one item's class, then in two such edits, so a
    # group can hold dozens of variants of one layout (near-twins in every super-batch).
    twin_edits: str = "attribute"
    dup_groups: int = 1
    class_probs: np.ndarray | None = None
    single_item: bool = False  # zero-shot split: one item per image, with its label
    label: str = ""  # metadata "source" value, e.g. "pool/web-noise"


class SplitGenerator:
    """Generates one split's records from a numpy generator; ``seen`` keeps uids unique across splits."""

    def __init__(
        self,
        dataset: str,
        plan: SplitPlan,
        rng: np.random.Generator,
        seen: set[str],
        n_items: tuple[int, int] = (2, 4),
        off_source: Source | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        self.dataset = dataset
        self.plan = plan
        self.rng = rng
        self.seen = seen
        self.n_items = n_items
        self.off_source = off_source
        self.progress = progress or (lambda n: None)
        self.scenes = dataset == "fashion-scenes"
        self._cycle: np.ndarray = np.zeros(0, np.int64)
        self._cycle_pos = 0

    # -- building blocks ------------------------------------------------------------------------

    def _meta(self, **kw: Any) -> dict[str, Any]:
        meta = {
            **DEFAULT_META,
            "source": self.plan.label or self.plan.name,
            "origin": self.plan.source.origin,
        }
        meta.update(kw)
        return meta

    def _claim(self, items: list[tuple[np.ndarray, str, dict[str, Any]]]) -> list[Record] | None:
        """Encode and hash; None (nothing claimed) if any uid is already taken."""
        recs = []
        for image, caption, meta in items:
            png = encode_png(image)
            recs.append(Record(png, caption, compute_uid(png, caption), meta))
        uids = [r.uid for r in recs]
        if len(set(uids)) != len(uids) or any(u in self.seen for u in uids):
            return None
        self.seen.update(uids)
        return recs

    def _retry(
        self, make: Callable[[], list[tuple[np.ndarray, str, dict[str, Any]]]], what: str
    ) -> list[Record]:
        for _ in range(MAX_ATTEMPTS):
            recs = self._claim(make())
            if recs is not None:
                self.progress(len(recs))
                return recs
        raise JestkitError(
            f"split {self.plan.name}: could not generate a unique {what} example in {MAX_ATTEMPTS} "
            f"attempts; the dataset {self.dataset!r} has too few distinct examples for size {self.plan.size}"
        )

    def _instance(self, label: int) -> int:
        """A source row of class ``label``, uniformly (a garment of that kind)."""
        rows = self.plan.source.by_class[label]
        return int(rows[self.rng.integers(len(rows))])

    def _draw_item(self) -> int:
        """A source row: class-skewed draw if the plan says so, else cycle a permutation."""
        src = self.plan.source
        if self.plan.class_probs is not None:
            return self._instance(int(self.rng.choice(src.n_classes, p=self.plan.class_probs)))
        if self._cycle_pos >= len(self._cycle):
            self._cycle, self._cycle_pos = self.rng.permutation(len(src.images)), 0
        self._cycle_pos += 1
        return int(self._cycle[self._cycle_pos - 1])

    def _base(self) -> tuple[np.ndarray, str, dict[str, Any]]:
        """One clean example of this dataset (image [C, H, W], true caption, metadata)."""
        src, rng = self.plan.source, self.rng
        if self.scenes:
            if self.plan.single_item:
                i = self._draw_item()
                flags = rng.random(2) < 0.5
                scene = (
                    sc.Item(
                        int(src.labels[i]), i, int(rng.integers(4)), bool(flags[0]), bool(flags[1])
                    ),
                )
                label = int(src.labels[i])
            else:
                scene = sc.sample_scene(rng, src.by_class, self.n_items, self.plan.class_probs)
                label = -1
            wording = sc.sample_wording(rng, len(scene))
            image = sc.render_scene(scene, src.images)
            meta = self._meta(label=label, n_items=len(scene), items=sc.describe(scene))
            return image, sc.scene_caption(scene, wording), meta
        i = self._draw_item()
        label = int(src.labels[i])
        if self.dataset == "digits":
            caption, name = sc.digit_caption(label, rng), DIGIT_CLASSES[label]
        else:
            caption, name = sc.single_caption(label, rng), FASHION_CLASSES[label]
        return src.images[i][None].copy(), caption, self._meta(label=label, n_items=1, items=name)

    def _twins(self, group: int) -> list[tuple[np.ndarray, str, dict[str, Any]]]:
        src, rng = self.plan.source, self.rng
        scene = sc.sample_scene(rng, src.by_class, self.n_items, self.plan.class_probs)
        wording = sc.sample_wording(rng, len(scene))
        if self.plan.twin_edits == "layout":
            return self._layout(group, scene, wording)
        edits = sc.twin_edits(scene)
        k = self.plan.group_size - 1
        chosen = [
            edits[int(j)] for j in rng.choice(len(edits), size=min(k, len(edits)), replace=False)
        ]
        out = []
        for s, edit in [(scene, None), *((sc.apply_edit(scene, e), e) for e in chosen)]:
            meta = self._meta(n_items=len(s), items=sc.describe(s), hard_negative_group=group)
            meta["twin_edit"] = "base" if edit is None else edit[0]
            out.append((sc.render_scene(s, src.images), sc.scene_caption(s, wording), meta))
        return out

    def _layout(
        self, group: int, scene: sc.Scene, wording: sc.Wording
    ) -> list[tuple[np.ndarray, str, dict[str, Any]]]:
        """A layout and ``group_size - 1`` variants: every distinct single edit first (in random
        order), then distinct pairs of compatible edits, then (for groups larger than a scene's
        singles and pairs: large pools) distinct triples. Captions share the layout's wording."""
        src, rng = self.plan.source, self.rng
        singles = sc.layout_edits(scene, src.n_classes)
        k = self.plan.group_size - 1
        variants = [[singles[int(j)]] for j in rng.permutation(len(singles))[:k]]
        if k > len(singles):
            pairs = sc.compatible_combinations(singles, 2)
            pick = rng.choice(len(pairs), size=min(k - len(singles), len(pairs)), replace=False)
            variants += [list(pairs[int(j)]) for j in pick]
        if k > len(variants):
            triples = sc.compatible_combinations(singles, 3)
            pick = rng.choice(len(triples), size=k - len(variants), replace=False)
            variants += [list(triples[int(j)]) for j in pick]
        out = []
        for edits in [[], *variants]:
            s = scene
            for edit in edits:
                index = self._instance(edit[2]) if edit[0] == "class" else None
                s = sc.apply_edit(s, edit, index)
            meta = self._meta(n_items=len(s), items=sc.describe(s), hard_negative_group=group)
            meta["twin_edit"] = "+".join(e[0] for e in edits) or "base"
            out.append((sc.render_scene(s, src.images), sc.scene_caption(s, wording), meta))
        return out

    def _partial_caption(self) -> tuple[np.ndarray, str, dict[str, Any]]:
        """A true scene whose caption describes it with one detail wrong."""
        src, rng = self.plan.source, self.rng
        scene = sc.sample_scene(rng, src.by_class, self.n_items, self.plan.class_probs)
        edits = sc.layout_edits(scene, src.n_classes)
        kinds = sorted({e[0] for e in edits})
        if len(scene) > 1:
            kinds.append("missing")
        if len(scene) < sc.GRID * sc.GRID:
            kinds.append("extra")
        error = kinds[int(rng.integers(len(kinds)))]
        if error == "missing":
            drop = int(rng.integers(len(scene)))
            told = scene[:drop] + scene[drop + 1 :]
        elif error == "extra":
            used = {it.cell for it in scene}
            cell = int(rng.choice([c for c in range(sc.GRID * sc.GRID) if c not in used]))
            label = int(rng.integers(src.n_classes))
            flags = rng.random(2) < 0.5
            extra = sc.Item(label, self._instance(label), cell, *map(bool, flags))
            told = tuple(sorted((*scene, extra), key=lambda it: it.cell))
        else:
            options = [e for e in edits if e[0] == error]
            edit = options[int(rng.integers(len(options)))]
            told = sc.apply_edit(scene, edit, self._instance(edit[2]) if error == "class" else None)
        caption = sc.scene_caption(told, sc.sample_wording(rng, len(told)))
        meta = self._meta(
            n_items=len(scene),
            items=sc.describe(scene),
            noise="caption_partial",
            noise_detail=error,
        )
        return sc.render_scene(scene, src.images), caption, meta

    def _off_distribution(self) -> tuple[np.ndarray, str, dict[str, Any]]:
        rng = self.rng
        size = int(DATASET_DEFAULTS[self.dataset]["image_size"])
        if self.dataset == "digits":
            name = SHAPES[int(rng.integers(len(SHAPES)))]
            img = draw_shape(name, size, rng)[None]
            caption = SHAPE_TEMPLATES[int(rng.integers(len(SHAPE_TEMPLATES)))].format(name)
            return (
                img,
                caption,
                self._meta(
                    noise="off_distribution",
                    noise_detail="shape",
                    origin="shapes",
                    n_items=1,
                    items=name,
                ),
            )
        off = self.off_source
        img, caption, k = sc.digit_scene(off.images, off.labels, rng, size)
        return (
            img,
            caption,
            self._meta(
                noise="off_distribution", noise_detail="digits", origin=off.origin, n_items=k
            ),
        )

    # -- the split ------------------------------------------------------------------------------

    def counts(self) -> tuple[dict[str, int], int]:
        """Exact per-kind noise counts and the number of examples in twin groups."""
        n, plan = self.plan.size, self.plan
        counts = {k: round(plan.rates.get(k, 0.0) * n) for k in NOISE_KINDS}
        if sum(counts.values()) > n:
            raise JestkitError(f"split {plan.name}: noise counts {counts} exceed its size {n}")
        for kind in SCENE_ONLY_NOISE:
            if counts[kind] and not self.scenes:
                raise JestkitError(
                    f"--noise: {kind} in split {plan.name} needs --dataset fashion-scenes "
                    f"(a caption with one wrong detail needs a scene of several items; "
                    f"{self.dataset!r} has one)"
                )
        if plan.hard_negative_density and not self.scenes:
            raise JestkitError(
                f"--hard-negative-density: {plan.hard_negative_density} needs --dataset fashion-scenes "
                f"(near-twins differ in an item's position or attribute; {self.dataset!r} has none)"
            )
        g = plan.group_size
        n_twin = round(plan.hard_negative_density * n) // g * g
        if n_twin > n - sum(counts.values()):
            raise JestkitError(
                f"--hard-negative-density: {plan.hard_negative_density} of split {plan.name} needs {n_twin} "
                f"clean scenes but only {n - sum(counts.values())} are clean at these noise rates"
            )
        if counts["caption_swap"] and n - sum(counts.values()) < 2:
            raise JestkitError(
                f"--noise: caption_swap in split {plan.name} needs clean examples to take captions from"
            )
        return counts, n_twin

    def generate(self) -> list[Record]:
        plan, rng = self.plan, self.rng
        counts, n_twin = self.counts()
        n_clean = plan.size - sum(counts.values()) - n_twin
        records: list[Record] = []
        for g in range(n_twin // plan.group_size):
            records += self._retry(lambda g=g: self._twins(g), "near-twin")
        for _ in range(n_clean):
            records += self._retry(lambda: [self._base()], "clean")

        def corrupted() -> list[tuple[np.ndarray, str, dict[str, Any]]]:
            image, caption, meta = self._base()
            image, detail = corrupt_image(image, rng)
            return [(image, caption, {**meta, "noise": "image_corrupt", "noise_detail": detail})]

        def junk() -> list[tuple[np.ndarray, str, dict[str, Any]]]:
            image, _, meta = self._base()
            return [(image, junk_caption(rng), {**meta, "noise": "junk_caption"})]

        for _ in range(counts["image_corrupt"]):
            records += self._retry(corrupted, "corrupted")
        for _ in range(counts["junk_caption"]):
            records += self._retry(junk, "junk-caption")
        for _ in range(counts["off_distribution"]):
            records += self._retry(lambda: [self._off_distribution()], "off-distribution")

        n_dup = counts["near_duplicate"]
        groups = max(1, min(plan.dup_groups, n_dup)) if n_dup else 0
        for g in range(groups):
            image, caption, meta = self._base()
            meta = {**meta, "noise": "near_duplicate", "dup_group": g}

            def copy(
                image=image, caption=caption, meta=meta
            ) -> list[tuple[np.ndarray, str, dict[str, Any]]]:
                return [(perturb_pixels(image, rng), caption, dict(meta))]

            for _ in range(n_dup // groups + (g < n_dup % groups)):
                records += self._retry(copy, "near-duplicate")

        donors = [r for r in records if r.meta["noise"] == ""]
        for _ in range(counts["caption_swap"]):

            def swapped() -> list[tuple[np.ndarray, str, dict[str, Any]]]:
                image, _, meta = self._base()
                for _ in range(MAX_ATTEMPTS):
                    donor = donors[int(rng.integers(len(donors)))]
                    if (
                        donor.meta["items"] != meta["items"]
                    ):  # different content, so a wrong caption
                        break
                else:
                    raise JestkitError(
                        f"split {plan.name}: no donor caption with different content for caption_swap"
                    )
                return [
                    (
                        image,
                        donor.caption,
                        {**meta, "noise": "caption_swap", "swap_from": donor.uid},
                    )
                ]

            records += self._retry(swapped, "caption-swap")

        # The graded kinds come last, so a recipe without them draws exactly what it used to.
        for _ in range(counts["caption_partial"]):
            records += self._retry(lambda: [self._partial_caption()], "partial-caption")

        def degraded() -> list[tuple[np.ndarray, str, dict[str, Any]]]:
            image, caption, meta = self._base()
            severity = DEGRADE_SEVERITIES[int(rng.integers(len(DEGRADE_SEVERITIES)))]
            image, detail = degrade_image(image, rng, severity)
            return [(image, caption, {**meta, "noise": "image_degrade", "noise_detail": detail})]

        for _ in range(counts["image_degrade"]):
            records += self._retry(degraded, "degraded")
        return [records[i] for i in rng.permutation(len(records))]


def measured_rates(records: list[Record]) -> dict[str, float]:
    """Noise rates, hard-negative density and group-mates per example, from the metadata."""
    n = max(len(records), 1)
    rates = {k: sum(r.meta["noise"] == k for r in records) / n for k in NOISE_KINDS}
    groups = np.array([r.meta["hard_negative_group"] for r in records], dtype=np.int64)
    rates["hard_negative_density"] = float((groups >= 0).sum()) / n
    rates["twin_group_mates"] = twin_group_mates(groups)
    return rates


def twin_group_mates(groups: np.ndarray) -> float:
    """Mean number of other members of an example's near-twin group (-1 = no group), over a split."""
    groups = np.asarray(groups)
    if groups.size == 0:
        return 0.0
    _, counts = np.unique(groups[groups >= 0], return_counts=True)
    return float((counts * (counts - 1)).sum()) / groups.size


def near_twins_per_example(groups: np.ndarray, super_batch: int) -> float:
    """Expected near-twins of an example inside a super-batch of ``super_batch`` examples drawn
    uniformly without replacement from the split (the loader's epochs): each of its group-mates is
    in with probability ``(N - 1) / (P - 1)``. The number joint selection can exploit."""
    p = len(groups)
    if p < 2:
        return 0.0
    return twin_group_mates(groups) * (min(super_batch, p) - 1) / (p - 1)
