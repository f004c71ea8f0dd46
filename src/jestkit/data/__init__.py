"""Data: the embedded dataset and its recipes, shards, the super-batch loader, the reference cache.

from jestkit.data import SuperBatchLoader, load_manifest, load_split
manifest = load_manifest("data/fashion")                 # after `jestkit prepare --out data/fashion`
loader = SuperBatchLoader("data/fashion/pool", batch_size=2560, seed=0)
sb = next(iter(loader))                                  # SuperBatch: uids, images [N,1,56,56] uint8, captions, meta
chosen = sb.index(indices)                               # the selected sub-batch
cache = ReferenceCache.open("runs/ref-cache")         # after `jestkit cache-ref`
ref = cache.lookup(sb.uids, device="cuda")               # scoring.Embeddings, float32
"""

from __future__ import annotations

from jestkit.data import img2dataset  # noqa: F401  (registers its split layout)
from jestkit.data.fashion import (
    DIGIT_CLASSES,
    FASHION_CLASSES,
    fashion_available,
    load_digits,
    load_fashion_mnist,
)
from jestkit.data.loader import (
    SuperBatch,
    SuperBatchLoader,
    epoch_order,
    iter_split,
    load_split,
    read_captions,
)
from jestkit.data.prepare import PrepareConfig, prepare_dataset
from jestkit.data.recipes import DATASETS, NOISE_KINDS, RECIPES
from jestkit.data.reference_cache import ReferenceCache
from jestkit.data.shards import (
    BadRecords,
    BadRecordWarning,
    SplitWriter,
    build_index,
    data_fingerprint,
    load_manifest,
    read_split_info,
    resolve_split_dir,
)
from jestkit.data.transforms import ImageTransform, decode_png, encode_png
from jestkit.data.uids import compute_uid, fingerprint_uids, int_to_uid, uid_to_int

__all__ = [
    "DATASETS",
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "NOISE_KINDS",
    "RECIPES",
    "BadRecordWarning",
    "BadRecords",
    "ImageTransform",
    "PrepareConfig",
    "ReferenceCache",
    "SplitWriter",
    "SuperBatch",
    "SuperBatchLoader",
    "build_index",
    "compute_uid",
    "data_fingerprint",
    "decode_png",
    "encode_png",
    "epoch_order",
    "fashion_available",
    "fingerprint_uids",
    "int_to_uid",
    "iter_split",
    "load_digits",
    "load_fashion_mnist",
    "load_manifest",
    "load_split",
    "prepare_dataset",
    "read_captions",
    "read_split_info",
    "resolve_split_dir",
    "uid_to_int",
]
