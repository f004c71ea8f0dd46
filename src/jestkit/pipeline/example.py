"""`jestkit pipeline --example-data DIR`: a small real example to try the pipeline on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jestkit.errors import check


def write_example_data(out: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """A small real example: scikit-learn's 1,797 digits as PNG files and three CSVs.

    ``eval.csv`` holds every fifth image (360, with ``label`` and ``class_name`` for zero-shot),
    ``curated.csv`` 300 correctly captioned images, ``pool.csv`` the other 1,137 of which a
    quarter carry the caption of another digit (the noise a curated reference helps filter out).
    """
    from PIL import Image

    from jestkit.data import DIGIT_CLASSES, load_digits

    out = Path(out)
    check(
        not out.exists() or (out.is_dir() and not any(out.iterdir())),
        f"--example-data {str(out)!r}: already exists and is not empty",
    )
    (out / "images").mkdir(parents=True)
    images, labels = load_digits()
    rng = np.random.default_rng(seed)
    templates = (
        "a handwritten {}",
        "the digit {}",
        "a scanned {} written by hand",
        "number {}",
        "a small grey picture of a {}",
    )
    test = np.arange(len(images)) % 5 == 0
    train = np.flatnonzero(~test)
    rng.shuffle(train)
    parts = {"eval": np.flatnonzero(test), "curated": train[:300], "pool": train[300:]}
    paths = {}
    for name, idx in parts.items():
        rows = ["image,caption,label,class_name"]
        for i in idx.tolist():
            file = f"images/{i:04d}.png"
            if not (out / file).exists():
                pixels = (images[i].astype(np.float32) * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(out / file)
            label = int(labels[i])
            shown = label
            if name == "pool" and rng.random() < 0.25:  # web-style noise: another digit's caption
                shown = int((label + rng.integers(1, 10)) % 10)
            caption = templates[int(rng.integers(len(templates)))].format(DIGIT_CLASSES[shown])
            rows.append(f"{file},{caption},{label},{DIGIT_CLASSES[label]}")
        paths[name] = out / f"{name}.csv"
        paths[name].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return paths
