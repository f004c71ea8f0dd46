"""The stages that run before the training loop, never inside it: dataset, reference, export, cache.

`jestkit train --config quick` must work on a fresh machine: the first run prepares the embedded
dataset, trains the reference on its curated split, exports it and caches its embeddings over
the pool; later runs (and `jestkit reproduce`) find them in the cache folder and reuse them.
Everything there is keyed by a hash of what produced it, so changing a knob never reuses a stale
artefact. The folder is ``$JESTKIT_CACHE`` if set, else ``~/.cache/jestkit``.

:func:`prepare` runs the stages a config needs and returns the :class:`Inputs` the loop
receives. Under torchrun the stages run on rank 0 alone, as one process (the reference is
trained by the single-process loop, so it is the same model whatever the number of ranks), while
the other ranks wait at one barrier; nothing inside a stage is a collective.

The reference stage trains with the loop it is given (``fit``: :func:`jestkit.train.train`), so
this module sits below the loop and the loop's module can call :func:`prepare`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jestkit.config import DataConfig, RunConfig, get_preset
from jestkit.distributed import World, main_first
from jestkit.errors import JestkitError, check

# fit(cfg, out_dir, resume=..., world=..., inputs=...) -> final record (jestkit.train.train)
Fit = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Inputs:
    """What the training loop receives: the prepared data and, when it scores, the reference.

    ``reference_dir`` is an exported model folder; ``reference_cache`` a cache folder over the
    training split (None with ``selection.reference_cache=online``).
    """

    dataset_dir: Path
    train_dir: Path
    reference_dir: Path | None = None
    reference_cache: Path | None = None


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


# ---------------------------------------------------------------------------------------------
# The stages


def prepare(cfg: RunConfig, world: World | None = None, *, fit: Fit) -> Inputs:
    """Every stage `cfg` needs, in order (each skipped when its artefact exists): rank 0 first."""
    world = world or World()
    return main_first(world, lambda: _prepare(cfg, fit, verbose=world.is_main))


def _prepare(cfg: RunConfig, fit: Fit, verbose: bool) -> Inputs:
    from jestkit.data import load_manifest
    from jestkit.selection import make_selector

    dataset_dir = ensure_dataset(cfg.data, verbose=verbose, model=cfg.model)
    train_dir = split_dir(dataset_dir, load_manifest(dataset_dir), cfg.data.train_split)
    if not make_selector(cfg.selection).needs_reference:
        return Inputs(dataset_dir, train_dir)
    ref_dir = ensure_reference(cfg, dataset_dir, fit=fit, verbose=verbose)
    if cfg.selection.reference_cache == "online":
        return Inputs(dataset_dir, train_dir, ref_dir)
    cache = ensure_reference_cache(cfg, ref_dir, dataset_dir, verbose=verbose)
    return Inputs(dataset_dir, train_dir, ref_dir, cache)


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
    # Later options enter the key only when set, so existing cached datasets keep their folders.
    if data.hard_negative_group_size:
        options["hard_negative_group_size"] = data.hard_negative_group_size
    if data.hard_negative_edits != "attribute":
        options["hard_negative_edits"] = data.hard_negative_edits
    if data.curated_fraction >= 0:
        options["curated_fraction"] = data.curated_fraction
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


def ensure_reference(
    cfg: RunConfig, dataset_dir: Path, *, fit: Fit, verbose: bool = True
) -> Path | str:
    """A reference model folder (or a `py:` factory name): `selection.reference` as given, else
    trained once and kept."""
    from jestkit.models.factory import is_factory

    if is_factory(cfg.selection.reference):  # a pretrained reference: py:module:function
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
        train_reference(ref_cfg, dataset_dir, root / "run", model_dir, fit=fit)
    return model_dir


def train_reference(
    ref_cfg: RunConfig, dataset_dir: Path, run_dir: Path, model_dir: Path, *, fit: Fit
) -> Path:
    """Train (or resume) the reference run in `run_dir` as one process, then export it."""
    from jestkit.data import load_manifest

    train_dir = split_dir(dataset_dir, load_manifest(dataset_dir), ref_cfg.data.train_split)
    final = fit(
        ref_cfg, run_dir, resume="latest", world=World(), inputs=Inputs(dataset_dir, train_dir)
    )
    if final.get("interrupted"):
        raise JestkitError(f"reference training in {run_dir} was interrupted; run again to resume")
    return export_reference(run_dir, model_dir)


def export_reference(run_dir: Path, model_dir: Path) -> Path:
    """The latest checkpoint of a finished reference run, exported as a model folder (once)."""
    from jestkit.checkpoint import latest_checkpoint
    from jestkit.models import load_pretrained, save_pretrained

    if not (model_dir / "config.json").is_file():
        ckpt = latest_checkpoint(run_dir)
        check(ckpt is not None, f"reference run {str(run_dir)!r}: no checkpoint to export")
        save_pretrained(model_dir, *load_pretrained(ckpt))
    return model_dir


def ensure_reference_cache(
    cfg: RunConfig, reference_dir: Path, dataset_dir: Path, verbose: bool = True
) -> Path:
    """The reference cache over the training split: `selection.reference_cache`, or built once."""
    from jestkit.data import load_manifest
    from jestkit.models import load_pretrained, model_fingerprint

    if cfg.selection.reference_cache:
        path = Path(cfg.selection.reference_cache)
        check(
            path.is_dir(),
            f"selection.reference_cache={cfg.selection.reference_cache!r}: no such "
            f"folder (build one with `jestkit cache-ref`)",
        )
        return path
    train_split = split_dir(dataset_dir, load_manifest(dataset_dir), cfg.data.train_split)
    fp = model_fingerprint(load_pretrained(reference_dir)[0])
    path = cache_root() / "reference-caches" / _key({"model": fp, "split": str(train_split)})
    with _exclusive(path):
        cache_reference(reference_dir, train_split, path, verbose=verbose)
    return path


def cache_reference(
    reference_dir: Path,
    split: Path,
    cache_dir: Path,
    device: Any = None,
    progress: bool = False,
    verbose: bool = True,
) -> Path:
    """The reference's embeddings over `split` in `cache_dir`: kept when that cache is complete
    and was built by this model over this data, (re)built otherwise."""
    from jestkit.data import ReferenceCache
    from jestkit.data.shards import read_split_info
    from jestkit.models import load_pretrained, model_fingerprint

    model, tokenizer = load_pretrained(reference_dir, device=device or "cpu")
    fp = model_fingerprint(model)
    if (cache_dir / "meta.json").is_file():
        try:
            ReferenceCache.open(
                cache_dir,
                model_fingerprint=fp,
                data_fingerprint=read_split_info(split).get("fingerprint") or None,
            )
            return cache_dir
        except JestkitError as e:
            print(f"rebuilding the reference cache: {e}", file=sys.stderr)
    if verbose:
        print(f"caching the reference's embeddings over {split} in {cache_dir}")
    ReferenceCache.build(
        model, tokenizer, [split], cache_dir, device=device, model_fingerprint=fp,
        overwrite=True, progress=progress,
    )  # fmt: skip
    return cache_dir
