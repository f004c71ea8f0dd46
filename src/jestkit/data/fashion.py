"""Real images that ship offline: Fashion-MNIST (IDX files) and scikit-learn's digits.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (70k 28x28 grey images,
10 classes, official 60k/10k train/test split). ``JESTKIT_FASHION_MNIST`` overrides the folder.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from jestkit.errors import JestkitError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def fashion_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("JESTKIT_FASHION_MNIST") or FASHION_DIR)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims, then big-endian data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise JestkitError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise JestkitError(f"{path}: not an IDX file (magic {data[:4]!r})")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise JestkitError(f"{path}: unknown IDX data type 0x{data[2]:02x}")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(dtypes[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise JestkitError(
            f"{path}: IDX file holds {len(data) - offset} data bytes, its header says {expected}"
        )
    return (
        np.frombuffer(data, dtype, offset=offset)
        .reshape(tuple(dims))
        .astype(dtype.newbyteorder("="))
    )


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).exists():
            return directory / name
    return None


@functools.lru_cache(maxsize=4)
def _load_fashion(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    d = Path(directory)
    img_stem, lbl_stem = _FILES[split]
    img_path, lbl_path = _find(d, img_stem), _find(d, lbl_stem)
    if img_path is None or lbl_path is None:
        raise JestkitError(
            f"Fashion-MNIST not found: {d / (img_stem + '.gz')} is missing. Install it with "
            "`apt-get install dataset-fashion-mnist` (as root), or set JESTKIT_FASHION_MNIST to "
            "a folder holding the IDX files."
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise JestkitError(
            f"{img_path}: expected [n, 28, 28] images and [n] labels, got {images.shape} and {labels.shape}"
        )
    images = images.astype(np.uint8)
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``(images uint8 [n, 28, 28], labels int64 [n])`` of the official split.

    The arrays are read-only and cached per process.
    """
    if split not in _FILES:
        raise JestkitError(f"split: must be 'train' or 'test', got {split!r}")
    return _load_fashion(str(fashion_dir(root)), split)


def fashion_available(root: str | os.PathLike | None = None) -> bool:
    d = fashion_dir(root)
    return all(_find(d, stem) is not None for pair in _FILES.values() for stem in pair)


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    # The CSV that sklearn.datasets.load_digits reads, read directly: importing sklearn.datasets
    # (and scipy with it) costs seconds, too much for the dataset meant for fast tests.
    spec = importlib.util.find_spec("sklearn")
    csv = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "datasets" / "data" / "digits.csv.gz").is_file():
            csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
    if csv is not None:
        data = np.loadtxt(csv, delimiter=",")
        pixels, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    else:
        try:
            from sklearn.datasets import load_digits as sk_load_digits
        except ImportError:
            raise JestkitError(
                "the digits dataset needs scikit-learn: pip install scikit-learn"
            ) from None
        d = sk_load_digits()
        pixels, target = d.images, d.target
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    images.flags.writeable = False
    labels = target.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def load_digits(split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as ``(uint8 [n, 8, 8], int64 [n])``.

    They have no official split; ``"test"`` is every fifth image (index % 5 == 0, 360 images),
    ``"train"`` the rest (1,437), ``None`` all of them.
    """
    images, labels = _load_digits()
    if split is None:
        return images, labels
    if split not in ("train", "test"):
        raise JestkitError(f"split: must be 'train', 'test' or None, got {split!r}")
    test = np.arange(len(images)) % 5 == 0
    keep = test if split == "test" else ~test
    return images[keep], labels[keep]
