"""The bad-input catalogue: every public entry point fed the bad inputs the issues name.

One row per case: the issue that names it, the entry point (Python API or `jestkit <command>`),
the input, and what must happen:

- ``Error(pattern)``: a :class:`JestkitError` whose message matches ``pattern``, which names the
  argument or file and the offending value;
- ``Cli(pattern)``: exit code 2 and the message on stderr, without a traceback;
- ``Skipped(pattern)``: the run goes on without the bad records, and a summary the user sees (a
  warning, a printed line) counts them, matching ``pattern``;
- ``Works(pattern)``: the input is legitimate and handled; ``pattern`` matches what the user is
  told (or the result) so nothing happens silently.

Many cases are also tested where their code lives; this module is the single catalogue.
``python tests/test_bad_input.py`` prints it as the markdown table in RELIABILITY.md. Full disks
and read-only folders are simulated (root ignores permissions): every write under a folder fails
with ENOSPC / EROFS.
"""

from __future__ import annotations

import builtins
import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import jestkit.metrics as jm
import jestkit.train as train_mod
from jestkit.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    verify_checkpoint,
)
from jestkit.cli import main as cli
from jestkit.config import apply_overrides, get_preset, validate
from jestkit.data import (
    ReferenceCache,
    SplitWriter,
    SuperBatchLoader,
    load_manifest,
    load_split,
    read_captions,
)
from jestkit.data.shards import write_manifest
from jestkit.data.transforms import encode_png
from jestkit.data.uids import compute_uid
from jestkit.errors import JestkitError
from jestkit.metrics import read_metrics
from jestkit.models import Tokenizer, create_model, load_pretrained
from jestkit.scoring import Embeddings
from jestkit.selection import joint_sample, joint_sample_embeddings, super_batch_size
from jestkit.stages import ensure_dataset, ensure_reference, ensure_reference_cache

WALL_CLOCK = ("time", "step_time")


# ----------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Error:
    pattern: str
    label = "JestkitError"


@dataclass(frozen=True)
class Cli:
    pattern: str
    label = "exit 2, message"


@dataclass(frozen=True)
class Skipped:
    pattern: str
    label = "skipped + counted"


@dataclass(frozen=True)
class Works:
    pattern: str
    label = "works"


@dataclass(frozen=True)
class Case:
    id: str
    issue: str
    entry: str
    input: str
    run: Callable[[Any], Any]
    expect: Error | Cli | Skipped | Works


# ----------------------------------------------------------------------------- the context


def debug(*overrides: str):
    """The debug preset (digits, 40 steps) with a checkpoint every 10 steps."""
    return validate(apply_overrides(get_preset("debug"), ["train.checkpoint_every=10", *overrides]))


class Ctx:
    """What the cases run against; built once per module, the expensive parts on first use."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any):
        self.root, self.mp, self.capsys = root, monkeypatch, capsys
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def tmp(self, name: str) -> Path:
        """A fresh folder for one case."""
        path = self.root / "cases" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    # -- the embedded digits dataset, its reference, cache and a finished debug run ------------

    @property
    def dataset(self) -> Path:
        return self.memo("dataset", lambda: ensure_dataset(debug().data, verbose=False))

    @property
    def pool(self) -> Path:
        return self.dataset / load_manifest(self.dataset)["splits"]["pool"]["path"]

    @property
    def reference(self) -> Path:
        return self.memo(
            "reference",
            lambda: ensure_reference(debug(), self.dataset, fit=train_mod.train, verbose=False),
        )

    @property
    def cache(self) -> Path:
        return self.memo(
            "cache",
            lambda: ensure_reference_cache(debug(), self.reference, self.dataset, verbose=False),
        )

    @property
    def baseline(self) -> list[dict]:
        """metrics.jsonl of an undisturbed debug run (also leaves a finished run folder)."""

        def make() -> list[dict]:
            train_mod.train(debug(), self.root / "baseline")
            return strip(read_metrics(self.root / "baseline" / "metrics.jsonl"))

        return self.memo("baseline", make)

    @property
    def checkpoint(self) -> Path:
        self.baseline  # noqa: B018 (builds the run)
        return latest_checkpoint(self.root / "baseline")

    @property
    def model(self):
        return self.memo("model", lambda: create_model("vit-tiny-56"))

    # -- user data: images of mixed sizes and modes, written to a CSV -------------------------

    @property
    def images(self) -> Path:
        def make() -> Path:
            from PIL import Image

            d = self.root / "imgs"
            d.mkdir()
            rng = np.random.default_rng(0)
            for i in range(12):
                h, w = 20 + 3 * i, 40 - i
                kind = ("RGB", "L", "RGBA", "P")[i % 4]
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr, "RGB").convert(kind).save(d / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(d / "grey.jpg")
            return d

        return self.memo("images", make)

    def csv(self, name: str, rows: list[dict[str, str]]) -> Path:
        self.images  # noqa: B018
        path = self.root / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["image", "caption"])
            w.writeheader()
            w.writerows(rows)
        return path

    def rows(self, captions: list[str] | None = None) -> list[dict[str, str]]:
        captions = captions or [f"picture number {i}" for i in range(12)]
        return [{"image": f"imgs/{i}.png", "caption": c} for i, c in enumerate(captions)]


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


# ----------------------------------------------------------------------------- helpers


def hand_split(d: Path, records: list[tuple[str, dict[str, bytes]]], shape=(1, 8, 8)) -> Path:
    """A split folder written by hand (bad records included), every uid in meta.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True)
    with tarfile.open(d / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in records:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    uids = list(dict.fromkeys(k for k, _ in records))
    pq.write_table(pa.table({"uid": uids, "label": [0] * len(uids)}), d / "meta.parquet")
    info = {"count": len(records), "shards": ["shard-000000.tar"], "image_size": shape[1]}
    info.update(in_channels=shape[0], shard_counts=[len(records)])
    (d / "split.json").write_text(json.dumps(info))
    return d


def good(i: int, shape=(1, 8, 8), caption: str | None = None) -> tuple[str, dict[str, bytes]]:
    png = encode_png(np.full(shape, i, np.uint8))
    cap = caption if caption is not None else f"example {i}"
    return compute_uid(png, cap), {"png": png, "txt": cap.encode()}


def corrupt(i: int) -> tuple[str, dict[str, bytes]]:
    uid, m = good(i)
    png = bytearray(m["png"])
    png[45] ^= 0xFF  # a flipped bit in the pixel data: the CRC no longer matches
    return uid, {"png": bytes(png), "txt": m["txt"]}


def one_bad_split(c: Ctx, name: str, bad: tuple[str, dict[str, bytes]]) -> Path:
    return hand_split(c.tmp(name) / "split", [good(i) for i in range(4)] + [bad])


def load_with_summary(split: Path, **kw: Any) -> str:
    """Load a split the way training does; returns the skipped-record summary the user sees."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = SuperBatchLoader(split, batch_size=2, progress=False, **kw)
    shown = " | ".join(str(w.message) for w in caught)
    return f"{loader.num_examples} usable; loader.skipped={loader.skipped}; warning: {shown}"


def dataset_with(c: Ctx, name: str, pool: Path) -> Path:
    """A dataset folder (the digits manifest) whose pool split is `pool`."""
    root = pool.parent
    manifest = load_manifest(c.dataset)
    manifest["splits"] = {"pool": {"path": pool.name, "count": 1, "shards": [], "fingerprint": ""}}
    write_manifest(root, manifest)
    return root


def empty_split(c: Ctx, name: str) -> Path:
    d = c.tmp(name) / "pool"
    SplitWriter(d, (1, 28, 28)).close()
    return d


def all_corrupt_split(c: Ctx, name: str, n: int = 20) -> Path:
    return hand_split(c.tmp(name) / "pool", [corrupt(i) for i in range(n)], shape=(1, 8, 8))


class Disk:
    """Every write under `root` fails with `err` while `on` (ENOSPC: a full disk; EROFS: a
    read-only folder). Patches open(), os.open(), mkdir, rename and replace."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path, err: int, on: bool = True):
        self.root, self.err, self.on = os.path.abspath(root), err, on
        real_open, real_os_open = builtins.open, os.open
        real_mkdir, real_replace, real_rename = os.mkdir, os.replace, os.rename

        def fail(path: Any) -> None:
            try:
                p = os.path.abspath(os.fsdecode(path))
            except TypeError:
                return
            if self.on and (p == self.root or p.startswith(self.root + os.sep)):
                raise OSError(self.err, os.strerror(self.err), p)

        def fopen(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
            if any(ch in mode for ch in "wax+"):
                fail(file)
            return real_open(file, mode, *a, **kw)

        def os_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                fail(path)
            return real_os_open(path, flags, *a, **kw)

        def mkdir(path: Any, *a: Any, **kw: Any) -> None:
            fail(path)
            real_mkdir(path, *a, **kw)

        def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
            fail(dst)
            real_replace(src, dst, *a, **kw)

        def rename(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
            fail(dst)
            real_rename(src, dst, *a, **kw)

        for target, name, fn in (
            (builtins, "open", fopen), (io, "open", fopen), (os, "open", os_open),
            (os, "mkdir", mkdir), (os, "replace", replace), (os, "rename", rename),
        ):  # fmt: skip
            mp.setattr(target, name, fn)


def at_step(mp: pytest.MonkeyPatch, step: int, action: Callable[[], None]) -> None:
    """Run `action` at the start of training step `step` (1-based)."""
    real = train_mod.lr_at

    def lr_at(cfg: Any, s: int) -> float:
        if s + 1 == step:
            action()
        return real(cfg, s)

    mp.setattr(train_mod, "lr_at", lr_at)


# ----------------------------------------------------------------------------- complex cases


_real_lr_at = train_mod.lr_at


def full_disk_checkpoint_then_resume(c: Ctx) -> str:
    c.cache  # noqa: B018 (the reference is trained by the same loop: before any patch)
    out = c.tmp("full-disk-ckpt") / "run"
    disk = Disk(c.mp, out / "checkpoints", errno.ENOSPC, on=False)
    at_step(c.mp, 15, lambda: setattr(disk, "on", True))
    with pytest.raises(JestkitError) as info:
        train_mod.train(debug(), out)
    disk.on = False
    c.mp.setattr(train_mod, "lr_at", _real_lr_at)
    # Nothing lost: the step-10 checkpoint is whole, and the resumed run ends like the baseline.
    latest = latest_checkpoint(out)
    assert checkpoint_step(latest) == 10 and verify_checkpoint(latest, full=True) is None
    train_mod.train(debug(), out, resume="latest")
    assert strip(read_metrics(out / "metrics.jsonl")) == c.baseline
    raise info.value


def full_disk_metrics(c: Ctx) -> None:
    c.cache  # noqa: B018 (the reference is trained by the same loop: before any patch)
    out = c.tmp("full-disk-metrics") / "run"
    state = {"on": False}
    real_init = jm.MetricsWriter.__init__

    class Full:  # the open metrics file, whose writes fail once the disk is full
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, b: bytes) -> int:
            if state["on"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "metrics.jsonl"))
            return self.f.write(b)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    def init(self: Any, *a: Any, **kw: Any) -> None:
        real_init(self, *a, **kw)
        self._file = Full(self._file)

    c.mp.setattr(jm.MetricsWriter, "__init__", init)
    at_step(c.mp, 15, lambda: state.update(on=True))
    with pytest.raises(JestkitError) as info:
        train_mod.train(debug(), out)
    assert checkpoint_step(latest_checkpoint(out)) == 10  # the last good checkpoint is kept
    raise info.value


def cache_deleted_mid_run(c: Ctx) -> str:
    """The reference cache folder is deleted at step 15: lookups go on from the memory map
    (the data stays readable until closed) and the run ends exactly like the baseline."""
    cache = c.tmp("cache-deleted") / "cache"
    shutil.copytree(c.cache, cache)
    out = cache.parent / "run"
    at_step(c.mp, 15, lambda: shutil.rmtree(cache))
    train_mod.train(debug(f"selection.reference_cache={cache}"), out)
    c.mp.setattr(train_mod, "lr_at", _real_lr_at)
    assert not cache.exists()
    same = strip(read_metrics(out / "metrics.jsonl"))[1:] == c.baseline[1:]  # [0]: step-0 eval
    return f"run finished, metrics equal to an undisturbed run: {same}"


def cache_partly_deleted_is_rebuilt(c: Ctx, capsys: Any) -> str:
    """A file of the automatic cache is deleted (e.g. between runs): the next run rebuilds it."""
    cache = c.cache
    before = np.load(cache / "image.npy").copy()
    (cache / "image.npy").unlink()
    again = ensure_reference_cache(debug(), c.reference, c.dataset, verbose=True)
    assert again == cache and np.array_equal(np.load(cache / "image.npy"), before)
    return capsys.readouterr().out


def cache_explicit_deleted_then_resume(c: Ctx) -> Any:
    cache = c.tmp("cache-explicit") / "cache"
    shutil.copytree(c.cache, cache)
    out = cache.parent / "run"
    cfg = debug(f"selection.reference_cache={cache}", "train.steps=10")
    train_mod.train(cfg, out)
    shutil.rmtree(cache)
    return train_mod.train(debug(f"selection.reference_cache={cache}"), out, resume="latest")


def other_script_captions(c: Ctx) -> str:
    captions = [
        "一匹の猫が窓辺で眠っている", "قطة نائمة على النافذة", "Кошка спит на окне",
        "고양이가 창가에서 자고 있다", "एक बिल्ली खिड़की पर सो रही है", "Μια γάτα κοιμάται",
        "猫在窗台上睡觉", "חתול ישן על החלון", "แมวนอนอยู่บนหน้าต่าง", "Kedi pencerede uyuyor",
        "Mèo ngủ trên cửa sổ", "Pisică doarme pe fereastră",
    ]  # fmt: skip
    out = c.tmp("scripts") / "data"
    assert cli(["make-shards", str(c.csv("scripts", c.rows(captions))), "--out", str(out), "--quiet", "--image-size", "16"]) == 0  # fmt: skip
    read = read_captions(out / "train")
    tok = Tokenizer.train(read, vocab_size=256, context_length=16)
    ids = tok(read)
    distinct = len({tuple(r.tolist()) for r in ids})
    return (
        f"captions round-trip: {sorted(read) == sorted(captions)}; distinct token rows: {distinct}"
    )


def enormous_caption(c: Ctx) -> str:
    captions = [f"picture number {i}" for i in range(12)]
    captions[3] = "a very long caption " * 50_000  # 1 MB
    out = c.tmp("enormous") / "data"
    code = cli(["make-shards", str(c.csv("enormous", c.rows(captions))), "--out", str(out), "--quiet", "--image-size", "16"])  # fmt: skip
    assert code == 0
    read = read_captions(out / "train")
    tok = Tokenizer.train(read, vocab_size=64, context_length=16)
    ids = tok(read)
    return f"{len(read)} captions, longest {max(map(len, read))} chars, tokens {tuple(ids.shape)}"


def mixed_sizes_and_modes(c: Ctx) -> str:
    out = c.tmp("mixed") / "data"
    rows = [*c.rows(), {"image": "imgs/grey.jpg", "caption": "a small grey jpeg"}]
    code = cli(["make-shards", str(c.csv("mixed", rows)), "--out", str(out), "--quiet", "--image-size", "16", "--channels", "3"])  # fmt: skip
    assert code == 0
    split = load_split(out / "train")
    assert tuple(split.images.shape) == (13, 3, 16, 16)
    captured = c.capsys.readouterr()
    assert captured.err.count("resizing images") == 1  # said once, not per image
    return captured.err + captured.out


def mixed_inside_a_shard(c: Ctx) -> str:
    records = [good(i) for i in range(4)]
    records += [good(9, shape=(1, 9, 9)), good(10, shape=(3, 8, 8))]  # other size, RGB in grey
    return load_with_summary(hand_split(c.tmp("mixed-shard") / "split", records))


def truncated_tar(c: Ctx) -> str:
    split = hand_split(c.tmp("truncated") / "split", [good(i) for i in range(6)])
    shard = split / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: 512 * 9 + 100])  # cut inside the 5th record
    return load_with_summary(split)


def make_shards_summary(c: Ctx, rows: list[dict[str, str]], name: str) -> str:
    code = cli(["make-shards", str(c.csv(name, rows)), "--out", str(c.tmp(name) / "d"), "--quiet", "--image-size", "16"])  # fmt: skip
    assert code == 0
    captured = c.capsys.readouterr()
    return captured.out + captured.err


def readonly(c: Ctx, name: str, argv: Callable[[Path], list[str]], err: int = errno.EROFS) -> int:
    folder = c.tmp(name)
    Disk(c.mp, folder, err)
    return cli(argv(folder))


def api_readonly(c: Ctx, name: str, fn: Callable[[Path], Any], err: int = errno.EROFS) -> Any:
    folder = c.tmp(name)
    Disk(c.mp, folder, err)
    return fn(folder)


def scores_file(c: Ctx) -> Path:
    def make() -> Path:
        out = c.root / "scores.parquet"
        assert cli(["score", "--model", str(c.reference), "--shards", str(c.pool), "--out", str(out), "--quiet"]) == 0  # fmt: skip
        return out

    return c.memo("scores", make)


def nan_embeddings() -> Embeddings:
    e = Embeddings(torch.randn(8, 4), torch.randn(8, 4), 10.0, -10.0)
    e.image[1, 2] = float("nan")
    return e


def emb(n: int = 8, d: int = 4, dtype=torch.float32) -> Embeddings:
    return Embeddings(torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype), 10.0, -10.0)


def scores_with_nan() -> torch.Tensor:
    s = torch.randn(8, 8)
    s[2, 3] = float("nan")
    return s


def other_config_checkpoint(c: Ctx) -> Any:
    config = load_pretrained(c.checkpoint)[0].config.to_dict()
    return load_checkpoint(c.checkpoint, model_config={**config, "image_width": 999})


def eval_empty_split(c: Ctx) -> int:
    data = dataset_with(c, "eval-empty", empty_split(c, "eval-empty"))
    manifest = load_manifest(data)
    manifest["splits"] = {"eval": {"path": "pool", "count": 0}}
    write_manifest(data, manifest)
    return cli(["eval", "--model", str(c.checkpoint), "--data", str(data)])


def eval_other_size(c: Ctx) -> int:
    data = c.tmp("other-size") / "d"
    assert cli(["make-shards", str(c.csv("other-size", c.rows())), "--out", str(data), "--quiet", "--image-size", "16", "--split", "eval"]) == 0  # fmt: skip
    c.capsys.readouterr()
    return cli(["eval", "--model", str(c.checkpoint), "--data", str(data)])


def eval_all_corrupt(c: Ctx) -> int:
    split = all_corrupt_split(c, "eval-corrupt")
    manifest = load_manifest(c.dataset)
    manifest["splits"] = {"eval": {"path": "pool", "count": 20}}
    write_manifest(split.parent, manifest)
    return cli(["eval", "--model", str(c.checkpoint), "--data", str(split.parent)])


# ----------------------------------------------------------------------------- the catalogue

A, C = "API", "CLI"
S8 = torch.randn(8, 8)

CASES = [
    # --- issue 2: the core
    Case("k-above-n", "#2", A, "joint_sample(N=8, k=9)", lambda c: joint_sample(S8, 9, n_chunks=1), Error(r"pool size N=8, got k=9")),
    Case("k-zero", "#2", A, "joint_sample(k=0)", lambda c: joint_sample(S8, 0, n_chunks=1), Error(r"k must be >= 1, got 0")),
    Case("k-chunks", "#2", A, "k=6, n_chunks=4", lambda c: joint_sample(S8, 6, n_chunks=4), Error(r"k=6 is not divisible by n_chunks=4")),
    Case("filter-ratio", "#2", A, "super_batch_size(f=1.0)", lambda c: super_batch_size(32, 1.0), Error(r"filter_ratio must be in \(0, 1\).*got 1\.0")),
    Case("scores-non-square", "#2", A, "scores 8x7", lambda c: joint_sample(torch.randn(8, 7), 4, n_chunks=2), Error(r"scores must be a square .* got shape \(8, 7\)")),
    Case("scores-non-finite", "#2", A, "NaN in the score matrix", lambda c: joint_sample(scores_with_nan(), 4, n_chunks=2), Error(r"scores has 1 non-finite values .*\[2, 3\] = nan")),
    Case("emb-n-mismatch", "#2", A, "learner N=8, reference N=7", lambda c: joint_sample_embeddings(emb(8), emb(7), 4, n_chunks=2), Error(r"same N examples, got N=8 and N=7")),
    Case("emb-shape-mismatch", "#2", A, "image [8,4] vs text [8,5]", lambda c: joint_sample_embeddings(Embeddings(torch.randn(8, 4), torch.randn(8, 5), 10.0, -10.0), emb(), 4, n_chunks=2), Error(r"learner.image and learner.text must have the same shape .*\(8, 4\) and \(8, 5\)")),
    Case("emb-dtype-mismatch", "#2", A, "image fp32 vs text fp64", lambda c: joint_sample_embeddings(Embeddings(torch.randn(8, 4), torch.randn(8, 4, dtype=torch.float64), 10.0, -10.0), emb(), 4, n_chunks=2), Error(r"same dtype, got torch.float32 and torch.float64")),
    Case("emb-device-mismatch", "#2", A, "learner on cpu, reference on meta", lambda c: joint_sample_embeddings(emb(), Embeddings(torch.randn(8, 4, device="meta"), torch.randn(8, 4, device="meta"), 10.0, -10.0), 4, n_chunks=2), Error(r"same device, got cpu and meta")),
    Case("emb-nan", "#2", A, "NaN learner embedding", lambda c: joint_sample_embeddings(nan_embeddings(), emb(), 4, n_chunks=2), Error(r"learner.image has 1 non-finite values .*\[1, 2\] = nan")),
    Case("emb-inf-scale", "#2", A, "scale t = inf", lambda c: joint_sample_embeddings(Embeddings(torch.randn(8, 4), torch.randn(8, 4), float("inf"), -10.0), emb(), 4, n_chunks=2), Error(r"learner.scale and learner.bias must be finite, got scale=inf")),
    # --- issue 3: models
    Case("model-unknown", "#3", A, "create_model('vit-huge-999')", lambda c: create_model("vit-huge-999"), Error(r"unknown model 'vit-huge-999'; known models: .*mlp-tiny-56")),
    Case("model-unknown-cli", "#3", C, "jestkit flops --model vit-huge-999", lambda c: cli(["flops", "--model", "vit-huge-999"]), Cli(r"unknown model 'vit-huge-999'")),
    Case("patch-not-dividing", "#3", A, "patch_sizes=[5] at 56 px", lambda c: create_model("vit-tiny-56", patch_sizes=[5]), Error(r"patch size 5 .* does not divide image_size=56")),
    Case("patch-not-in-set", "#3", A, "encode_image(patch_size=4)", lambda c: c.model.encode_image(torch.zeros(2, 1, 56, 56, dtype=torch.uint8), patch_size=4), Error(r"patch_size=4 is not one of .*\(7, 14\)")),
    Case("image-shape", "#3", A, "28 px images into a 56 px model", lambda c: c.model.encode_image(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)), Error(r"images: shape \(2, 1, 28, 28\) does not match \[B, 1, 56, 56\]")),
    Case("image-channels", "#3", A, "RGB into a grey model", lambda c: c.model.encode_image(torch.zeros(2, 3, 56, 56, dtype=torch.uint8)), Error(r"images: shape \(2, 3, 56, 56\) does not match")),
    Case("image-dtype", "#3", A, "int32 images", lambda c: c.model.encode_image(torch.zeros(2, 1, 56, 56, dtype=torch.int32)), Error(r"images: dtype torch.int32 must be torch.uint8 or floating")),
    Case("token-oov", "#3", A, "token id 517, vocab 512", lambda c: c.model.encode_text(torch.full((2, 32), 517)), Error(r"tokens: id 517 is outside \[0, vocab_size=512\)")),
    Case("checkpoint-other-config", "#3", A, "load_checkpoint(model_config=another)", other_config_checkpoint, Error(r"written for another model config: image_width=\d+ \(expected 999\)")),
    # --- issue 4: data
    Case("corrupt-image", "#4", A, "a PNG with a flipped bit in a shard", lambda c: load_with_summary(one_bad_split(c, "corrupt", corrupt(7))), Skipped(r"4 usable; loader.skipped=\{'corrupt image': 1\}.*shard-000000\.tar: record [0-9a-f]{16}")),
    Case("corrupt-image-strict", "#4", A, "the same, strict=True", lambda c: load_with_summary(one_bad_split(c, "corrupt-strict", corrupt(7)), strict=True), Error(r"shard-000000\.tar: record [0-9a-f]{16}: corrupt image")),
    Case("truncated-tar", "#4", A, "a shard cut in the middle of a record", truncated_tar, Skipped(r"\d usable; .*'truncated tar': 1.*shard-000000\.tar \(after \d record")),
    Case("missing-caption", "#4", A, "a record without .txt", lambda c: load_with_summary(one_bad_split(c, "no-caption", ("a" * 16, {"png": good(8)[1]["png"]}))), Skipped(r"'missing caption': 1")),
    Case("empty-caption", "#4", A, "a blank caption", lambda c: load_with_summary(one_bad_split(c, "blank", good(8, caption="  \n"))), Skipped(r"'empty caption': 1")),
    Case("non-utf8-caption", "#4", A, "a Latin-1 caption in a shard", lambda c: load_with_summary(one_bad_split(c, "latin1", ("b" * 16, {"png": good(8)[1]["png"], "txt": b"caf\xe9"}))), Skipped(r"'non-UTF-8 caption': 1")),
    Case("csv-missing-file", "#4", C, "a CSV row pointing to a missing image", lambda c: make_shards_summary(c, [*c.rows(), {"image": "imgs/nope.png", "caption": "gone"}], "missing-file"), Skipped(r"wrote 12 record\(s\).*skipped 1 \(missing file 1\).*row 13")),
    Case("duplicate-uid", "#4", C, "the same image and caption twice", lambda c: make_shards_summary(c, [*c.rows(), c.rows()[0]], "dup"), Skipped(r"skipped 1 \(duplicate uid 1\)")),
    Case("cache-other-model", "#4", A, "ReferenceCache.open(model_fingerprint=another)", lambda c: ReferenceCache.open(c.cache, model_fingerprint="0" * 64), Error(r"reference cache .* was built for model [0-9a-f]{16}, not 0{16}")),
    Case("cache-other-data", "#4", A, "ReferenceCache.open(data_fingerprint=another)", lambda c: ReferenceCache.open(c.cache, data_fingerprint="ab" * 8), Error(r"reference cache .* was built over data .* not abababababababab")),
    # --- issue 5: training
    Case("unknown-preset", "#5", C, "--config qiuck", lambda c: cli(["train", "--config", "qiuck", "--out", str(c.tmp("p"))]), Cli(r"unknown preset 'qiuck'; known presets: .*quick")),
    Case("unknown-key", "#5", C, "train.stepz=10", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("k")), "train.stepz=10"]), Cli(r"unknown key 'stepz' in train")),
    Case("wrong-type", "#5", C, "train.steps=ten", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("t")), "train.steps=ten"]), Cli(r"'train.steps=ten': value 'ten' is not a valid int")),
    Case("filter-ratio-cli", "#5", C, "selection.filter_ratio=1.5", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("f")), "selection.filter_ratio=1.5"]), Cli(r"selection.filter_ratio must be in \(0, 1\), got 1.5")),
    Case("batch-chunks", "#5", C, "train.batch_size=30 with n_chunks=4", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("b")), "train.batch_size=30"]), Cli(r"train.batch_size=30 is not divisible by selection.n_chunks=4")),
    Case("missing-ref-cache", "#5", C, "selection.reference_cache=<missing>", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("m")), "selection.reference_cache=/nonexistent/cache"]), Cli(r"selection.reference_cache='/nonexistent/cache': no such folder")),
    Case("resume-other-config", "#5", A, "--resume a run of another config", lambda c: train_mod.train(debug("optim.lr=0.01"), c.checkpoint.parent.parent, resume="latest"), Error(r"was written by another config: optim.lr: checkpoint 0.001, now 0.01")),
    Case("resume-missing", "#5", C, "--resume <missing folder>", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("r")), "--resume", "/nonexistent/ckpt"]), Cli(r"--resume '/nonexistent/ckpt': no such checkpoint folder")),
    Case("run-exists", "#5", A, "a fresh run into a folder with checkpoints", lambda c: train_mod.train(debug(), c.checkpoint.parent.parent), Error(r"already holds checkpoints: pass --resume latest")),
    # --- issue 8: your data
    Case("other-scripts", "#8", C, "captions in 12 languages and scripts", other_script_captions, Works(r"captions round-trip: True; distinct token rows: 12")),
    Case("mixed-modes", "#8", C, "RGB, L, RGBA, P (palette) PNGs and a grey JPEG, 9-50 px", mixed_sizes_and_modes, Works(r"resizing images to 16x16 \(crop\); e\.g\. .*converted \d+ image\(s\) to RGB \(L \d+, P \d+, RGBA \d+\)")),
    # --- issue 7: more bad input and faults
    Case("empty-csv", "#7", C, "make-shards of a header-only CSV", lambda c: cli(["make-shards", str(c.csv("empty", [])), "--out", str(c.tmp("e") / "d"), "--quiet"]), Cli(r"INPUT .*empty\.csv: no usable rows")),
    Case("empty-split-loader", "#7", A, "SuperBatchLoader over an empty split", lambda c: SuperBatchLoader(empty_split(c, "empty-l"), batch_size=4, progress=False), Error(r"empty-l/pool: 0 usable examples cannot fill one super-batch")),
    Case("empty-split-train", "#7", C, "train data.dir=<dataset with an empty pool>", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("e-run")), f"data.dir={dataset_with(c, 'empty-t', empty_split(c, 'empty-t'))}", "selection.method=uniform"]), Cli(r"data.train_split='pool': .*empty-t/pool has no usable examples \(the split is empty\)")),
    Case("all-corrupt-train", "#7", C, "train on a shard whose every record is corrupt", lambda c: cli(["train", "--config", "debug", "--out", str(c.tmp("c-run")), f"data.dir={dataset_with(c, 'corrupt-t', all_corrupt_split(c, 'corrupt-t'))}", "selection.method=uniform"]), Cli(r"corrupt-t/pool has no usable examples \(skipped 20 record\(s\): corrupt image: 20 \(e\.g\. .*shard-000000\.tar: record")),
    Case("all-corrupt-eval", "#7", C, "jestkit eval on an eval split whose every record is corrupt", eval_all_corrupt, Cli(r"nothing to evaluate")),
    Case("empty-eval", "#7", C, "jestkit eval on an empty eval split", eval_empty_split, Cli(r"neither an 'eval' nor a 'zeroshot' split|nothing to evaluate")),
    Case("mixed-in-shard", "#7", A, "a 9x9 and an RGB PNG in an 8x8 grey shard", mixed_inside_a_shard, Skipped(r"4 usable; loader.skipped=\{'wrong image size': 1, 'corrupt image': 1\}.*wrong image size 9x9.*expected 8-bit grey")),
    Case("enormous-caption", "#7", C, "a 1 MB caption in a CSV", enormous_caption, Works(r"12 captions, longest 1000000 chars, tokens \(12, 16\)")),
    Case("full-disk-checkpoint", "#7", A, "ENOSPC from step 15: the step-20 checkpoint", full_disk_checkpoint_then_resume, Error(r"cannot write checkpoint .*step-00000020: \[Errno 28\] No space left on device.*MiB free there")),
    Case("full-disk-metrics", "#7", A, "ENOSPC writing metrics.jsonl at step 15", full_disk_metrics, Error(r"cannot write to metrics file .*metrics\.jsonl: \[Errno 28\] No space left")),
    Case("full-disk-cache", "#7", C, "jestkit cache-ref onto a full disk", lambda c: readonly(c, "full-cache", lambda d: ["cache-ref", "--model", str(c.reference), "--shards", str(c.pool), "--out", str(d / "cache"), "--quiet"], errno.ENOSPC), Cli(r"reference cache .*full-cache/cache: cannot write it \(\[Errno 28\] No space left")),
    Case("full-disk-shards", "#7", C, "jestkit make-shards onto a full disk", lambda c: readonly(c, "full-shards", lambda d: ["make-shards", str(c.csv("fs", c.rows())), "--out", str(d / "data"), "--quiet"], errno.ENOSPC), Cli(r"full-shards/.*: cannot write there \(\[Errno 28\] No space left")),
    Case("full-disk-scores", "#7", C, "jestkit score onto a full disk", lambda c: readonly(c, "full-scores", lambda d: ["score", "--model", str(c.reference), "--shards", str(c.pool), "--out", str(d / "s.parquet"), "--quiet"], errno.ENOSPC), Cli(r"--out .*full-scores/s\.parquet: cannot write it \(\[Errno 28\] No space left")),
    Case("readonly-train-new", "#7", C, "train --out <read-only>/run", lambda c: readonly(c, "ro-train", lambda d: ["train", "--config", "debug", "--out", str(d / "run")]), Cli(r"--out '.*ro-train/run': cannot create the output folder \(\[Errno 30\] Read-only file system")),
    Case("readonly-train-existing", "#7", A, "train --out <an existing read-only folder>", lambda c: api_readonly(c, "ro-train2", lambda d: train_mod.train(debug(), d)), Error(r"cannot open metrics file .*ro-train2/metrics\.jsonl for writing: \[Errno 30\] Read-only")),
    Case("readonly-make-shards", "#7", C, "make-shards --out <read-only>", lambda c: readonly(c, "ro-shards", lambda d: ["make-shards", str(c.csv("ro", c.rows())), "--out", str(d / "data"), "--quiet"]), Cli(r"ro-shards/.*: cannot write there \(\[Errno 30\] Read-only file system")),
    Case("readonly-cache-ref", "#7", C, "cache-ref --out <read-only>", lambda c: readonly(c, "ro-cache", lambda d: ["cache-ref", "--model", str(c.reference), "--shards", str(c.pool), "--out", str(d / "cache"), "--quiet"]), Cli(r"reference cache .*ro-cache/cache: cannot write it \(\[Errno 30\]")),
    Case("readonly-eval-out", "#7", C, "eval --out <read-only>/m.json", lambda c: readonly(c, "ro-eval", lambda d: ["eval", "--model", str(c.checkpoint), "--data", str(c.dataset), "--out", str(d / "m.json"), "--max-examples", "50"]), Cli(r"--out .*ro-eval/m\.json: cannot write: \[Errno 30\]")),
    Case("readonly-filter-out", "#7", C, "filter --out <read-only>/keep.npy", lambda c: readonly(c, "ro-filter", lambda d: ["filter", str(scores_file(c)), "--keep-fraction", "0.5", "--out", str(d / "keep.npy")]), Cli(r"--out .*ro-filter/keep\.npy: cannot write it \(\[Errno 30\]")),
    Case("cache-deleted-mid-run", "#7", A, "the reference cache folder deleted at step 15", cache_deleted_mid_run, Works(r"run finished, metrics equal to an undisturbed run: True")),
    Case("cache-partly-deleted", "#7", A, "image.npy of the automatic cache deleted between runs", lambda c: cache_partly_deleted_is_rebuilt(c, c.capsys), Works(r"caching the reference's embeddings over .* in ")),
    Case("cache-explicit-deleted", "#7", A, "an explicit selection.reference_cache deleted, then --resume", cache_explicit_deleted_then_resume, Error(r"selection.reference_cache='.*cache-explicit/cache': no such folder")),
    # --- every other command's arguments
    Case("eval-missing-model", "CLI", C, "eval --model <missing>", lambda c: cli(["eval", "--model", "/nonexistent/m", "--data", str(c.dataset)]), Cli(r"--model /nonexistent/m: not a model folder")),
    Case("eval-missing-data", "CLI", C, "eval --data <missing>", lambda c: cli(["eval", "--model", str(c.checkpoint), "--data", "/nonexistent/d"]), Cli(r"--data /nonexistent/d: no such dataset folder")),
    Case("eval-other-size", "CLI", C, "an 8 px model on 16 px images", eval_other_size, Cli(r"images: shape \(\d+, 1, 16, 16\) does not match \[B, 1, 8, 8\]")),
    Case("score-missing-shards", "CLI", C, "score --shards <missing>", lambda c: cli(["score", "--model", str(c.reference), "--shards", "/nonexistent/pool", "--out", str(c.tmp("sm") / "s.parquet")]), Cli(r"/nonexistent/pool: split folder not found")),
    Case("filter-bad-fraction", "CLI", C, "filter --keep-fraction 1.5", lambda c: cli(["filter", str(scores_file(c)), "--keep-fraction", "1.5", "--out", str(c.tmp("fb") / "k.npy")]), Cli(r"--keep-fraction.*1\.5")),
    Case("prepare-exists", "CLI", C, "prepare --out <existing folder>", lambda c: cli(["prepare", "--dataset", "digits", "--out", str(c.dataset)]), Cli(r"--out .*: already exists \(pass --overwrite")),
    Case("report-not-a-suite", "CLI", C, "report <a folder that is not a suite>", lambda c: cli(["report", str(c.tmp("nosuite"))]), Cli(r"nosuite")),
]  # fmt: skip


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("bad-input")
    mp.setenv("JESTKIT_CACHE", str(root / "jestkit-cache"))
    c = Ctx(root, mp, None)
    yield c
    mp.undo()


def _run(case: Case, c: Ctx) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a BadRecordWarning is the summary only where asked
        return case.run(c)


def observe(case: Case, c: Ctx) -> str:
    """Run one case, check its outcome; returns what the user was shown."""
    expect = case.expect
    if isinstance(expect, Error):
        with pytest.raises(JestkitError) as info:
            _run(case, c)
        message = str(info.value)
        assert re.search(expect.pattern, message), message
        return message
    if isinstance(expect, Cli):
        code = _run(case, c)
        err = c.capsys.readouterr().err
        assert code == 2, err
        assert re.search(expect.pattern, err), err
        assert "Traceback" not in err and err.count("\n") <= 3, err
        return err.strip()
    shown = str(case.run(c))
    assert re.search(expect.pattern, shown, re.S), shown
    return shown.strip()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx: Ctx, monkeypatch, capsys):
    ctx.mp, ctx.capsys = monkeypatch, capsys  # per case: patches are undone after it
    observe(case, ctx)


# ----------------------------------------------------------------------------- numerical guards


def poison(mp: pytest.MonkeyPatch, scores: set[int] = frozenset(), loss: set[int] = frozenset()):
    """NaN reference embeddings (so NaN selection scores) at the steps in `scores`, a NaN loss
    at the steps in `loss` (1-based; keyed by step, so a resumed run is poisoned the same)."""
    from jestkit.losses import SigLipLoss

    now = {"step": 0}
    real_lr, real_lookup, real_forward = train_mod.lr_at, ReferenceCache.lookup, SigLipLoss.forward

    def lr_at(cfg: Any, s: int) -> float:
        now["step"] = s + 1
        return real_lr(cfg, s)

    def lookup(self: Any, uids: Any, device: Any = None) -> Embeddings:
        e = real_lookup(self, uids, device)
        if now["step"] in scores:
            e.image[3, 1] = float("nan")
        return e

    def forward(self: Any, *a: Any, **kw: Any) -> torch.Tensor:
        out = real_forward(self, *a, **kw)
        return out * float("nan") if now["step"] in loss else out

    mp.setattr(train_mod, "lr_at", lr_at)
    mp.setattr(ReferenceCache, "lookup", lookup)
    mp.setattr(SigLipLoss, "forward", forward)


def test_nonfinite_scores_stop_at_their_step_and_keep_the_last_good_checkpoint(ctx, monkeypatch):
    ctx.cache  # noqa: B018 (built before the poison)
    poison(monkeypatch, scores={15})
    out = ctx.tmp("nan-scores")
    with pytest.raises(JestkitError) as info:
        train_mod.train(debug(), out)
    assert re.search(
        r"non-finite reference embeddings \(selection scores\) at step 15; stopped\. "
        r"Last good checkpoint: .*step-00000010",
        str(info.value),
    ), info.value
    assert [checkpoint_step(p) for p in (out / "checkpoints").glob("step-*")] == [10]
    assert verify_checkpoint(latest_checkpoint(out), full=True) is None
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 14


def test_nonfinite_skip_counts_steps_and_resumes_identically(ctx, monkeypatch):
    ctx.cache  # noqa: B018
    poison(monkeypatch, scores={15}, loss={23})
    out = ctx.tmp("nan-skip")
    final = train_mod.train(debug("train.nonfinite=skip"), out / "full")
    rows = read_metrics(out / "full" / "metrics.jsonl")
    skipped = [(r["step"], r["nonfinite"]) for r in rows if "nonfinite" in r]
    assert skipped == [(15, "reference embeddings (selection scores)"), (23, "loss (nan)")]
    assert final["nonfinite_skipped"] == 2 and rows[-1] == final
    # Only the poisoned steps are skipped: every other step trained on a finite loss.
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [s for s in range(1, 41) if s not in (15, 23)]
    assert all(np.isfinite(r["loss"]) for r in steps)

    # Stopped after step 20's checkpoint (one skip counted) and resumed: the same run.
    def stop_at_21() -> None:
        raise KeyboardInterrupt

    at_step(monkeypatch, 21, stop_at_21)
    poison(monkeypatch, scores={15}, loss={23})  # wraps the stopping lr_at
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(debug("train.nonfinite=skip"), out / "resumed")
    monkeypatch.setattr(train_mod, "lr_at", _real_lr_at)
    poison(monkeypatch, scores={15}, loss={23})
    again = train_mod.train(debug("train.nonfinite=skip"), out / "resumed", resume="latest")
    assert again == final
    assert strip(read_metrics(out / "resumed" / "metrics.jsonl")) == strip(rows)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_diverging_run_stops_with_its_step(ctx, mode):
    """lr = 1e30: the first update blows the weights up. `stop` stops at the first non-finite
    value; `skip` skips steps, but stops once it is clear the run cannot recover."""
    out = ctx.tmp(f"diverge-{mode}")
    # The trained reference and its cache as they are (one trained at this lr would diverge).
    reference = (f"selection.reference={ctx.reference}", f"selection.reference_cache={ctx.cache}")
    diverging = ("optim.lr=1e30", "optim.warmup_steps=0", f"train.nonfinite={mode}", *reference)
    with pytest.raises(JestkitError) as info:
        train_mod.train(debug(*diverging), out)
    message = str(info.value)
    assert re.search(r"non-finite .* at step (\d+)", message), message
    step = int(re.search(r"at step (\d+)", message).group(1))
    logged = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["step"] > 0]
    if mode == "stop":
        assert "stopped" in message and logged == list(range(1, step))
    else:
        assert re.search(r"not recovering|weights are non-finite", message), message
        assert any("nonfinite" in r for r in read_metrics(out / "metrics.jsonl"))


def test_cli_prints_any_remaining_oserror_as_one_line(monkeypatch, capsys):
    """The last resort: an OSError no command turned into a JestkitError (a disk failing where
    nobody expected it) is still one line naming the file, exit 2, no traceback."""
    import jestkit.flops

    def run(args: Any) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/data/shard-000007.tar")

    monkeypatch.setattr(jestkit.flops, "run", run)
    assert cli(["flops", "--model", "mlp-tiny-28"]) == 2
    err = capsys.readouterr().err
    assert err == "jestkit flops: error: [Errno 5] Input/output error: '/data/shard-000007.tar'\n"


def test_catalogue_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


class _Capsys:
    """pytest's capsys outside pytest: stdout/stderr go to buffers that readouterr() drains."""

    def __init__(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()

    def readouterr(self) -> Any:
        out, err = self.out.getvalue(), self.err.getvalue()
        self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
        return type("Captured", (), {"out": out, "err": err})()


def markdown_table() -> str:
    """Run every case outside pytest; the catalogue as a markdown table with what was shown."""
    import tempfile

    lines = ["| # | issue | entry | bad input | result | what the user is shown |"]
    lines.append("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        c = Ctx(root, pytest.MonkeyPatch(), _Capsys())
        c.mp.setenv("JESTKIT_CACHE", str(root / "jestkit-cache"))
        for i, case in enumerate(CASES, 1):
            c.mp, outer = pytest.MonkeyPatch(), c.mp
            c.capsys.readouterr()  # what earlier cases printed is not this case's
            try:
                with (
                    contextlib.redirect_stdout(c.capsys.out),
                    contextlib.redirect_stderr(c.capsys.err),
                ):
                    shown, result = observe(case, c), case.expect.label
            except BaseException as e:  # a failing case: say so in the table
                shown, result = f"{type(e).__name__}: {e}", "**FAILED**"
            finally:
                c.mp.undo()
                c.mp = outer
            shown = " ".join(shown.replace(str(root), "…").split())
            shown = shown if len(shown) <= 220 else shown[:217] + "..."
            code = f"`` {shown} ``" if "`" in shown else f"`{shown}`"  # a span may hold `
            text = case.input.replace("<", "&lt;").replace(">", "&gt;")  # not HTML tags
            cells = [str(i), case.issue, case.entry, text, result, code]
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        c.mp.undo()
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(markdown_table())
