"""Shards on disk: webdataset tars + a parquet sidecar, manifests, and the validated record index.

Layout of one split folder::

    SPLIT/shard-000000.tar ...   webdataset: {uid}.png + {uid}.txt per example (key = uid)
    SPLIT/meta.parquet           one row per example: uid, shard, offset, caption, noise, ...
    SPLIT/split.json             count, shards, image shape, fingerprint (self-describing split)

and of a dataset: ``DIR/dataset.json`` (the manifest) beside its split folders.

Tars are written with webdataset's ``TarWriter`` (fixed mtime, owner and mode, so the same
examples give the same bytes) and stay readable by ``webdataset.WebDataset(...).decode()``.

Readers never trust a shard blindly: :func:`build_index` makes one pass over every shard, checks
each record (PNG structure and CRCs, size, caption present, non-empty and UTF-8, uid well formed
and unique, metadata present), keeps the byte offsets of good records and counts bad ones by
reason. The index is cached next to the shards, keyed by their names, sizes and mtimes. Loaders
then read records by offset (``os.pread``) in any order with bounded memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jestkit.data.transforms import check_png, decode_png
from jestkit.data.uids import (
    combine_fingerprints,
    compute_uid,
    fingerprint_uids,
    int_to_uid,
    is_uid,
    uid_to_int,
)
from jestkit.errors import JestkitError
from jestkit.fsutil import atomic_write, replace_dir

MANIFEST_FILE = "dataset.json"
SPLIT_FILE = "split.json"
META_FILE = "meta.parquet"
SHARD_PATTERN = "shard-{:06d}.tar"
FORMAT_VERSION = 1
INDEX_VERSION = 1
TAR_MTIME = 0  # fixed header fields: the same examples always give the same tar bytes
TAR_OWNER = "jestkit"

# Metadata every example carries (make-shards and prepare alike), with its "none" value.
DEFAULT_META: dict[str, Any] = {
    "noise": "",  # "" = clean, else the noise kind applied (ground truth for diagnostics)
    "noise_detail": "",  # e.g. the kind of image corruption
    "source": "",  # split / recipe origin, e.g. "pool/web-noise"
    "origin": "",  # where the image came from: "fashion-train", "digits", "user", ...
    "label": -1,  # class index, -1 = none
    "n_items": -1,  # objects in the image, -1 = unknown
    "hard_negative_group": -1,  # near-twin group id, -1 = none
    "twin_edit": "",  # how a near-twin differs from its group's first scene
    "dup_group": -1,  # near-duplicate group id, -1 = none
    "items": "",  # scene description: "sneaker@tl/dark/small;bag@br/light/large"
    "swap_from": "",  # caption_swap: uid of the example whose caption was taken
}

# Reasons a record is skipped (the keys of BadRecords.counts).
BAD_REASONS = (
    "corrupt image",
    "wrong image size",
    "missing image",
    "missing caption",
    "empty caption",
    "non-UTF-8 caption",
    "invalid uid",
    "duplicate uid",
    "no metadata",
    "truncated tar",
)


class BadRecordWarning(UserWarning):
    """Records were skipped: the message says how many, why, and where."""


@dataclass
class BadRecords:
    """Skipped records, counted by reason, with the first few ``[where, detail]`` of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[list[str]]] = field(default_factory=dict)
    max_examples: int = 3

    @staticmethod
    def message(reason: str, where: str, detail: str = "") -> str:
        return f"{where}: {reason}" + (f" ({detail})" if detail else "")

    def add(self, reason: str, where: str, strict: bool = False, detail: str = "") -> None:
        """Count one skipped record (``where`` = file and record); ``strict`` raises instead."""
        if strict:
            raise JestkitError(
                self.message(reason, where, detail)
                + " [strict mode; by default it is skipped and counted]"
            )
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append([where, detail])

    def merge(self, other: BadRecords) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            ex = self.examples.setdefault(reason, [])
            ex += other.examples.get(reason, [])[: max(0, self.max_examples - len(ex))]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no records skipped"
        parts = []
        for reason in sorted(self.counts, key=lambda r: -self.counts[r]):
            eg = "; ".join(w + (f" ({d})" if d else "") for w, d in self.examples.get(reason, []))
            parts.append(f"{reason}: {self.counts[reason]} (e.g. {eg})")
        return f"skipped {self.total} record(s): " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BadRecords:
        return cls(counts=dict(d.get("counts", {})), examples=dict(d.get("examples", {})))

    def raise_first(self) -> None:
        """Strict mode over a cached index: raise for the first recorded bad record."""
        for reason, ex in self.examples.items():
            if ex:
                self.add(reason, ex[0][0], strict=True, detail=ex[0][1])


# ---------------------------------------------------------------------------------------------
# writing


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    try:
        atomic_write(path, json.dumps(obj, indent=2) + "\n")
    except OSError as e:
        raise JestkitError(f"{path}: cannot write it ({e})") from e


def _column(values: list[Any], name: str) -> pa.Array:
    sample = next((v for v in values if v is not None), "")
    if isinstance(sample, bool):
        return pa.array([bool(v) if v is not None else False for v in values], pa.bool_())
    if isinstance(sample, (int, np.integer)):
        return pa.array([int(v) if v is not None else -1 for v in values], pa.int64())
    if isinstance(sample, (float, np.floating)):
        return pa.array([float(v) if v is not None else float("nan") for v in values], pa.float64())
    return pa.array(["" if v is None else str(v) for v in values], pa.string())


class SplitWriter:
    """Write one split: rolling webdataset tar shards, ``meta.parquet`` and ``split.json``.

    ``write`` returns False (and counts the reason) for a duplicate uid unless ``strict``, which
    raises. Records are written in call order; uids are computed by the caller (or here when
    ``uid`` is None).
    """

    def __init__(
        self,
        split_dir: str | os.PathLike,
        image_shape: tuple[int, int, int],
        shard_size: int = 5000,
        strict: bool = False,
        name: str | None = None,
    ):
        if not isinstance(shard_size, int) or shard_size < 1:
            raise JestkitError(f"shard_size: must be a positive integer, got {shard_size!r}")
        self.dir = Path(split_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JestkitError(f"{self.dir}: cannot create the split folder ({e})") from e
        self.shape = tuple(int(x) for x in image_shape)
        self.shard_size = shard_size
        self.strict = strict
        self.name = name or self.dir.name
        self.bad = BadRecords()
        self._seen: set[str] = set()
        self._rows: list[dict[str, Any]] = []
        self._shards: list[str] = []
        self._shard_counts: list[int] = []
        self._file: io.BufferedWriter | None = None
        self._tar: Any = None

    def _open_next(self) -> None:
        import webdataset as wds

        self._close_shard()
        name = SHARD_PATTERN.format(len(self._shards))
        try:
            self._file = open(self.dir / name, "wb")  # noqa: SIM115 (stays open across writes)
        except OSError as e:
            raise JestkitError(f"{self.dir / name}: cannot write the shard ({e})") from e
        self._tar = wds.TarWriter(
            self._file, encoder=False, mtime=TAR_MTIME, user=TAR_OWNER, group=TAR_OWNER, mode=0o444
        )
        self._shards.append(name)
        self._shard_counts.append(0)

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._tar = self._file = None

    def write(
        self,
        png: bytes,
        caption: str,
        meta: dict[str, Any] | None = None,
        uid: str | None = None,
        where: str | None = None,
    ) -> bool:
        uid = compute_uid(png, caption) if uid is None else uid
        if uid in self._seen:
            self.bad.add("duplicate uid", f"{where or self.dir}: uid {uid}", self.strict)
            return False
        self._seen.add(uid)
        if self._tar is None or self._shard_counts[-1] >= self.shard_size:
            self._open_next()
        offset = self._tar.tarstream.offset
        try:
            self._tar.write({"__key__": uid, "png": png, "txt": caption.encode("utf-8")})
        except OSError as e:  # e.g. the disk filled up: name the shard being written
            raise JestkitError(
                f"{self.dir / self._shards[-1]}: cannot write the shard ({e})"
            ) from e
        row = {"uid": uid, "index": len(self._rows), "shard": self._shards[-1], "offset": offset}
        row["caption"] = caption
        row.update(meta or {})
        self._rows.append(row)
        self._shard_counts[-1] += 1
        return True

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the last shard, write ``meta.parquet`` and ``split.json``; return the split info."""
        try:
            self._close_shard()
        except OSError as e:
            raise JestkitError(
                f"{self.dir / self._shards[-1]}: cannot finish the shard ({e})"
            ) from e
        keys: list[str] = []
        for row in self._rows:
            keys += [k for k in row if k not in keys]
        table = (
            pa.table({k: _column([r.get(k) for r in self._rows], k) for k in keys})
            if keys
            else pa.table({"uid": pa.array([], pa.string())})
        )
        try:
            pq.write_table(table, self.dir / META_FILE, compression="zstd")
        except OSError as e:
            raise JestkitError(f"{self.dir / META_FILE}: cannot write it ({e})") from e
        info = {
            "format": "jestkit-split",
            "version": FORMAT_VERSION,
            "name": self.name,
            "count": len(self._rows),
            "shards": list(self._shards),
            "shard_counts": list(self._shard_counts),
            "image_size": self.shape[1],
            "in_channels": self.shape[0],
            "fingerprint": fingerprint_uids([r["uid"] for r in self._rows]),
            "skipped": dict(self.bad.counts),
        }
        info.update(extra or {})
        _write_json(self.dir / SPLIT_FILE, info)
        return info


def write_manifest(dataset_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    _write_json(Path(dataset_dir) / MANIFEST_FILE, manifest)


def dataset_fingerprint(splits: dict[str, dict[str, Any]]) -> str:
    return combine_fingerprints({k: v["fingerprint"] for k, v in splits.items()})


def make_tmp_dir(out: Path) -> Path:
    """A fresh hidden ``.OUT.tmp-<pid>`` beside ``out`` to write into before :func:`publish_dir`.

    A folder that cannot be created (read-only, full disk) is a :class:`JestkitError` naming it.
    """
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise JestkitError(f"{out}: cannot write there ({e})") from e
    return tmp


def publish_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Atomically move a finished ``tmp`` folder to ``out`` (replacing it if ``overwrite``)."""
    try:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists() and not overwrite:
            raise JestkitError(f"--out {out}: already exists (pass --overwrite to replace it)")
        replace_dir(tmp, out)
    except OSError as e:
        raise JestkitError(f"--out {out}: cannot move the finished folder there ({e})") from e


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise JestkitError(f"--out {out}: already exists (pass --overwrite to replace it)")


# ---------------------------------------------------------------------------------------------
# reading manifests


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise JestkitError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise JestkitError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(obj, dict):
        raise JestkitError(f"{path}: {what} is not a JSON object")
    return obj


def load_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``DIR/dataset.json``; split paths are made absolute under ``"dir"`` keys."""
    d = Path(dataset_dir)
    path = d / MANIFEST_FILE if d.is_dir() or not d.suffix else d
    if not path.exists():
        raise JestkitError(
            f"{path}: dataset manifest not found (build one with `jestkit prepare --out {d}` "
            "or `jestkit make-shards INPUT --out DIR`)"
        )
    manifest = _read_json(path, "dataset manifest")
    if manifest.get("format") != "jestkit-dataset":
        raise JestkitError(
            f"{path}: not a jestkit dataset manifest (format={manifest.get('format')!r})"
        )
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise JestkitError(
            f"{path}: manifest version {manifest['version']} is newer than this jestkit"
        )
    for split in manifest.get("splits", {}).values():
        split["dir"] = str((path.parent / split["path"]).resolve())
    return manifest


def resolve_split_dir(path: str | os.PathLike) -> Path:
    """A split folder, or a dataset folder holding exactly one split (e.g. make-shards output)."""
    p = Path(path)
    if (p / SPLIT_FILE).exists():
        return p
    if (p / MANIFEST_FILE).exists():
        splits = load_manifest(p).get("splits", {})
        if len(splits) == 1:
            return Path(next(iter(splits.values()))["dir"])
        raise JestkitError(
            f"{p}: a dataset with splits {sorted(splits)}; pass one split folder, e.g. {p / next(iter(splits), 'pool')}"
        )
    if not p.exists():
        raise JestkitError(f"{p}: split folder not found")
    raise JestkitError(
        f"{p}: not a split folder (no {SPLIT_FILE}); build shards with `jestkit prepare` or `jestkit make-shards`"
    )


def read_split_info(split_dir: str | os.PathLike) -> dict[str, Any]:
    d = resolve_split_dir(split_dir)
    info = _read_json(d / SPLIT_FILE, "split info")
    for key in ("count", "shards", "image_size", "in_channels"):
        if key not in info:
            raise JestkitError(f"{d / SPLIT_FILE}: missing field {key!r}")
    info["dir"] = str(d.resolve())
    return info


def read_meta(split_dir: str | os.PathLike) -> pa.Table:
    path = Path(split_dir) / META_FILE
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise JestkitError(f"{path}: metadata sidecar not found") from None
    except (OSError, pa.ArrowException) as e:
        raise JestkitError(f"{path}: cannot read metadata ({e})") from None
    if "uid" not in table.column_names:
        raise JestkitError(f"{path}: no 'uid' column (columns: {table.column_names})")
    return table


def data_fingerprint(split_dirs: Sequence[str | os.PathLike] | str | os.PathLike) -> str:
    """Content fingerprint of one or more splits: sha256 over the sorted union of their uids.

    For one split it equals the ``fingerprint`` in its ``split.json``.
    """
    if isinstance(split_dirs, (str, os.PathLike)):
        split_dirs = [split_dirs]
    parts = [
        uid_to_int(read_meta(resolve_split_dir(d)).column("uid").to_pylist()) for d in split_dirs
    ]
    return fingerprint_uids(np.concatenate(parts) if parts else np.zeros(0, np.uint64))


# ---------------------------------------------------------------------------------------------
# the validated index


@dataclass
class ShardIndex:
    """Byte locations of the good records of a split, in shard-then-tar order.

    ``meta`` holds the sidecar columns aligned with the records (``uid`` and ``caption`` are
    left out: they come from the tar).
    """

    split_dir: Path
    shards: list[str]
    shape: tuple[int, int, int]
    shard: np.ndarray  # int32 [n]
    png_offset: np.ndarray  # int64 [n]
    png_size: np.ndarray
    txt_offset: np.ndarray
    txt_size: np.ndarray
    uid: np.ndarray  # uint64 [n]
    bad: BadRecords
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprint: str = ""
    cache_key: str = ""  # the index cache's key; "" (not cached): read_all decodes every time

    def __post_init__(self) -> None:
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.uid)

    def __getstate__(self) -> dict[str, Any]:  # file descriptors do not cross processes
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def uids(self, rows: np.ndarray | None = None) -> list[str]:
        return int_to_uid(self.uid if rows is None else self.uid[rows])

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors share offsets; reopen
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.split_dir / self.shards[shard], os.O_RDONLY)
        return fd

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _decode(self, row: int, png: bytes, txt: bytes) -> tuple[np.ndarray, str]:
        try:
            return decode_png(png, self.shape, verify=False), txt.decode("utf-8")
        except (ValueError, UnicodeDecodeError) as e:
            where = f"{self.split_dir / self.shards[self.shard[row]]}: record {self.uids([row])[0]}"
            raise JestkitError(
                f"{where}: unreadable although it passed validation ({e}); the shard changed "
                "after it was indexed: delete the .index-*.npz files beside it and retry"
            ) from None

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Images ``uint8 [len(rows), C, H, W]`` and captions of the given records, by offset."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape), np.uint8)
        captions: list[str] = [""] * len(rows)
        po, ps = self.png_offset[rows], self.png_size[rows]
        to, ts = self.txt_offset[rows], self.txt_size[rows]
        lo, hi = np.minimum(po, to), np.maximum(po + ps, to + ts)
        shard = self.shard[rows]
        cols = [a.tolist() for a in (rows, shard, lo, hi, po - lo, ps, to - lo, ts)]
        for k in np.lexsort((lo, shard)).tolist():  # file order: sequential-ish reads
            r, s, a, b, p, pn, t, tn = (c[k] for c in cols)
            buf = os.pread(self._fd(s), b - a, a)
            out[k], captions[k] = self._decode(r, buf[p : p + pn], buf[t : t + tn])
        return out, captions

    def read_captions(self) -> list[str]:
        """Every caption, without decoding images."""
        if (cached := self._cached_captions()) is not None:
            return cached
        out = []
        for s, t, n in zip(
            self.shard.tolist(), self.txt_offset.tolist(), self.txt_size.tolist(), strict=True
        ):
            out.append(os.pread(self._fd(s), n, t).decode("utf-8"))
        return out

    def read_all(self, progress: bool = False) -> tuple[np.ndarray, list[str]]:
        """Every good record: images ``uint8 [n, C, H, W]`` and captions (the in-memory backend).

        A cached index also keeps the decoded split beside it (see :meth:`derived`), so that later
        runs on the same data memory-map it read-only instead of decoding every PNG again, and
        concurrent runs share its pages. A split that cannot be written decodes each time.
        """
        images_path = self.derived("decoded", suffix=".npy")
        if images_path is not None and (cached := self._cached_decoded(images_path)) is not None:
            return cached
        images, captions = self._decode_all(progress)
        if images_path is not None:
            self.save_derived(self.derived("captions", suffix=".json"), json.dumps(captions))
            self.save_derived(images_path, images)
        return images, captions

    def derived(self, kind: str, params: str = "", suffix: str = "") -> Path | None:
        """Where data derived from this split is cached (its decoded images and captions, a
        tokenizer trained on them, their tokens): beside the index, under the index's key and a
        hash of ``params`` (what else the data depends on). None when the index is not cached."""
        if not self.cache_key:
            return None
        tag = hashlib.sha256(params.encode()).hexdigest()[:16]
        return self.split_dir / f".{kind}-{self.cache_key}-{tag}{suffix}"

    def save_derived(self, path: Path | None, data: bytes | str | np.ndarray) -> bool:
        """Write a :meth:`derived` file atomically (an array as ``.npy``) and drop that kind's
        files from older versions of the split (other index keys). False where the split cannot
        be written (read-only, full disk): the caller computes it again next time."""
        if path is None:
            return False
        try:
            if isinstance(data, np.ndarray):
                atomic_write(path, lambda tmp: _save_npy(tmp, data))
            else:
                atomic_write(path, data)
        except OSError:
            return False
        kind = path.name[1:].split(f"-{self.cache_key}-")[0]
        for old in self.split_dir.glob(f".{kind}-*"):
            if not old.name.startswith(f".{kind}-{self.cache_key}-"):
                with contextlib.suppress(OSError):
                    old.unlink()
        return True

    def _cached_decoded(self, images_path: Path) -> tuple[np.ndarray, list[str]] | None:
        images = load_npy(images_path, (len(self), *self.shape), np.uint8, mmap_mode="r")
        if images is None:
            return None
        captions = self._cached_captions()
        return None if captions is None else (images, captions)

    def _cached_captions(self) -> list[str] | None:
        path = self.derived("captions", suffix=".json")
        try:
            captions = json.loads(path.read_text(encoding="utf-8")) if path else None
        except (OSError, ValueError):
            return None
        return captions if isinstance(captions, list) and len(captions) == len(self) else None

    def _decode_all(self, progress: bool) -> tuple[np.ndarray, list[str]]:
        """Decode every good record, one whole-shard read at a time."""
        from tqdm import tqdm

        out = np.empty((len(self), *self.shape), np.uint8)
        captions: list[str] = [""] * len(self)
        bounds = np.searchsorted(self.shard, np.arange(len(self.shards) + 1)).tolist()
        cols = [
            a.tolist() for a in (self.png_offset, self.png_size, self.txt_offset, self.txt_size)
        ]
        bar = tqdm(
            total=len(self),
            desc=f"decode {self.split_dir.name}",
            unit="ex",
            disable=not progress or None,
            leave=False,
        )
        for s in range(len(self.shards)):
            a, b = bounds[s], bounds[s + 1]
            if a == b:
                continue
            with open(self.split_dir / self.shards[s], "rb") as f:
                data = f.read()
            for r in range(a, b):
                p, pn, t, tn = (c[r] for c in cols)
                out[r], captions[r] = self._decode(r, data[p : p + pn], data[t : t + tn])
            bar.update(b - a)
        bar.close()
        return out, captions


def load_npy(
    path: Path | None, shape: tuple[int, ...], dtype: type, mmap_mode: str | None = None
) -> np.ndarray | None:
    """A saved array of this shape and dtype, or None (absent, torn or from another version)."""
    try:
        a = np.load(path, mmap_mode=mmap_mode) if path is not None else None
    except (OSError, ValueError):
        return None
    return a if a is not None and a.shape == shape and a.dtype == dtype else None


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a tmp name
        np.save(f, array)


def _index_key(split_dir: Path, shards: list[str], shape: tuple[int, int, int]) -> str:
    h = hashlib.sha256(repr((INDEX_VERSION, shape)).encode())
    for name in [*shards, META_FILE]:
        try:
            st = os.stat(split_dir / name)
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(f"{name}:missing;".encode())
    return h.hexdigest()[:16]


def _classify(png_error: str) -> str:
    return "wrong image size" if png_error.startswith("wrong image size") else "corrupt image"


class TarFormatError(Exception):
    """A tar that ends early or has a damaged header."""


_ZERO_BLOCK = bytes(512)


def _tar_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def iter_tar(f: io.BufferedReader) -> Iterator[tuple[str, int, bytes]]:
    """``(member name, data offset, data)`` for each regular file of a tar stream.

    A small reader (ustar, GNU long names, pax paths) about 5x faster than :mod:`tarfile` on
    shards of small files; raises :class:`TarFormatError` on truncation or a bad header checksum.
    """
    pos, long_name = 0, None
    while True:
        header = f.read(512)
        if not header:
            return  # no end-of-archive blocks: a cut exactly at a member boundary (caller counts)
        if len(header) < 512:
            raise TarFormatError(f"unexpected end of data in a header at byte {pos}")
        if header == _ZERO_BLOCK:
            return
        stored = _tar_number(header[148:156])
        if stored != sum(header) - sum(header[148:156]) + 8 * 32:
            raise TarFormatError(f"bad header checksum at byte {pos}")
        size = _tar_number(header[124:136])
        data = f.read(size)
        if len(data) < size:
            raise TarFormatError(f"unexpected end of data in a member at byte {pos + 512}")
        pad = -size % 512
        if pad and len(f.read(pad)) < pad:
            raise TarFormatError(f"unexpected end of data after a member at byte {pos + 512}")
        kind = header[156:157]
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind in (b"x", b"g"):
            for line in data.decode("utf-8", "replace").splitlines():
                _, _, kv = line.partition(" ")
                if kv.startswith("path="):
                    long_name = kv[5:]
        elif kind in (b"0", b"\0", b"7"):
            name = long_name or header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if header[257:262] == b"ustar" and not long_name:
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                name = f"{prefix}/{name}" if prefix else name
            yield name, pos + 512, data
            long_name = None
        else:
            long_name = None
        pos += 512 + size + pad


def _scan_shard(
    path: Path,
    shard_id: int,
    shape: tuple[int, int, int],
    expected: int | None,
    seen: set[int],
    bad: BadRecords,
    strict: bool,
    out: dict[str, list[int]],
) -> None:
    """Validate every record of one tar, appending good ones to ``out``."""
    state: dict[str, Any] = {"key": None, "members": {}, "records": 0}

    def flush() -> None:
        key, members = state["key"], state["members"]
        if key is None:
            return
        state["records"] += 1
        where = f"{path}: record {key}"
        state["key"], state["members"] = None, {}
        if "png" not in members:
            return bad.add("missing image", where, strict)
        if "txt" not in members:
            return bad.add("missing caption", where, strict)
        if not is_uid(key):
            return bad.add("invalid uid", where, strict)
        (po, png), (to, txt) = members["png"], members["txt"]
        err = check_png(png, shape)
        if err is not None:
            return bad.add(_classify(err), where, strict, err)
        try:
            caption = txt.decode("utf-8")
        except UnicodeDecodeError as e:
            return bad.add("non-UTF-8 caption", where, strict, f"{e.reason} at byte {e.start}")
        if not caption.strip():
            return bad.add("empty caption", where, strict)
        uid = int(key, 16)
        if uid in seen:
            return bad.add("duplicate uid", where, strict)
        seen.add(uid)
        for name, v in (
            ("shard", shard_id),
            ("png_offset", po),
            ("png_size", len(png)),
            ("txt_offset", to),
            ("txt_size", len(txt)),
            ("uid", uid),
        ):
            out[name].append(v)

    try:
        with open(path, "rb", buffering=1 << 20) as f:
            for name, offset, data in iter_tar(f):
                head, base = os.path.split(name)
                stem, _, ext = base.partition(".")
                key = os.path.join(head, stem) if head else stem
                ext = ext.lower()
                if key != state["key"] or ext in state["members"]:  # a repeated key: a new record
                    flush()
                    state["key"] = key
                state["members"][ext] = (offset, data)
    except (TarFormatError, OSError) as e:
        members = state["members"]
        if not ("png" in members and "txt" in members):
            state["key"], state["members"] = None, {}  # the record being read was cut
        flush()
        bad.add("truncated tar", str(path), strict, f"after {state['records']} record(s): {e}")
        return
    flush()
    if expected is not None and state["records"] < expected:
        detail = f"{state['records']} record(s), split.json says {expected}"
        bad.add("truncated tar", str(path), strict, detail)


def _meta_columns(table: pa.Table, rows: np.ndarray) -> dict[str, np.ndarray]:
    meta = {}
    for name in table.column_names:
        if name in ("uid", "caption"):
            continue
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            arr = np.array(col.to_pylist(), dtype=str)
        else:
            arr = col.to_numpy()
        meta[name] = arr[rows]
    return meta


# Readers of split layouts other than jestkit's own shards, by the split.json "layout" field:
# ``reader(info, strict) -> ShardIndex``. A module that adds a layout registers it here
# (jestkit.data.img2dataset does, on import of jestkit.data), so this module imports none of them.
SPLIT_LAYOUTS: dict[str, Any] = {}


def build_index(
    split_dir: str | os.PathLike, strict: bool = False, cache: bool = True, progress: bool = True
) -> ShardIndex:
    """Validate every record of a split once (cached) and return the index of the good ones.

    Bad records are skipped and counted (a :class:`BadRecordWarning` says how many and why);
    ``strict=True`` raises :class:`JestkitError` at the first one, naming file and record.
    """
    from tqdm import tqdm

    info = read_split_info(split_dir)
    if info.get("layout") in SPLIT_LAYOUTS:  # e.g. a view over standard webdataset shards
        view = SPLIT_LAYOUTS[info["layout"]](info, strict)
        if view.bad.total:
            warnings.warn(f"{view.split_dir}: {view.bad.summary()}", BadRecordWarning, stacklevel=3)
        return view
    d = Path(info["dir"])
    shape = (int(info["in_channels"]), int(info["image_size"]), int(info["image_size"]))
    shards = list(info["shards"])
    missing = [s for s in shards if not (d / s).exists()]
    if missing:
        raise JestkitError(
            f"{d}: shard {missing[0]} listed in {SPLIT_FILE} is missing ({len(missing)} missing)"
        )
    table = read_meta(d)
    meta_uids = uid_to_int(table.column("uid").to_pylist(), name=str(d / META_FILE))
    key = _index_key(d, shards, shape)
    cache_path = d / f".index-{key}.npz"
    arrays: dict[str, np.ndarray] | None = None
    bad = BadRecords()
    if cache and cache_path.exists():
        try:
            with np.load(cache_path) as z:
                arrays = {k: z[k] for k in z.files if k != "bad"}
                bad = BadRecords.from_dict(json.loads(str(z["bad"])))
        except (OSError, ValueError, KeyError):
            arrays = None
    if arrays is None:
        expected = info.get("shard_counts") or [None] * len(shards)
        out: dict[str, list[int]] = {
            k: [] for k in ("shard", "png_offset", "png_size", "txt_offset", "txt_size", "uid")
        }
        seen: set[int] = set()
        bar = tqdm(
            shards, desc=f"index {d.name}", unit="shard", disable=not progress or None, leave=False
        )
        for i, name in enumerate(bar):
            _scan_shard(d / name, i, shape, expected[i], seen, bad, strict, out)
        dtypes = {"shard": np.int32, "uid": np.uint64}
        arrays = {k: np.asarray(v, dtype=dtypes.get(k, np.int64)) for k, v in out.items()}
        # Records without a metadata row are skipped too (the sidecar is the ground truth).
        has_meta = np.isin(arrays["uid"], meta_uids)
        for r in np.flatnonzero(~has_meta):
            bad.add(
                "no metadata",
                f"{d / shards[arrays['shard'][r]]}: record {int_to_uid([arrays['uid'][r]])[0]}",
                strict,
            )
        arrays = {k: v[has_meta] for k, v in arrays.items()}
        if cache:
            try:
                bad_json = np.array(json.dumps(bad.to_dict()))
                atomic_write(cache_path, lambda tmp: np.savez(tmp, bad=bad_json, **arrays))
            except OSError:
                pass  # read-only dataset: index again next time
    elif strict and bad.total:
        bad.raise_first()
    order = np.argsort(meta_uids, kind="stable")
    rows = order[np.searchsorted(meta_uids, arrays["uid"], sorter=order)]
    index = ShardIndex(
        split_dir=d,
        shards=shards,
        shape=shape,
        bad=bad,
        meta=_meta_columns(table, rows),
        fingerprint=fingerprint_uids(arrays["uid"]),
        cache_key=key if cache else "",
        **arrays,
    )
    if bad.total:
        warnings.warn(f"{d}: {bad.summary()}", BadRecordWarning, stacklevel=3)
    return index
