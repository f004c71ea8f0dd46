"""Stage 1: the inputs as shards at the model's image size, OUT/data/dataset.json over them,
the overlap and size checks, and the zero-shot classes of EVAL.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jestkit.errors import check
from jestkit.pipeline.inputs import Input
from jestkit.pipeline.options import PipelineOptions, model_config
from jestkit.pipeline.util import say, warn

_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _detect_colour(inp: Input, limit: int = 2000) -> bool:
    """True if any of the first `limit` images of a table input is in a colour mode."""
    from PIL import Image

    from jestkit.data.make_shards import read_rows

    for i, (_, row) in enumerate(read_rows(inp.path)):
        if i >= limit:
            break
        if not isinstance(row, dict) or not row.get("image"):
            continue
        file = Path(str(row["image"]).strip())
        file = file if file.is_absolute() else inp.path.parent / file
        try:
            with Image.open(file) as img:
                if img.mode in _COLOUR_MODES:
                    return True
        except Exception:  # unreadable: make-shards skips and counts it
            continue
    return False


def _target_channels(inputs: dict[str, Input], out: Path, opts: PipelineOptions) -> int:
    if opts.channels is not None:
        return opts.channels
    for inp in inputs.values():
        done = out / "data" / inp.name / "dataset.json"
        if done.is_file():
            if json.loads(done.read_text(encoding="utf-8")).get("in_channels") == 3:
                return 3
        elif inp.kind == "img2dataset":
            return 3  # web images (JPEG/PNG/WebP): colour
        elif inp.kind == "shards":
            if int(inp.info["in_channels"]) == 3:
                return 3
        elif _detect_colour(inp):
            return 3
    return 1


def _reshard(
    inp: Input, dest: Path, image_size: int, channels: int, resize: str, progress: bool
) -> dict[str, Any]:
    """Shards of another size or channel count -> `dest` at ours (uids and metadata kept)."""
    from PIL import Image
    from tqdm import tqdm

    from jestkit.data.make_shards import user_manifest
    from jestkit.data.shards import (
        SplitWriter,
        build_index,
        publish_dir,
        read_meta,
        write_manifest,
    )
    from jestkit.data.transforms import ImageTransform, encode_png

    transform = ImageTransform(image_size, channels, resize)
    index = build_index(inp.split_dir, progress=False)
    table = read_meta(inp.split_dir)
    drop = {"uid", "index", "shard", "offset", "caption"}
    meta = {r["uid"]: {k: v for k, v in r.items() if k not in drop} for r in table.to_pylist()}
    src_c, src_s = index.shape[0], index.shape[1]
    mode = "L" if src_c == 1 else "RGB"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        writer = SplitWriter(tmp / "train", transform.shape, name="train")
        uids = index.uids()
        bar = tqdm(
            total=len(index), desc=f"convert {inp.name}", unit="ex", disable=not progress or None
        )
        for start in range(0, len(index), 1024):
            rows = np.arange(start, min(len(index), start + 1024))
            images, captions = index.read(rows)
            for r, arr, caption in zip(rows.tolist(), images, captions, strict=True):
                pil = Image.fromarray(arr[0] if src_c == 1 else arr.transpose(1, 2, 0), mode=mode)
                png = encode_png(transform(pil))
                writer.write(png, caption, meta.get(uids[r], {}), uid=uids[r])
            bar.update(len(rows))
        bar.close()
        info = writer.close(extra={"input": str(inp.split_dir)})
        splits = {
            "train": {
                "path": "train",
                "count": info["count"],
                "shards": info["shards"],
                "fingerprint": info["fingerprint"],
            }
        }
        manifest = user_manifest(
            inp.name,
            image_size,
            channels,
            splits,
            {"input": str(inp.split_dir), "resize": resize},
            skipped={},
            converted={mode: info["count"]} if src_c != channels else {},
            resized=info["count"] if src_s != image_size else 0,
            resized_from=f"{src_s}x{src_s}",
        )
        write_manifest(tmp, manifest)
        publish_dir(tmp, dest, overwrite=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def prepare_data(
    inputs: dict[str, Input], out: Path, opts: PipelineOptions, warnings: list[str]
) -> tuple[Path, str]:
    """Stage 1: every input as shards at the model's size; OUT/data/dataset.json over them.

    Returns (the dataset folder, "done" | "skipped").
    """
    from jestkit.data.make_shards import describe_converted, make_shards
    from jestkit.data.shards import read_split_info

    model_cfg = model_config(opts)
    size = model_cfg.image_size
    channels = _target_channels(inputs, out, opts)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    converted: dict[str, int] = {}
    resized, total, example = 0, 0, ""
    status = "skipped"
    for inp in inputs.values():
        dest = data / inp.name
        in_place = (
            inp.kind == "shards"
            and int(inp.info["image_size"]) == size
            and int(inp.info["in_channels"]) == channels
        )
        if in_place:
            pass
        elif (dest / "dataset.json").is_file():  # converted by an earlier run
            inp.split_dir = dest / "train"
            skipped = json.loads((dest / "dataset.json").read_text(encoding="utf-8"))
            skipped = skipped.get("skipped") or {}
            if skipped:
                reasons = ", ".join(f"{r}: {n}" for r, n in sorted(skipped.items()))
                n = sum(skipped.values())
                warn(
                    f"--{inp.name} {inp.arg}: {n} row(s) skipped in conversion ({reasons})",
                    warnings,
                )
        elif inp.kind == "img2dataset":  # read in place: a view at the model's size, no copy
            from jestkit.data.img2dataset import open_source

            before = (dest / "train" / "split.json").is_file()
            view = open_source(
                inp.arg, size, channels, opts.resize, out=dest / "train", progress=opts.progress
            )
            status = "done" if not before else status
            inp.split_dir = view
            info = read_split_info(view)
            if info.get("skipped"):
                from jestkit.data.shards import BadRecords

                bad = BadRecords.from_dict(info.get("bad_records") or {})
                warn(f"--{inp.name} {inp.arg}: {bad.summary()}", warnings)
            say(
                f"  {inp.name}: img2dataset shards read in place; {info['transform']['note']}",
                not opts.progress,
            )
        else:
            status = "done"
            if inp.kind == "file":
                log = io.StringIO()
                manifest, bad = make_shards(
                    inp.path, dest, image_size=size, channels=channels, resize=opts.resize,
                    progress=opts.progress, log=log,
                )  # fmt: skip
                if bad.total:
                    warn(f"--{inp.name} {inp.arg}: {bad.summary()}", warnings)
                said = log.getvalue()
                if not example and "e.g. " in said:
                    example = said.split("e.g. ", 1)[1].strip()
            else:
                manifest = _reshard(inp, dest, size, channels, opts.resize, opts.progress)
                if not example and manifest["resized"]:
                    example = f"{inp.arg} is {manifest['resized_from']}"
            for mode, n in manifest.get("converted", {}).items():
                converted[mode] = converted.get(mode, 0) + n
            resized += int(manifest.get("resized", 0))
            total += int(manifest["splits"]["train"]["count"])
            inp.split_dir = dest / "train"
        info = read_split_info(inp.split_dir)
        inp.count, inp.info = int(info["count"]), info
    if resized:
        # Said once for all inputs (make-shards would say it once per input).
        print(
            f"pipeline: resized {resized} of {total} image(s) to {size}x{size} ({opts.resize}) "
            f"for --model {opts.model}" + (f"; e.g. {example}" if example else "")
        )
    if converted:
        print(f"pipeline: {describe_converted(converted, channels)}")
    _write_dataset_manifest(data, inputs, size, channels)
    return data, status


def _write_dataset_manifest(data: Path, inputs: dict[str, Input], size: int, channels: int) -> None:
    from jestkit.data.shards import FORMAT_VERSION, dataset_fingerprint, write_manifest

    splits = {}
    for name, inp in inputs.items():
        d = Path(inp.split_dir).resolve()
        try:
            rel = str(d.relative_to(data.resolve()))
        except ValueError:
            rel = str(d)
        splits[name] = {
            "path": rel,
            "count": inp.count,
            "shards": list(inp.info["shards"]),
            "fingerprint": inp.info.get("fingerprint", ""),
        }
    write_manifest(
        data,
        {
            "format": "jestkit-dataset",
            "version": FORMAT_VERSION,
            "name": "pipeline",
            "recipe": "user",
            "seed": None,
            "image_size": size,
            "in_channels": channels,
            "classes": [],
            "templates": [],
            "splits": splits,
            "fingerprint": dataset_fingerprint(splits),
            "created_by": "jestkit pipeline",
        },
    )


def _image_hashes(split_dir: Path) -> np.ndarray:
    """uint64 hash of every record's PNG bytes (equal pixels give equal bytes after conversion)."""
    from jestkit.data.shards import build_index

    index = build_index(split_dir, progress=False)
    out = np.empty(len(index), np.uint64)
    bounds = np.searchsorted(index.shard, np.arange(len(index.shards) + 1)).tolist()
    for s, name in enumerate(index.shards):
        a, b = bounds[s], bounds[s + 1]
        if a == b:
            continue
        blob = (index.split_dir / name).read_bytes()
        for r in range(a, b):
            o, n = int(index.png_offset[r]), int(index.png_size[r])
            out[r] = int.from_bytes(hashlib.blake2b(blob[o : o + n], digest_size=8).digest(), "big")
    return out


def check_data(inputs: dict[str, Input], warnings: list[str]) -> None:
    """Warn about data that would make the results misleading (overlaps, sizes)."""
    from jestkit.data.shards import read_meta
    from jestkit.data.uids import uid_to_int

    pool, curated, ev = inputs["pool"], inputs["curated"], inputs["eval"]
    if curated.count > pool.count:
        warn(
            f"CURATED ({curated.count} examples) is larger than POOL ({pool.count}): JEST expects "
            "a small curated set to steer selection from a larger pool; compare the reference's "
            "metrics with the learner's in the report",
            warnings,
        )
    uids = {
        n: uid_to_int(read_meta(i.split_dir).column("uid").to_pylist()) for n, i in inputs.items()
    }
    images = {n: _image_hashes(i.split_dir) for n, i in inputs.items()}
    for other, why in (
        ("pool", "every run trains on them, so the eval metrics flatter every run"),
        ("curated", "the reference trains on them, so its eval metrics are flattered"),
    ):
        same_image = int(np.isin(images["eval"], images[other]).sum())
        if same_image:
            same_pair = int(np.isin(uids["eval"], uids[other]).sum())
            warn(
                f"EVAL overlaps {other.upper()}: {same_image} of {ev.count} EVAL examples have an "
                f"image that is also in {other.upper()} ({same_pair} with the same caption too); "
                f"{why}. Remove them from EVAL for an honest evaluation",
                warnings,
            )


def zeroshot_classes(ev: Input, opts: PipelineOptions, warnings: list[str]) -> list[str] | None:
    """Class names for zero-shot on EVAL, or None when EVAL has no labels (or no names)."""
    from jestkit.data.shards import read_meta

    table = read_meta(ev.split_dir)
    if "label" not in table.column_names:
        return None
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    labels = labels[labels >= 0]
    if len(labels) == 0:
        return None
    top = int(labels.max())
    if opts.classes:
        check(
            top < len(opts.classes),
            f"--classes names {len(opts.classes)} classes but EVAL has label {top}",
        )
        return list(opts.classes)
    names: dict[int, str] = {}
    if "class_name" in table.column_names:
        all_labels = table.column("label").to_pylist()
        for label, name in zip(all_labels, table.column("class_name").to_pylist(), strict=True):
            if label is None or int(label) < 0 or not name:
                continue
            old = names.setdefault(int(label), str(name))
            check(
                old == str(name),
                f"--eval {ev.arg}: label {label} is called both {old!r} and {name!r} in its "
                "class_name column",
            )
    if names:
        missing = [i for i in range(top + 1) if i not in names]
        if missing:
            warn(
                f"EVAL has no class_name for label(s) {missing[:10]}: named by their number",
                warnings,
            )
        return [names.get(i, str(i)) for i in range(top + 1)]
    parent = Path(ev.split_dir).parent / "dataset.json"  # a split of a prepared dataset
    if parent.is_file():
        classes = json.loads(parent.read_text(encoding="utf-8")).get("classes") or []
        if len(classes) > top:
            return list(classes)
    warn(
        "EVAL has labels but no class names: pass --classes (names in label order) or add a "
        "class_name column for zero-shot classification; skipped",
        warnings,
    )
    return None


def add_zeroshot(data: Path, classes: list[str] | None, templates: tuple[str, ...]) -> None:
    """Point the manifest's `zeroshot` split at EVAL, with class names and prompt templates."""
    from jestkit.data.shards import load_manifest, write_manifest

    manifest = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    load_manifest(data)  # validates
    if classes:
        manifest["splits"]["zeroshot"] = dict(manifest["splits"]["eval"])
        manifest["classes"], manifest["templates"] = list(classes), list(templates)
    write_manifest(data, manifest)
