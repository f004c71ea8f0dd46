"""Standard webdataset shards as img2dataset writes them, read in place (no conversion).

img2dataset (and CC3M/CC12M/LAION/DataComp downloads made with it) writes one tar per shard with,
per example, ``{key}.jpg`` (or ``.png`` / ``.webp``), ``{key}.txt`` (the caption) and
``{key}.json`` (url, sizes, DataComp's ``uid``...), plus a ``.parquet`` per shard. jestkit reads
them where they are:

    from jestkit.data.img2dataset import open_source
    split = open_source("pool/{00000..00123}.tar", image_size=224, channels=3)
    loader = SuperBatchLoader(split, batch_size=4096)           # like any jestkit split

A *source* is a folder of ``.tar`` files, one ``.tar`` file, or a brace pattern
(``pool/{00000..00123}.tar``, webdataset's convention). :func:`open_source` makes a small **view**
folder (``split.json`` + ``meta.parquet`` + a cached byte-offset index, no image copied) that
points at the tars by absolute path and records the image transform. Every reader that takes a
jestkit split (the loader, the evaluator, the reference cache, ``jestkit score``) reads a view the
same way; images are decoded and resized/cropped to the model's input when they are loaded.

- uid: the json's ``uid`` when present (DataComp: 32 hex characters; jestkit keys examples by its
  first 16, DataComp's ``u0``, and keeps the whole string as ``source_uid``), else a stable hash of
  the key and the image bytes.
- caption: ``{key}.txt``, else the json's ``caption`` field.
- Bad records are skipped and counted by reason (missing image/caption, corrupt or truncated
  image, bad json, duplicate uid, truncated tar), like jestkit's own reader.

Why a view and not a stream: the super-batch loader reads records by offset in any order
(deterministic, resumable, bounded memory); one validation pass (cached) gives the offsets.
webdataset's own ``WebDataset`` pipeline reads sequentially, so it is used here for its shard-list
brace expansion only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jestkit.data.shards import (
    FORMAT_VERSION,
    META_FILE,
    SPLIT_FILE,
    SPLIT_LAYOUTS,
    BadRecords,
    BadRecordWarning,
    ShardIndex,
    TarFormatError,
    iter_tar,
)
from jestkit.data.transforms import ImageTransform
from jestkit.data.uids import UID_CHARS, fingerprint_uids, int_to_uid
from jestkit.errors import JestkitError, check
from jestkit.fsutil import replace_dir

LAYOUT = "img2dataset"
VIEW_VERSION = 1
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_HEX = frozenset("0123456789abcdef")
TRANSFORM_NOTE = (
    "decoded with Pillow (JPEG at the nearest DCT scale >= the target), EXIF-rotated, converted "
    "to {mode}, resized with antialiased bicubic and {resize} to {size}x{size}"
)


def views_root() -> Path:
    """Where views of sources given by path are kept: ``$JESTKIT_CACHE/views`` (~/.cache/jestkit)."""
    root = os.environ.get("JESTKIT_CACHE") or os.path.join(Path.home(), ".cache", "jestkit")
    return Path(root) / "views"


def is_source(value: str | os.PathLike) -> bool:
    """True for a brace pattern, a ``.tar`` file, or a folder of tars that is not a jestkit split."""
    s = str(value)
    if "{" in s and ".." in s and "}" in s:
        return True
    p = Path(s).expanduser()
    if p.is_file():
        return p.suffix == ".tar"
    if not p.is_dir() or (p / SPLIT_FILE).exists() or (p / "dataset.json").exists():
        return False
    return any(p.glob("*.tar"))


def expand_source(value: str | os.PathLike) -> list[Path]:
    """The tar files of a source, in order; a missing one is an error naming it."""
    from webdataset.shardlists import expand_urls

    s = str(value)
    p = Path(s).expanduser()
    if p.is_dir():
        tars = sorted(p.glob("*.tar"))
        check(bool(tars), f"{s!r}: no .tar files in this folder")
        return [t.resolve() for t in tars]
    tars = [Path(t).expanduser() for t in expand_urls(s)]
    check(bool(tars), f"{s!r}: the pattern names no file")
    missing = [t for t in tars if not t.is_file()]
    if missing:
        raise JestkitError(
            f"{s!r}: {len(missing)} of {len(tars)} shard(s) missing, e.g. {str(missing[0])!r}"
        )
    return [t.resolve() for t in tars]


def _stat_key(tars: Sequence[Path], transform: ImageTransform) -> str:
    h = hashlib.sha256(repr((LAYOUT, VIEW_VERSION, transform.shape, transform.resize)).encode())
    for t in tars:
        st = os.stat(t)
        h.update(f"{t}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _uid_of(key: str, image: bytes, meta: dict[str, Any]) -> tuple[int, str]:
    """(the 64-bit key jestkit uses, the source's own uid string or "")."""
    uid = meta.get("uid")
    if isinstance(uid, (str, int)) and str(uid):
        s = str(uid).strip().lower()
        if len(s) >= UID_CHARS and set(s) <= _HEX:
            return int(s[:UID_CHARS], 16), str(uid)  # DataComp: the high 64 bits (its `u0`)
        return int(hashlib.sha256(s.encode()).hexdigest()[:UID_CHARS], 16), str(uid)
    h = hashlib.sha256(key.encode("utf-8") + b"\0" + image)
    return int(h.hexdigest()[:UID_CHARS], 16), ""


def decode_image(data: bytes, transform: ImageTransform) -> tuple[np.ndarray, tuple[int, int]]:
    """Any JPEG/PNG/WebP -> ``uint8 [C, S, S]`` by ``transform``; (array, original (w, h)).

    Raises ValueError (with the reason) on a corrupt or truncated image.
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        size = img.size
        if img.format == "JPEG":  # decode at the smallest DCT scale still >= the target
            s = transform.image_size
            img.draft("L" if transform.channels == 1 else "RGB", (s, s))
        img.load()
        return transform(img), size
    except Exception as e:  # PIL raises many types for bad data
        raise ValueError(str(e) or type(e).__name__) from None


@dataclass
class SourceIndex(ShardIndex):
    """A :class:`ShardIndex` over img2dataset tars: any image format, resized when read.

    ``png_offset``/``png_size`` locate the image member whatever its format; ``txt_*`` the caption
    member, or the json member where ``caption_json`` is set (caption taken from its field).
    """

    transform: ImageTransform | None = None
    caption_json: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def _caption(self, row: int, txt: bytes) -> str:
        if self.caption_json[row]:
            return str(json.loads(txt.decode("utf-8"))["caption"])
        return txt.decode("utf-8")

    def _decode(self, row: int, png: bytes, txt: bytes) -> tuple[np.ndarray, str]:
        try:
            return decode_image(png, self.transform)[0], self._caption(row, txt)
        except (ValueError, UnicodeDecodeError, KeyError) as e:
            where = f"{self.split_dir / self.shards[self.shard[row]]}: record {self.uids([row])[0]}"
            raise JestkitError(
                f"{where}: unreadable although it passed validation ({e}); the shard changed "
                f"after it was indexed: delete the view {self.split_dir} and retry"
            ) from None

    def read_captions(self) -> list[str]:
        out = []
        for r, (s, t, n) in enumerate(
            zip(self.shard.tolist(), self.txt_offset.tolist(), self.txt_size.tolist(), strict=True)
        ):
            out.append(self._caption(r, os.pread(self._fd(s), n, t)))
        return out


_ARRAYS = ("shard", "png_offset", "png_size", "txt_offset", "txt_size", "uid", "caption_json")


def _scan(
    tars: Sequence[Path], transform: ImageTransform, strict: bool, progress: bool
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], BadRecords]:
    """One validating pass over the tars: good records' offsets, their metadata rows, bad ones."""
    from jestkit.progress import progress_bar

    out: dict[str, list[Any]] = {k: [] for k in _ARRAYS}
    rows: list[dict[str, Any]] = []
    bad = BadRecords()
    seen: set[int] = set()
    bar = progress_bar(total=len(tars), desc="index shards", unit="shard", disable=not progress)
    for shard_id, path in enumerate(tars):
        group: dict[str, Any] = {"key": None, "members": {}}
        count = [0]

        def flush(
            shard_id: int = shard_id, path: Path = path, group: dict = group, count: list = count
        ) -> None:
            key, members = group["key"], group["members"]
            group["key"], group["members"] = None, {}
            if key is None:
                return
            count[0] += 1
            where = f"{path}: record {key}"
            image_ext = next((e for e in IMAGE_EXTS if e in members), None)
            if image_ext is None:
                return bad.add("missing image", where, strict)
            meta: dict[str, Any] = {}
            if "json" in members:
                try:
                    meta = json.loads(members["json"][1].decode("utf-8"))
                    if not isinstance(meta, dict):
                        raise ValueError("not a JSON object")
                except (ValueError, UnicodeDecodeError) as e:
                    return bad.add("bad json", where, strict, str(e)[:80])
            from_json = "txt" not in members
            if from_json:
                if not isinstance(meta.get("caption"), str):
                    return bad.add("missing caption", where, strict)
                caption, (to, txt) = meta["caption"], members["json"]
            else:
                to, txt = members["txt"]
                try:
                    caption = txt.decode("utf-8")
                except UnicodeDecodeError as e:
                    return bad.add("non-UTF-8 caption", where, strict, f"{e.reason} at {e.start}")
            if not caption.strip():
                return bad.add("empty caption", where, strict)
            po, image = members[image_ext]
            try:
                _, (w, h) = decode_image(image, transform)
            except ValueError as e:
                reason = "truncated image" if "truncated" in str(e).lower() else "corrupt image"
                return bad.add(reason, where, strict, f"{image_ext}: {str(e)[:80]}")
            uid, source_uid = _uid_of(key, image, meta)
            if uid in seen:
                return bad.add("duplicate uid", where, strict, source_uid or "")
            seen.add(uid)
            for name, v in zip(
                _ARRAYS,
                (shard_id, po, len(image), to, len(txt), uid, from_json),
                strict=True,
            ):
                out[name].append(v)
            rows.append(
                {
                    "key": key,
                    "source_uid": source_uid,
                    "caption": caption,
                    "url": str(meta.get("url") or ""),
                    "image_format": image_ext,
                    "original_width": int(w),
                    "original_height": int(h),
                    "source": str(path.name),
                }
            )

        try:
            with open(path, "rb", buffering=1 << 20) as f:
                for name, offset, data in iter_tar(f):
                    head, base = os.path.split(name)
                    stem, _, ext = base.partition(".")
                    key = os.path.join(head, stem) if head else stem
                    ext = ext.lower()
                    if key != group["key"] or ext in group["members"]:
                        flush()
                        group["key"] = key
                    group["members"][ext] = (offset, data)
        except (TarFormatError, OSError) as e:
            group["key"], group["members"] = None, {}  # the record being read was cut
            bad.add("truncated tar", str(path), strict, f"after {count[0]} record(s): {e}")
        else:
            flush()
        bar.update(1)
    bar.close()
    dtypes = {"shard": np.int32, "uid": np.uint64, "caption_json": bool}
    arrays = {k: np.asarray(v, dtype=dtypes.get(k, np.int64)) for k, v in out.items()}
    return arrays, rows, bad


def _write_view(
    tmp: Path,
    tars: Sequence[Path],
    transform: ImageTransform,
    source: str,
    key: str,
    strict: bool,
    progress: bool,
) -> dict[str, Any]:
    arrays, rows, bad = _scan(tars, transform, strict, progress)
    uids = int_to_uid(arrays["uid"])
    columns: dict[str, Any] = {"uid": pa.array(uids, pa.string())}
    names = ("key", "source_uid", "caption", "url", "image_format", "source")
    for name in names:
        columns[name] = pa.array([r[name] for r in rows], pa.string())
    for name in ("original_width", "original_height"):
        columns[name] = pa.array([r[name] for r in rows], pa.int64())
    pq.write_table(pa.table(columns), tmp / META_FILE, compression="zstd")
    mode = "grey" if transform.channels == 1 else "RGB"
    info = {
        "format": "jestkit-split",
        "version": FORMAT_VERSION,
        "layout": LAYOUT,
        "view_version": VIEW_VERSION,
        "name": Path(source.split("{")[0].rstrip("/")).name or "source",
        "source": source,
        "key": key,
        "count": len(rows),
        "shards": [str(t) for t in tars],
        "image_size": transform.image_size,
        "in_channels": transform.channels,
        "transform": {
            "image_size": transform.image_size,
            "channels": transform.channels,
            "resize": transform.resize,
            "note": TRANSFORM_NOTE.format(
                mode=mode, resize=transform.resize, size=transform.image_size
            ),
        },
        "fingerprint": fingerprint_uids(arrays["uid"]),
        "skipped": dict(bad.counts),
        "bad_records": bad.to_dict(),
    }
    np.savez(tmp / "index.npz", **arrays)
    with open(tmp / SPLIT_FILE, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info


def open_source(
    source: str | os.PathLike,
    image_size: int,
    channels: int = 3,
    resize: str = "crop",
    out: str | os.PathLike | None = None,
    strict: bool = False,
    progress: bool = False,
) -> Path:
    """A view split folder over an img2dataset source at this image size (made once, reused).

    ``out``: where the view goes (default ``$JESTKIT_CACHE/views/NAME-KEY``, keyed by the tars'
    paths, sizes and mtimes and the transform). An existing view whose key matches is reused, one
    that does not (the tars changed, another size) is rebuilt. Skipped records are counted in
    its ``split.json`` (``skipped``) and warned about once, when the view is made.
    """
    transform = ImageTransform(int(image_size), int(channels), resize)
    tars = expand_source(source)
    key = _stat_key(tars, transform)
    if out is None:
        stem = Path(str(source).split("{")[0].rstrip("/")).name or "source"
        out = views_root() / f"{stem}-{key}"
    out = Path(out)
    split = out / SPLIT_FILE
    if split.is_file():
        try:
            if json.loads(split.read_text(encoding="utf-8")).get("key") == key:
                return out
        except (OSError, ValueError):
            pass
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        info = _write_view(tmp, tars, transform, str(source), key, strict, progress)
        replace_dir(tmp, out)
    except OSError as e:
        raise JestkitError(f"{out}: cannot write the view of {str(source)!r} ({e})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if info["skipped"]:
        warnings.warn(
            f"{source}: {BadRecords.from_dict(info['bad_records']).summary()}",
            BadRecordWarning,
            stacklevel=2,
        )
    return out


def load_view_index(info: dict[str, Any], strict: bool = False) -> SourceIndex:
    """The index of a view (``build_index`` calls this for ``layout: img2dataset`` splits)."""
    d = Path(info["dir"])
    tars = [Path(t) for t in info["shards"]]
    missing = [t for t in tars if not t.is_file()]
    if missing:
        raise JestkitError(f"{d}: shard {str(missing[0])!r} of this view is missing")
    t = info["transform"]
    transform = ImageTransform(int(t["image_size"]), int(t["channels"]), t["resize"])
    check(
        _stat_key(tars, transform) == info.get("key"),
        f"{d}: the tars of {info.get('source')!r} changed since this view was made; open the "
        "source again (e.g. rerun the command) to rebuild it",
    )
    bad = BadRecords.from_dict(info.get("bad_records") or {})
    if strict and bad.total:
        bad.raise_first()
    with np.load(d / "index.npz") as z:
        arrays = {k: z[k] for k in _ARRAYS}
    table = pq.read_table(d / META_FILE)
    meta = {
        name: np.asarray(table.column(name).to_pylist())
        for name in table.column_names
        if name not in ("uid", "caption")
    }
    caption_json = arrays.pop("caption_json")
    return SourceIndex(
        split_dir=d,
        shards=[str(t) for t in tars],
        shape=transform.shape,
        bad=bad,
        meta=meta,
        fingerprint=str(info.get("fingerprint", "")),
        transform=transform,
        caption_json=caption_json,
        **arrays,
    )


def split_for(
    value: str | os.PathLike,
    model: Any = None,
    image_size: int | None = None,
    channels: int | None = None,
    resize: str = "crop",
    progress: bool = False,
) -> Path:
    """``value`` as a split folder: a jestkit split as is, an img2dataset source as a view at the
    model's input size (``model.image_size``/``in_channels``, or the sizes given)."""
    if not is_source(value):
        return Path(value)
    size = image_size or getattr(model, "image_size", None)
    chans = channels or getattr(model, "in_channels", None) or 3
    check(size is not None, f"{str(value)!r}: an img2dataset source needs an image size")
    return open_source(value, int(size), int(chans), resize, progress=progress)


def source_dataset(
    splits: dict[str, str],
    image_size: int,
    channels: int,
    resize: str = "crop",
    progress: bool = False,
) -> Path:
    """A dataset folder (``dataset.json``) whose splits are views of img2dataset sources.

    ``splits``: split name -> source, e.g. ``{"pool": "pool/{00000..00099}.tar", "eval": ...}``.
    What ``data.dir=SOURCE`` (with ``data.eval_dir``) trains on; kept under ``views_root()``.
    """
    from jestkit.data.shards import dataset_fingerprint, write_manifest

    entries = {}
    for name, source in splits.items():
        view = open_source(source, image_size, channels, resize, progress=progress)
        info = json.loads((view / SPLIT_FILE).read_text(encoding="utf-8"))
        entries[name] = {
            "path": str(view),
            "count": info["count"],
            "shards": info["shards"],
            "fingerprint": info["fingerprint"],
            "source": str(source),
        }
    key = hashlib.sha256(
        json.dumps({n: e["path"] for n, e in entries.items()}, sort_keys=True).encode()
    ).hexdigest()[:16]
    out = views_root() / f"dataset-{key}"
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(
        out,
        {
            "format": "jestkit-dataset",
            "version": FORMAT_VERSION,
            "name": "img2dataset",
            "recipe": "user",
            "seed": None,
            "image_size": int(image_size),
            "in_channels": int(channels),
            "classes": [],
            "templates": [],
            "splits": entries,
            "fingerprint": dataset_fingerprint(entries),
            "created_by": "jestkit (img2dataset shards read in place)",
        },
    )
    return out


SPLIT_LAYOUTS["img2dataset"] = load_view_index
