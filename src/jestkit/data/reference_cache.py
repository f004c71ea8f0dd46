"""The reference cache: a frozen reference model's embeddings of every example, keyed by uid.

The reference never changes during learner training, so its image and text embeddings (and its
``t``, ``c``) are computed once over the data (JEST's Flexi-JEST, section 4): a super-batch's
reference pair losses are then one matrix product, with no reference forward pass per step.

    jestkit cache-ref --model runs/reference/model --shards data/fashion/pool --out runs/ref-cache

Layout (written atomically: temporary folder, then rename)::

    CACHE/uids.npy     uint64 [n], sorted (np.searchsorted finds a super-batch's rows)
    CACHE/image.npy    float16 [n, d], rows in uid order (memory-mapped on open)
    CACHE/text.npy     float16 [n, d]
    CACHE/meta.json    scale t = exp(logit_scale), bias c, embed_dim, model and data fingerprints

A cache is refused (with a message saying how to rebuild it) when the caller's model or data
fingerprint differs from the one it was built for.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jestkit.data.loader import iter_split
from jestkit.data.shards import (
    build_index,
    check_out_dir,
    data_fingerprint,
    publish_dir,
    read_split_info,
    resolve_split_dir,
)
from jestkit.data.uids import fingerprint_uids, int_to_uid, uid_to_int
from jestkit.devices import model_device
from jestkit.errors import JestkitError

CACHE_FORMAT = "jestkit-reference-cache"
CACHE_VERSION = 1
FILES = ("meta.json", "uids.npy", "image.npy", "text.npy")


class ReferenceCache:
    """Memory-mapped reference embeddings; :meth:`lookup` turns uids into ``scoring.Embeddings``."""

    def __init__(
        self,
        path: Path,
        uids: np.ndarray,
        image: np.ndarray,
        text: np.ndarray,
        meta: dict[str, Any],
    ):
        self.path, self.uids, self.image, self.text, self.meta = path, uids, image, text, meta

    # -- properties -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def count(self) -> int:
        return len(self.uids)

    @property
    def scale(self) -> float:
        return float(self.meta["scale"])

    @property
    def bias(self) -> float:
        return float(self.meta["bias"])

    @property
    def embed_dim(self) -> int:
        return int(self.meta["embed_dim"])

    @property
    def model_fingerprint(self) -> str:
        return str(self.meta["model_fingerprint"])

    @property
    def data_fingerprint(self) -> str:
        return str(self.meta["data_fingerprint"])

    @property
    def forward_flops_per_example(self) -> int:
        """The reference's forward FLOPs per example (image + text) when building the cache."""
        f = self.meta.get("forward_flops") or {}
        return int(f.get("image", 0)) + int(f.get("text", 0))

    def __contains__(self, uid: str) -> bool:
        i = uid_to_int([uid])
        pos = int(np.searchsorted(self.uids, i)[0])
        return pos < len(self.uids) and self.uids[pos] == i[0]

    def covers(self, split_dir: str | os.PathLike) -> bool:
        """True when the cache was built over exactly this split's content (by fingerprint)."""
        fp = read_split_info(split_dir).get("fingerprint")
        return fp in {s["fingerprint"] for s in self.meta.get("splits", [])}

    def __repr__(self) -> str:
        return f"ReferenceCache({str(self.path)!r}, n={len(self)}, d={self.embed_dim}, t={self.scale:.3g}, c={self.bias:.3g})"

    # -- lookup ---------------------------------------------------------------------------------

    def rows(self, uids: Sequence[str]) -> np.ndarray:
        """Row of each uid (vectorised); a missing uid raises naming it."""
        ids = uid_to_int(uids)
        pos = np.minimum(np.searchsorted(self.uids, ids), max(len(self.uids) - 1, 0))
        found = self.uids[pos] == ids if len(self.uids) else np.zeros(len(ids), bool)
        if not found.all():
            missing = np.flatnonzero(~found)
            examples = ", ".join(str(uids[i]) for i in missing[:3])
            raise JestkitError(
                f"reference cache {self.path}: uid {examples} not in the cache ({len(missing)} of "
                f"{len(ids)} missing); it was built over other data: rebuild it with "
                "`jestkit cache-ref --shards SPLIT ...` over the split you train on"
            )
        return pos

    def lookup(self, uids: Sequence[str], device: torch.device | str | None = None):
        """``scoring.Embeddings`` (float32, on ``device``) of the reference for these uids."""
        from jestkit.scoring import Embeddings

        rows = self.rows(uids)
        image = torch.from_numpy(self.image[rows].astype(np.float32))
        text = torch.from_numpy(self.text[rows].astype(np.float32))
        if device is not None:
            image, text = image.to(device), text.to(device)
        return Embeddings(image=image, text=text, scale=self.scale, bias=self.bias)

    # -- open / write / build -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model_fingerprint: str | None = None,
        data_fingerprint: str | None = None,
    ) -> ReferenceCache:
        """Open a cache (memory-mapped). A given fingerprint that does not match is refused.

        ``data_fingerprint`` may be the fingerprint of all the data the cache was built over or of
        any one of its splits (``jestkit.data.data_fingerprint(split_dir)``).
        """
        path = Path(path)
        for name in FILES:
            if not (path / name).is_file():
                raise JestkitError(
                    f"reference cache {path}: {name} is missing (not a cache, or an interrupted "
                    "build): build it with `jestkit cache-ref --model REF --shards SPLIT --out CACHE`"
                )
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            uids = np.load(path / "uids.npy", mmap_mode="r")
            image = np.load(path / "image.npy", mmap_mode="r")
            text = np.load(path / "text.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise JestkitError(f"reference cache {path}: cannot read it ({e})") from None
        if meta.get("format") != CACHE_FORMAT or int(meta.get("version", 0)) > CACHE_VERSION:
            raise JestkitError(
                f"reference cache {path}: unknown format {meta.get('format')!r} version {meta.get('version')!r}"
            )
        n, d = int(meta["count"]), int(meta["embed_dim"])
        if uids.shape != (n,) or image.shape != (n, d) or text.shape != (n, d):
            raise JestkitError(
                f"reference cache {path}: arrays {uids.shape}, {image.shape}, {text.shape} do not "
                f"match meta.json (count={n}, embed_dim={d}); rebuild it"
            )
        cache = cls(path, np.asarray(uids), image, text, meta)
        if model_fingerprint is not None and model_fingerprint != cache.model_fingerprint:
            raise JestkitError(
                f"reference cache {path} was built for model {cache.model_fingerprint[:16]}, not "
                f"{model_fingerprint[:16]} (stale or another reference): rebuild it with "
                "`jestkit cache-ref --model REF_DIR ...`"
            )
        if data_fingerprint is not None:
            known = {cache.data_fingerprint} | {s["fingerprint"] for s in meta.get("splits", [])}
            if data_fingerprint not in known:
                raise JestkitError(
                    f"reference cache {path} was built over data {cache.data_fingerprint} (splits "
                    f"{[s['path'] for s in meta.get('splits', [])]}), not {data_fingerprint}: the "
                    "shards changed or are another dataset; rebuild it with `jestkit cache-ref`"
                )
        return cache

    @classmethod
    def write(
        cls,
        out: str | os.PathLike,
        uids: Sequence[str] | np.ndarray,
        image: np.ndarray | torch.Tensor,
        text: np.ndarray | torch.Tensor,
        scale: float,
        bias: float,
        model_fingerprint: str,
        data_fingerprint: str | None = None,
        splits: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> ReferenceCache:
        """Store embeddings computed elsewhere (any model): sorted by uid, float16, atomically."""
        out = Path(out)
        check_out_dir(out, overwrite)
        ids = (
            uids
            if isinstance(uids, np.ndarray) and uids.dtype == np.uint64
            else uid_to_int(list(uids))
        )
        image = (
            image.detach().float().cpu().numpy()
            if isinstance(image, torch.Tensor)
            else np.asarray(image)
        )
        text = (
            text.detach().float().cpu().numpy()
            if isinstance(text, torch.Tensor)
            else np.asarray(text)
        )
        if image.ndim != 2 or image.shape != text.shape or len(ids) != len(image):
            raise JestkitError(
                f"embeddings: expected image and text [n, d] for n={len(ids)} uids, got {image.shape} and {text.shape}"
            )
        if not (np.isfinite(image).all() and np.isfinite(text).all()):
            raise JestkitError("embeddings: non-finite values; the reference model is broken")
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            dup = int_to_uid([ids[1:][ids[1:] == ids[:-1]][0]])[0]
            raise JestkitError(f"uids: {dup} appears twice")
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "count": len(ids),
            "embed_dim": int(image.shape[1]),
            "dtype": "float16",
            "scale": float(scale),
            "bias": float(bias),
            "model_fingerprint": str(model_fingerprint),
            "data_fingerprint": data_fingerprint or fingerprint_uids(ids),
            "splits": splits or [],
            **(extra or {}),
        }
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            np.save(tmp / "uids.npy", ids)
            np.save(tmp / "image.npy", image[order].astype(np.float16))
            np.save(tmp / "text.npy", text[order].astype(np.float16))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            publish_dir(tmp, out, overwrite=True)
        except OSError as e:  # a full disk or read-only folder: say which cache, leave no debris
            shutil.rmtree(tmp, ignore_errors=True)
            raise JestkitError(f"reference cache {out}: cannot write it ({e})") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(out)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: Any,
        tokenizer: Any,
        split_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
        out: str | os.PathLike,
        batch_size: int = 512,
        device: torch.device | str | None = None,
        patch_size: int | None = None,
        model_fingerprint: str | None = None,
        overwrite: bool = False,
        strict: bool = False,
        progress: bool = True,
    ) -> ReferenceCache:
        """Run the reference (eval mode, no grad, full resolution unless ``patch_size``) over every
        example of ``split_dirs`` and store its embeddings.

        ``device`` defaults to the model's. ``model_fingerprint`` defaults to
        :func:`jestkit.models.model_fingerprint` (pass one for a model from elsewhere).
        """
        from jestkit.models.embed import embed
        from jestkit.progress import progress_bar

        if isinstance(split_dirs, (str, os.PathLike)):
            split_dirs = [split_dirs]
        if not split_dirs:
            raise JestkitError("split_dirs: no split to cache")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise JestkitError(f"batch_size: must be a positive integer, got {batch_size!r}")
        out = Path(out)
        check_out_dir(out, overwrite)
        if model_fingerprint is None:
            from jestkit.models import model_fingerprint as fingerprint_of

            model_fingerprint = fingerprint_of(model)
        device = torch.device(device) if device is not None else model_device(model)
        splits = [resolve_split_dir(d) for d in split_dirs]
        infos = [read_split_info(d) for d in splits]
        for d, info in zip(splits, infos, strict=True):
            if getattr(model, "resizes_images", False):  # a py: factory model resizes its input
                break
            shape = (info["in_channels"], info["image_size"])
            want = (getattr(model, "in_channels", shape[0]), getattr(model, "image_size", shape[1]))
            if shape != want:
                raise JestkitError(
                    f"{d}: images are {shape[0]}x{shape[1]}x{shape[1]}, the reference model takes "
                    f"{want[0]}x{want[1]}x{want[1]} (in_channels x image_size^2)"
                )
        total = sum(len(build_index(d, strict=strict, progress=False)) for d in splits)
        was_training = model.training
        model.eval()
        ids, images, texts = [], [], []
        seen: set[str] = set()
        bar = progress_bar(total=total, desc="cache-ref", unit="ex", disable=not progress)
        try:
            for d in splits:
                for sb in iter_split(d, batch_size, strict=strict):
                    keep = [
                        i for i, u in enumerate(sb.uids) if u not in seen
                    ]  # shared across splits
                    seen.update(sb.uids)
                    bar.update(len(sb))
                    if not keep:
                        continue
                    if len(keep) < len(sb):
                        sb = sb.index(keep)
                    e = embed(
                        model, sb.images, tokenizer(sb.captions), patch_size=patch_size,
                        device=device, validate=False,
                    )  # fmt: skip
                    images.append(e.image.cpu().numpy())
                    texts.append(e.text.cpu().numpy())
                    ids.append(uid_to_int(sb.uids))
        finally:
            bar.close()
            model.train(was_training)
        split_meta = [
            {
                "path": str(d),
                "fingerprint": info.get("fingerprint", ""),
                "count": int(info["count"]),
            }
            for d, info in zip(splits, infos, strict=True)
        ]
        extra: dict[str, Any] = {"patch_size": patch_size, "created_by": "jestkit cache-ref"}
        try:
            from jestkit.flops import forward_flops

            extra["forward_flops"] = forward_flops(model, patch_size=patch_size)
        except Exception:  # a model from elsewhere: FLOPs unknown
            extra["forward_flops"] = None
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            extra["model_config"] = config.to_dict()
        data_fp = data_fingerprint(splits)
        return cls.write(
            out,
            np.concatenate(ids) if ids else np.zeros(0, np.uint64),
            np.concatenate(images) if images else np.zeros((0, 0), np.float32),
            np.concatenate(texts) if texts else np.zeros((0, 0), np.float32),
            scale=float(model.logit_scale.detach().exp()),
            bias=float(model.logit_bias.detach()),
            model_fingerprint=model_fingerprint,
            data_fingerprint=data_fp,
            splits=split_meta,
            extra=extra,
            overwrite=overwrite,
        )


# ---------------------------------------------------------------------------------------------
# CLI: jestkit cache-ref


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="reference model folder (export or checkpoint) or py:package.module:function",
    )
    parser.add_argument(
        "--shards",
        nargs="+",
        required=True,
        metavar="SPLIT_DIR",
        help="split folders, or img2dataset shards: a folder of .tar or 'pool/{00000..00123}.tar'",
    )
    parser.add_argument("--out", required=True, help="cache folder to create")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--patch-size", type=int, help="image patch size (default: the model's full resolution)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad record instead of skipping it"
    )
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from jestkit.models import load_pretrained

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise JestkitError(f"--device: unknown device {args.device!r}") from None
    t0 = time.perf_counter()
    from jestkit.data.img2dataset import split_for

    model, tokenizer = load_pretrained(args.model, device=device)
    # img2dataset shards (folder or brace pattern) are read in place, at the model's input size.
    shards = [split_for(s, model, progress=not args.quiet) for s in args.shards]
    cache = ReferenceCache.build(
        model, tokenizer, shards, args.out, batch_size=args.batch_size, device=device,
        patch_size=args.patch_size, overwrite=args.overwrite, strict=args.strict, progress=not args.quiet,
    )  # fmt: skip
    if not args.quiet:
        print(
            f"cached {len(cache)} examples ({cache.embed_dim}-d, t={cache.scale:.4g}, c={cache.bias:.4g}) in {args.out} in {time.perf_counter() - t0:.1f}s"
        )
    return 0
