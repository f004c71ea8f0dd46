"""The cache folder where prepared datasets, reference models and reference caches are kept.

`jestkit train --config quick` must work on a fresh machine: the first run prepares the embedded
dataset, trains the reference on its curated split and caches the reference over the pool; later
runs (and `jestkit reproduce`) find them here and reuse them. Everything is keyed by a hash of
what produced it, so changing a knob never reuses a stale artefact.

The folder is ``$JESTKIT_CACHE`` if set, else ``~/.cache/jestkit``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jestkit.config import DataConfig, RunConfig, get_preset
from jestkit.errors import JestkitError, check


def cache_root() -> Path:
    root = os.environ.get("JESTKIT_CACHE") or os.path.join(Path.home(), ".cache", "jestkit")
    return Path(root)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One process at a time builds `path` (parallel runs of a suite share the cache folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the atomic publish still refuses a clash
        yield
        return
    with open(path.parent / f".{path.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def split_dir(dataset_dir: Path, manifest: dict[str, Any], split: str) -> Path:
    """The folder of the training split; an error if it has no usable example (empty, or every
    record bad), instead of a puzzling failure later (the tokenizer, the loader)."""
    from jestkit.data import build_index

    splits = manifest.get("splits", {})
    check(
        split in splits,
        f"data.train_split={split!r}: dataset {str(dataset_dir)!r} has splits {sorted(splits)}",
    )
    path = Path(dataset_dir) / splits[split]["path"]
    with warnings.catch_warnings():  # the loader warns about skipped records once, later
        warnings.simplefilter("ignore")
        index = build_index(path, progress=False)
    check(
        len(index) > 0,
        f"data.train_split={split!r}: {path} has no usable examples ("
        + (index.bad.summary() if index.bad.total else "the split is empty")
        + ")",
    )
    return path


def model_input(model: Any) -> tuple[int, int]:
    """(image_size, in_channels) of a `model` config section (registry name or py: factory)."""
    from jestkit.models.factory import factory_input, is_factory
    from jestkit.models.registry import get_model_config

    if is_factory(model.name):
        return factory_input(model.name)
    c = get_model_config(model.name, **model.overrides)
    return c.image_size, c.in_channels


def ensure_dataset(data: DataConfig, verbose: bool = True, model: Any = None) -> Path:
    """The prepared dataset folder for `data`: `data.dir` as given, or the embedded one (built once).

    `data.dir` may also be img2dataset shards (folder or brace pattern, with `data.eval_dir` for
    evaluation): read in place at `model`'s input size (a view in the cache folder).
    """
    from jestkit.data import prepare_dataset
    from jestkit.data.img2dataset import is_source, source_dataset

    if data.dir and is_source(data.dir):
        check(model is not None, f"data.dir={data.dir!r}: img2dataset shards need the model")
        size, channels = model_input(model)
        splits = {data.train_split: data.dir}
        if data.eval_dir:
            splits["eval"] = data.eval_dir
        return source_dataset(splits, size, channels, data.resize, progress=verbose)
    if data.dir:
        path = Path(data.dir)
        check(
            (path / "dataset.json").is_file(),
            f"data.dir={data.dir!r}: no dataset.json there (make one with `jestkit prepare` or "
            f"`jestkit make-shards`)",
        )
        return path
    options: dict[str, Any] = {"pool_size": data.pool_size}
    if data.hard_negative_density >= 0:
        options["hard_negative_density"] = data.hard_negative_density
    if data.noise:
        options["noise"] = dict(data.noise)
    key = _key({"dataset": data.dataset, "recipe": data.recipe, "seed": data.data_seed, **options})
    path = cache_root() / "datasets" / f"{data.dataset}-{data.recipe}-{key}"
    with _exclusive(path):
        if not (path / "dataset.json").is_file():
            if verbose:
                print(f"preparing the {data.dataset} dataset ({data.recipe}) in {path}")
            prepare_dataset(data.dataset, path, recipe=data.recipe, seed=data.data_seed, **options)
    return path


def reference_config(cfg: RunConfig) -> RunConfig:
    """The reference run that `cfg` needs: the `reference` preset on `cfg`'s data and model."""
    ref = get_preset("reference")
    ref.data = copy.deepcopy(cfg.data)
    ref.data.train_split = cfg.selection.reference_split
    ref.model = copy.deepcopy(cfg.model)
    ref.train.batch_size = cfg.train.batch_size
    ref.train.steps = cfg.selection.reference_steps
    ref.train.eval_every = max(1, cfg.selection.reference_steps // 3)
    ref.train.checkpoint_every = ref.train.eval_every
    ref.optim = copy.deepcopy(cfg.optim)
    ref.train.device = cfg.train.device
    ref.train.precision = cfg.train.precision
    ref.train.progress = cfg.train.progress
    return ref


def ensure_reference(cfg: RunConfig, dataset_dir: Path, verbose: bool = True) -> Path | str:
    """A reference model folder (or a `py:` factory name): `selection.reference` as given, else
    trained once and kept."""
    from jestkit.models import load_pretrained, save_pretrained
    from jestkit.models.factory import is_factory
    from jestkit.train import train

    if is_factory(cfg.selection.reference):  # a pretrained reference: py:module:function (#14)
        return cfg.selection.reference  # load_pretrained calls the factory
    if cfg.selection.reference:
        path = Path(cfg.selection.reference)
        check(
            (path / "config.json").is_file(),
            f"selection.reference={cfg.selection.reference!r}: not a model folder (no config.json)",
        )
        return path
    check(
        not cfg.data.dir,
        "selection.reference is required with data.dir (your own data): train "
        "one with `jestkit train --config reference data.dir=... "
        "data.train_split=curated` first",
    )
    ref_cfg = reference_config(cfg)
    key_cfg = ref_cfg.to_dict()
    key_cfg["train"]["progress"] = True  # a progress bar does not change the model: same key
    root = cache_root() / "references" / _key({"config": key_cfg, "data": str(dataset_dir)})
    model_dir = root / "model"
    with _exclusive(root):
        if (model_dir / "config.json").is_file():
            return model_dir
        if verbose:
            print(f"training the reference model on the {ref_cfg.data.train_split} split in {root}")
        final = train(ref_cfg, root / "run", resume="latest")
        if final.get("interrupted"):
            raise JestkitError(f"reference training in {root} was interrupted; run again to resume")
        from jestkit.checkpoint import latest_checkpoint

        model, tokenizer = load_pretrained(latest_checkpoint(root / "run"))
        save_pretrained(model_dir, model, tokenizer)
    return model_dir


def ensure_reference_cache(
    cfg: RunConfig, reference_dir: Path, dataset_dir: Path, verbose: bool = True
) -> Path:
    """The reference cache over the training split: `selection.reference_cache`, or built once."""
    from jestkit.data import ReferenceCache, load_manifest
    from jestkit.models import load_pretrained, model_fingerprint

    if cfg.selection.reference_cache:
        path = Path(cfg.selection.reference_cache)
        check(
            path.is_dir(),
            f"selection.reference_cache={cfg.selection.reference_cache!r}: no such "
            f"folder (build one with `jestkit cache-ref`)",
        )
        return path
    manifest = load_manifest(dataset_dir)
    train_split = split_dir(dataset_dir, manifest, cfg.data.train_split)
    model, tokenizer = load_pretrained(reference_dir)
    fp = model_fingerprint(model)
    path = cache_root() / "reference-caches" / _key({"model": fp, "split": str(train_split)})
    with _exclusive(path):
        from jestkit.data.reference_cache import FILES

        if not all((path / name).is_file() for name in FILES):  # absent, or partly deleted
            if verbose:
                print(f"caching the reference's embeddings over {train_split} in {path}")
            ReferenceCache.build(model, tokenizer, [train_split], path, overwrite=True)
    return path
