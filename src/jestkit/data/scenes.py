"""Compositional scenes of real Fashion-MNIST items, and captions in varied wording.

One 28x28 item per image with a 10-class caption is too easy for contrastive learning to show
what joint selection buys (negatives carry no loss after a few hundred steps). A scene is a
canvas (default 56x56, a 2x2 grid) holding 2-4 real items, each with a position (cell), an
intensity (dark/light) and a size (small/large). Captions name every item with its attributes and
position, with synonyms, several templates, three position phrasings and a random mention order,
so captions are close to unique per image; changing one item's position or attribute gives a hard
negative whose caption differs in a word or two. Word order matters: "a dark sneaker in the top left
and a light bag in the bottom right" and "a light sneaker in the top left and a dark bag in the
bottom right" have the same words and describe different scenes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from jestkit.data.fashion import DIGIT_CLASSES, FASHION_CLASSES

GRID = 2
CELL = 28
CANVAS = GRID * CELL
SMALL_FACTOR = 2  # a small item is downscaled 2x (area mean) and centred in its cell
LIGHT_PEAK, DARK_PEAK = 255, 90  # an item's brightest pixel after intensity normalisation

CELL_NAMES = ("tl", "tr", "bl", "br")
POSITION_PHRASES = (  # [cell][style]
    ("in the top left", "at the upper left", "in the top-left corner"),
    ("in the top right", "at the upper right", "in the top-right corner"),
    ("in the bottom left", "at the lower left", "in the bottom-left corner"),
    ("in the bottom right", "at the lower right", "in the bottom-right corner"),
)
CLASS_SYNONYMS = (  # index 0 is the canonical name (FASHION_CLASSES)
    ("t-shirt", "tee", "short-sleeved top"),
    ("pair of trousers", "pair of pants", "pair of slacks"),
    ("pullover", "sweater", "jumper"),
    ("dress", "gown", "frock"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "flip-flop", "strappy sandal"),
    ("shirt", "blouse", "button-up shirt"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "bootie"),
)
TONE_WORDS = {False: ("light", "bright", "pale"), True: ("dark", "dim", "shadowy")}
SIZE_WORDS = {False: ("large", "big"), True: ("small", "little")}
SCENE_TEMPLATES = (
    "{}.",
    "a photo of {}.",
    "a picture showing {}.",
    "an image with {}.",
    "{} on a black background.",
    "there is {}.",
    "product shot: {}.",
    "a collage of {}.",
)
SINGLE_TEMPLATES = (
    "a photo of {a} {n}.",
    "{a} {n}.",
    "a picture of the {n}.",
    "the {n}.",
    "an image of {a} {n}.",
    "{a} {n} on a black background.",
    "product photo: {a} {n}.",
)
DIGIT_TEMPLATES = (
    "a handwritten {}.",
    "the digit {}.",
    "the number {}.",
    "a drawing of the number {}.",
    "handwriting: {}.",
    "a scanned {}.",
)
DIGIT_SCENE_TEMPLATES = ("{}.", "a scan of {}.", "a drawing of {}.", "handwriting: {}.")
JOINS = 3  # "A, B and C" | "A; B; C" | "A, B, and C"

assert tuple(s[0] for s in CLASS_SYNONYMS) == FASHION_CLASSES


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def join_phrases(phrases: Sequence[str], style: int) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if style == 1:
        return "; ".join(phrases)
    head = ", ".join(phrases[:-1])
    comma = "," if style == 2 and len(phrases) > 2 else ""
    return f"{head}{comma} and {phrases[-1]}"


@dataclass(frozen=True)
class Item:
    """One object in a scene: a Fashion-MNIST class, which source image, and its attributes."""

    label: int
    index: int  # row of the source image array
    cell: int  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    dark: bool
    small: bool


Scene = tuple[Item, ...]


@dataclass(frozen=True)
class Wording:
    """The random choices behind one caption; near-twins share it so only the edit shows."""

    template: int
    synonyms: tuple[int, ...]  # per item, scene order
    tones: tuple[int, ...]
    sizes: tuple[int, ...]
    position_style: int
    order: tuple[int, ...]  # mention order: a permutation of item positions
    join: int


def sample_scene(
    rng: np.random.Generator,
    by_class: Sequence[np.ndarray],
    n_items: tuple[int, int] = (2, 4),
    class_probs: np.ndarray | None = None,
) -> Scene:
    """A random scene: ``n_items`` items (inclusive range) in distinct cells, random attributes.

    ``by_class[c]`` lists the source-image rows of class ``c``; ``class_probs`` skews the classes
    (a class-imbalanced curated set).
    """
    k = int(rng.integers(n_items[0], n_items[1] + 1))
    cells = np.sort(rng.choice(GRID * GRID, size=k, replace=False))
    labels = rng.choice(len(by_class), size=k, p=class_probs)
    flags = rng.random((k, 2)) < 0.5
    items = []
    for cell, label, (dark, small) in zip(cells, labels, flags, strict=True):
        pool = by_class[int(label)]
        items.append(
            Item(int(label), int(pool[rng.integers(len(pool))]), int(cell), bool(dark), bool(small))
        )
    return tuple(items)


def sample_wording(rng: np.random.Generator, n_items: int) -> Wording:
    return Wording(
        template=int(rng.integers(len(SCENE_TEMPLATES))),
        synonyms=tuple(int(x) for x in rng.integers(3, size=n_items)),
        tones=tuple(int(x) for x in rng.integers(3, size=n_items)),
        sizes=tuple(int(x) for x in rng.integers(2, size=n_items)),
        position_style=int(rng.integers(3)),
        order=tuple(int(x) for x in rng.permutation(n_items)),
        join=int(rng.integers(JOINS)),
    )


def item_phrase(item: Item, synonym: int, tone: int, size: int, position_style: int) -> str:
    noun = CLASS_SYNONYMS[item.label][synonym]
    size_word = SIZE_WORDS[item.small][size]
    words = f"{size_word} {TONE_WORDS[item.dark][tone]} {noun}"
    return f"{article(words)} {words} {POSITION_PHRASES[item.cell][position_style]}"


def scene_caption(scene: Scene, wording: Wording) -> str:
    """The caption of ``scene`` in the given wording (every item, attribute and position named)."""
    phrases = [
        item_phrase(
            scene[i],
            wording.synonyms[i],
            wording.tones[i],
            wording.sizes[i],
            wording.position_style,
        )
        for i in wording.order
    ]
    return SCENE_TEMPLATES[wording.template].format(join_phrases(phrases, wording.join))


def twin_edits(scene: Scene) -> list[tuple[str, int, int]]:
    """Every single edit of a scene: (kind, item position, new cell or -1).

    Kinds: "move" (to an empty cell), "tone" (dark <-> light), "size" (small <-> large).
    """
    used = {it.cell for it in scene}
    edits: list[tuple[str, int, int]] = []
    for i in range(len(scene)):
        edits += [("tone", i, -1), ("size", i, -1)]
        edits += [("move", i, c) for c in range(GRID * GRID) if c not in used]
    return edits


def layout_edits(scene: Scene, n_classes: int) -> list[tuple[str, int, int]]:
    """:func:`twin_edits` plus every class change: ("class", item position, new class).

    The edits of a layout's variants: a scene of n items has ``n * (6 - n) + n * (n_classes - 1)``.
    """
    edits = twin_edits(scene)
    for i, it in enumerate(scene):
        edits += [("class", i, c) for c in range(n_classes) if c != it.label]
    return edits


def compatible(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
    """Two edits of the same base that can be applied together and change two different things:
    not the same field of the same item, and not two items moved into the same cell."""
    if a[1] == b[1] and a[0] == b[0]:
        return False
    return not (a[0] == "move" and b[0] == "move" and a[2] == b[2])


def compatible_combinations(
    edits: list[tuple[str, int, int]], size: int
) -> list[tuple[tuple[str, int, int], ...]]:
    """Every set of ``size`` edits (in ``edits`` order) that are pairwise :func:`compatible`."""
    out: list[tuple[tuple[str, int, int], ...]] = []

    def grow(chosen: tuple[tuple[str, int, int], ...], start: int) -> None:
        if len(chosen) == size:
            out.append(chosen)
            return
        for j in range(start, len(edits)):
            if all(compatible(e, edits[j]) for e in chosen):
                grow((*chosen, edits[j]), j + 1)

    grow((), 0)
    return out


def apply_edit(scene: Scene, edit: tuple[str, int, int], index: int | None = None) -> Scene:
    """``scene`` with one edit applied; a "class" edit also needs the new item's source ``index``."""
    kind, i, cell = edit
    it = scene[i]
    if kind == "class":
        if index is None:
            raise ValueError("a class edit needs the new item's source index")
        new = replace(it, label=cell, index=index)
    elif kind == "move":
        new = replace(it, cell=cell)
    elif kind == "tone":
        new = replace(it, dark=not it.dark)
    elif kind == "size":
        new = replace(it, small=not it.small)
    else:
        raise ValueError(f"unknown edit {kind!r}")
    return (*scene[:i], new, *scene[i + 1 :])


def scene_difference(a: Scene, b: Scene) -> int:
    """How many (item, field) values differ between two scenes of the same items."""
    if len(a) != len(b):
        return 10**6
    return sum(
        (x.label != y.label) + (x.index != y.index) + (x.cell != y.cell)
        + (x.dark != y.dark) + (x.small != y.small)
        for x, y in zip(a, b, strict=True)
    )  # fmt: skip


def _normalise(item: np.ndarray, peak: int) -> np.ndarray:
    top = max(int(item.max()), 1)
    return np.clip(np.rint(item.astype(np.float32) * (peak / top)), 0, 255).astype(np.uint8)


def render_item(source: np.ndarray, dark: bool, small: bool) -> np.ndarray:
    """A 28x28 source image as drawn in a cell: intensity-normalised, optionally half size."""
    img = _normalise(source, DARK_PEAK if dark else LIGHT_PEAK)
    if small:
        h, w = img.shape
        f = SMALL_FACTOR
        img = np.rint(img.reshape(h // f, f, w // f, f).astype(np.float32).mean((1, 3)))
        img = img.astype(np.uint8)
    return img


def render_scene(
    scene: Scene, sources: np.ndarray, cell: int = CELL, grid: int = GRID
) -> np.ndarray:
    """Draw a scene: ``uint8 [1, grid*cell, grid*cell]``, items centred in their cells."""
    canvas = np.zeros((1, grid * cell, grid * cell), np.uint8)
    for it in scene:
        img = render_item(sources[it.index], it.dark, it.small)
        h, w = img.shape
        r, c = divmod(it.cell, grid)
        y, x = r * cell + (cell - h) // 2, c * cell + (cell - w) // 2
        canvas[0, y : y + h, x : x + w] = img
    return canvas


def describe(scene: Scene) -> str:
    """Compact scene description for metadata: ``sneaker@tl/dark/small;bag@br/light/large``."""
    return ";".join(
        f"{FASHION_CLASSES[it.label]}@{CELL_NAMES[it.cell]}/"
        f"{'dark' if it.dark else 'light'}/{'small' if it.small else 'large'}"
        for it in scene
    )


def single_caption(label: int, rng: np.random.Generator) -> str:
    """A 10-class caption for one Fashion-MNIST item (``fashion-single``)."""
    noun = CLASS_SYNONYMS[label][int(rng.integers(3))]
    template = SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))]
    return template.format(a=article(noun), n=noun)


def digit_word(value: int, rng: np.random.Generator) -> str:
    return DIGIT_CLASSES[value] if rng.random() < 0.5 else str(value)


def digit_caption(value: int, rng: np.random.Generator) -> str:
    """A caption for one handwritten digit (the ``digits`` dataset)."""
    template = DIGIT_TEMPLATES[int(rng.integers(len(DIGIT_TEMPLATES)))]
    return template.format(digit_word(value, rng))


def upscale_digit(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit enlarged by the largest integer factor that fits ``size`` (nearest), centred."""
    f = max(1, size // digit.shape[0])
    big = np.kron(digit, np.ones((f, f), np.uint8))
    out = np.zeros((size, size), np.uint8)
    o = (size - big.shape[0]) // 2
    out[o : o + big.shape[0], o : o + big.shape[1]] = big
    return out


def digit_scene(
    digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, canvas: int
) -> tuple[np.ndarray, str, int]:
    """Off-distribution content: 1-2 sklearn digits drawn on the canvas, described in a caption.

    Returns (image [1, canvas, canvas], caption, number of digits).
    """
    if canvas < CANVAS:  # a single-item canvas: one digit filling it
        i = int(rng.integers(len(digits)))
        img = upscale_digit(digits[i], canvas)[None]
        return img, digit_caption(int(labels[i]), rng), 1
    k = int(rng.integers(1, 3))
    cells = np.sort(rng.choice(GRID * GRID, size=k, replace=False))
    img = np.zeros((1, canvas, canvas), np.uint8)
    cell = canvas // GRID
    style = int(rng.integers(3))
    phrases = []
    for c in cells:
        i = int(rng.integers(len(digits)))
        r, col = divmod(int(c), GRID)
        img[0, r * cell : (r + 1) * cell, col * cell : (col + 1) * cell] = upscale_digit(
            digits[i], cell
        )
        phrases.append(
            f"a handwritten {digit_word(int(labels[i]), rng)} {POSITION_PHRASES[c][style]}"
        )
    order = rng.permutation(k)
    text = join_phrases([phrases[i] for i in order], int(rng.integers(JOINS)))
    template = DIGIT_SCENE_TEMPLATES[int(rng.integers(len(DIGIT_SCENE_TEMPLATES)))]
    return img, template.format(text), k


def zeroshot_templates(dataset: str) -> list[str]:
    """Prompt templates for zero-shot classification (``template.format(class_name)``).

    For scenes they mirror the training captions: every size x intensity x position of a single
    item, so averaging the class embedding over them marginalises the attributes.
    """
    if dataset == "fashion-scenes":
        return [
            f"a {SIZE_WORDS[small][0]} {TONE_WORDS[dark][0]} {{}} {POSITION_PHRASES[cell][0]}."
            for small in (True, False)
            for dark in (True, False)
            for cell in range(GRID * GRID)
        ]
    if dataset == "fashion-single":
        return ["a photo of the {}.", "the {}.", "a picture of the {}.", "an image of the {}."]
    if dataset == "digits":
        return ["the digit {}.", "the number {}.", "a handwritten {}."]
    raise ValueError(f"unknown dataset {dataset!r}")
