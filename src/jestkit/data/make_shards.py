"""`jestkit make-shards`: your own images and captions -> jestkit shards.

    jestkit make-shards pairs.csv --out data/mine --image-size 64 --channels 3

INPUT is a CSV, TSV, JSONL or parquet file with columns ``image`` (a path, relative to INPUT's
folder unless absolute) and ``caption``, optionally ``label`` (an integer class) and ``uid`` (16 hex
characters; computed from the image and caption otherwise). Other columns are kept, as strings,
in the metadata sidecar. Images of any size and mode are converted by :class:`ImageTransform`.

Output: ``DIR/dataset.json`` and one split folder ``DIR/train/`` (shards, ``meta.parquet``,
``split.json``), the layout `jestkit prepare` writes, so loaders and caches read it the same way
(``SuperBatchLoader("DIR/train", ...)``; ``DIR`` itself is accepted wherever one split is meant).
Bad rows are skipped and counted, and the run ends with one summary line; ``--strict`` stops at
the first bad row instead, naming it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jestkit.data.shards import (
    DEFAULT_META,
    FORMAT_VERSION,
    BadRecords,
    SplitWriter,
    check_out_dir,
    dataset_fingerprint,
    make_tmp_dir,
    publish_dir,
    write_manifest,
)
from jestkit.data.transforms import RESIZE_MODES, ImageTransform, encode_png
from jestkit.data.uids import is_uid
from jestkit.errors import JestkitError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
RESERVED = {"image", "caption", "label", "uid"}


class _BadRow(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | _BadRow]]:
    """``(row number, row)`` for each input row (1-based, header excluded); a row that cannot be
    read at all comes back as a :class:`_BadRow`."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise JestkitError(
            f"INPUT {path}: unknown format {path.suffix!r}; use one of {sorted(FORMATS)}"
        )
    if not path.is_file():
        raise JestkitError(f"INPUT {path}: file not found")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise JestkitError(f"INPUT {path}: cannot read parquet ({e})") from None
        _check_columns(path, table.column_names)
        for i, row in enumerate(table.to_pylist(), 1):
            yield i, row
    elif kind == "jsonl":
        with open(path, "rb") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield i, _BadRow("non-UTF-8 text", f"byte {e.start}")
                    continue
                except ValueError as e:
                    yield i, _BadRow("malformed row", str(e))
                    continue
                if not isinstance(row, dict):
                    yield i, _BadRow("malformed row", "not a JSON object")
                    continue
                yield i, row
    else:
        # surrogateescape keeps undecodable bytes visible, so such a row is counted, not fatal
        # csv's default field limit (128 KiB) would reject an enormous caption mid-file.
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f, delimiter="," if kind == "csv" else "\t")
            _check_columns(path, reader.fieldnames or [])
            i = 0
            try:
                for i, row in enumerate(reader, 1):
                    if None in row:  # more fields than the header
                        yield i, _BadRow("malformed row", f"{len(row[None])} extra field(s)")
                        continue
                    yield i, row
            except csv.Error as e:  # the reader cannot resync after this: stop, naming the row
                raise JestkitError(f"INPUT {path}: row {i + 1}: cannot parse it ({e})") from None


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in ("image", "caption") if c not in columns]
    if missing:
        raise JestkitError(f"INPUT {path}: missing column(s) {missing}; found {columns}")


def _text(value: Any, what: str) -> str:
    if value is None:
        raise _BadRow(f"missing {what}")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _BadRow("non-UTF-8 text", f"{what}, byte {e.start}") from None
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRow("non-UTF-8 text", what) from None
    return value


def user_manifest(
    name: str,
    image_size: int,
    channels: int,
    splits: dict[str, Any],
    options: dict[str, Any],
    **counts: Any,
) -> dict[str, Any]:
    """The manifest of a dataset made from the user's own files (make-shards, pipeline)."""
    from jestkit import __version__

    return {
        "format": "jestkit-dataset",
        "version": FORMAT_VERSION,
        "name": name,
        "recipe": "user",
        "seed": None,
        "image_size": image_size,
        "in_channels": channels,
        "classes": [],
        "templates": [],
        "splits": splits,
        "fingerprint": dataset_fingerprint(splits),
        "options": options,
        **counts,
        "created_by": f"jestkit {__version__}",
    }


def make_shards(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    image_size: int = 56,
    channels: int = 1,
    shard_size: int = 5000,
    strict: bool = False,
    split: str = "train",
    resize: str = "crop",
    overwrite: bool = False,
    progress: bool = True,
    log: Any = None,
) -> tuple[dict[str, Any], BadRecords]:
    """Convert INPUT to shards in ``out``; returns (manifest, skipped records by reason)."""
    log = sys.stderr if log is None else log  # at call time: sys.stderr may have been replaced
    from PIL import Image
    from tqdm import tqdm

    path = Path(input_path)
    transform = ImageTransform(image_size, channels, resize)
    out = Path(out)
    check_out_dir(out, overwrite)
    if not split or "/" in split or split.startswith("."):
        raise JestkitError(f"--split: must be a plain folder name, got {split!r}")
    rows = read_rows(path)  # fails early on a bad INPUT
    first = next(rows, None)
    base = path.parent
    bad = BadRecords()
    said_resize = False
    # Images whose mode is not the output's (grey L / RGB) and images resized: counted, so a
    # caller can say what was done to the data instead of doing it silently.
    native = "L" if channels == 1 else "RGB"
    converted: dict[str, int] = {}
    resized = 0
    tmp = make_tmp_dir(out)  # a JestkitError naming --out if it cannot be written
    try:
        writer = SplitWriter(
            tmp / split, transform.shape, shard_size=shard_size, strict=strict, name=split
        )
        bar = tqdm(desc="make-shards", unit="row", disable=not progress or None)
        all_rows = rows if first is None else _chain(first, rows)
        for number, row in all_rows:
            bar.update(1)
            where = f"{path}: row {number}"
            try:
                if isinstance(row, _BadRow):
                    raise row
                caption = _text(row.get("caption"), "caption")
                if not caption.strip():
                    raise _BadRow("empty caption")
                rel = _text(row.get("image"), "image path").strip()
                if not rel:
                    raise _BadRow("missing image path")
                file = Path(rel) if Path(rel).is_absolute() else base / rel
                if not file.is_file():
                    raise _BadRow("missing file", str(file))
                try:
                    with Image.open(file) as img:
                        img.load()
                        if transform.needs_resize(img) and not said_resize:
                            print(
                                f"make-shards: resizing images to {image_size}x{image_size} ({resize}); e.g. {file} is {img.size[0]}x{img.size[1]}",
                                file=log,
                            )
                            said_resize = True
                        array = transform(img)
                        mode, needs_resize = img.mode, transform.needs_resize(img)
                except Exception as e:  # PIL fails in many ways on broken files: count them all
                    raise _BadRow("unreadable image", f"{file}: {e}") from None
                label = row.get("label")
                try:
                    label = (
                        -1 if label is None or str(label).strip() == "" else int(str(label).strip())
                    )
                except ValueError:
                    raise _BadRow("invalid label", repr(label)) from None
                uid = row.get("uid")
                if uid is not None and str(uid).strip():
                    uid = str(uid).strip().lower()
                    if not is_uid(uid):
                        raise _BadRow("invalid uid", f"{uid!r} is not 16 hex characters")
                else:
                    uid = None
            except _BadRow as e:
                bad.add(e.reason, where, strict, e.detail)
                continue
            meta = {
                **DEFAULT_META,
                "source": f"make-shards:{path.name}",
                "origin": "user",
                "label": label,
            }
            meta["image_path"] = rel
            for k, v in row.items():
                if k not in RESERVED and k is not None:
                    meta[
                        f"user_{k}" if k in meta or k in ("uid", "index", "shard", "offset") else k
                    ] = "" if v is None else str(v)
            writer.bad = bad  # one tally: duplicate uids are counted with the rest
            if writer.write(encode_png(array), caption, meta, uid=uid, where=where):
                if mode != native:
                    converted[mode] = converted.get(mode, 0) + 1
                resized += needs_resize
        bar.close()
        info = writer.close(extra={"input": str(path)})
        if info["count"] == 0:
            raise JestkitError(f"INPUT {path}: no usable rows ({bad.summary()})")
        splits = {
            split: {
                "path": split,
                "count": info["count"],
                "shards": info["shards"],
                "fingerprint": info["fingerprint"],
            }
        }
        manifest = user_manifest(
            path.stem,
            image_size,
            channels,
            splits,
            {"input": str(path), "resize": resize, "shard_size": shard_size},
            skipped=dict(bad.counts),
            converted=dict(sorted(converted.items())),  # source mode -> images converted
            resized=resized,
        )
        write_manifest(tmp, manifest)
        publish_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, bad


def describe_converted(converted: dict[str, int], channels: int) -> str:
    """'converted 5 image(s) to RGB (L 3, RGBA 2)', modes as PIL names them."""
    target = "grey (L)" if channels == 1 else "RGB"
    parts = ", ".join(f"{mode} {n}" for mode, n in sorted(converted.items()))
    return f"converted {sum(converted.values())} image(s) to {target} ({parts})"


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="CSV, TSV, JSONL or parquet with columns image, caption [, label, uid]",
    )
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument(
        "--image-size", type=int, default=56, help="square output size (default 56)"
    )
    parser.add_argument(
        "--channels", type=int, default=1, choices=(1, 3), help="1 = grey, 3 = RGB (default 1)"
    )
    parser.add_argument(
        "--resize",
        default="crop",
        choices=RESIZE_MODES,
        help="crop (shorter side + centre crop), stretch or pad",
    )
    parser.add_argument(
        "--shard-size", type=int, default=5000, help="examples per tar shard (default 5000)"
    )
    parser.add_argument("--split", default="train", help="split folder name (default train)")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad row instead of skipping it"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    manifest, bad = make_shards(
        args.input, args.out, image_size=args.image_size, channels=args.channels,
        shard_size=args.shard_size, strict=args.strict, split=args.split, resize=args.resize,
        overwrite=args.overwrite, progress=not args.quiet,
    )  # fmt: skip
    split = manifest["splits"][args.split]
    skipped = (
        ", ".join(f"{r} {n}" for r, n in sorted(bad.counts.items(), key=lambda x: -x[1]))
        if bad.total
        else "none"
    )
    converted = (
        f", {describe_converted(manifest['converted'], args.channels)}"
        if manifest["converted"]
        else ""
    )
    print(
        f"make-shards: wrote {split['count']} record(s) to {Path(args.out) / args.split} in "
        f"{len(split['shards'])} shard(s), skipped {bad.total} ({skipped}){converted} in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    if bad.total:
        for reason, where in bad.examples.items():
            print(f"  {reason}: e.g. {where[0]}", file=sys.stderr)
    return 0
