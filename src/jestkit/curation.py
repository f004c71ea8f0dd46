"""Offline curation: per-example scores as a parquet sidecar, and the uids of the kept examples.

For users who cannot change their training loop (DataComp-style filtering)::

    jestkit score --model runs/reference/model --shards data/mine/pool --out scores.parquet
    jestkit score --model REF --learner runs/learner/model --shards POOL --out scores.parquet
    jestkit filter scores.parquet --keep-fraction 0.2 --out keep.npy

``score`` writes one row per example, sorted by uid: ``uid`` (16 hex characters), ``reference_loss``
(the reference's sigmoid loss of the example's own image-caption pair, ``L_ref[i, i]``) and
``easy_reference = -reference_loss``; with ``--learner`` also ``learner_loss`` and
``learnability = learner_loss - reference_loss``. These are the *diagonal* of JEST's score matrices:
per-example scores computed once, not joint, and blind to how the learner changes as it trains.

``filter`` keeps the top ``ceil(P * n)`` examples by a score (ties broken by uid) and writes their
uids, sorted, as ``np.uint64`` (``jestkit.data.uid_to_int``; order-preserving, so this is also the
hex-string order) or, with ``--format hex``, as 16-character strings. :func:`load_uids` reads both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from jestkit.data import (
    build_index,
    int_to_uid,
    iter_split,
    read_split_info,
    resolve_split_dir,
    uid_to_int,
)
from jestkit.devices import resolve_device
from jestkit.errors import JestkitError
from jestkit.fsutil import atomic_write
from jestkit.losses import sigmoid_positive_losses
from jestkit.models.embed import embed

__all__ = [
    "SCORE_COLUMNS",
    "filter_scores",
    "keep_count",
    "load_uids",
    "read_scores",
    "score_splits",
    "write_scores",
    "write_uids",
]

SCORES_FORMAT = "jestkit-scores"
SCORES_VERSION = 1
SCORE_COLUMNS = ("easy_reference", "learnability")  # higher = keep
UID_FORMATS = ("uint64", "hex", "datacomp")
_META_KEY = b"jestkit"


# ----------------------------------------------------------------------------- scoring


def _check_shape(model: Any, split_dirs: Sequence[Path], role: str) -> None:
    if getattr(model, "resizes_images", False):  # a py: factory model resizes its input
        return
    for d in split_dirs:
        info = read_split_info(d)
        have = (int(info["in_channels"]), int(info["image_size"]))
        want = (int(model.in_channels), int(model.image_size))
        if have != want:
            raise JestkitError(
                f"{d}: images are {have[0]}x{have[1]}x{have[1]}, the {role} model takes "
                f"{want[0]}x{want[1]}x{want[1]} (in_channels x image_size^2)"
            )


def _positive_losses(model: Any, tokenizer: Any, images: torch.Tensor, captions: list[str]):
    """The sigmoid loss of each example's own pair, ``L[i, i]``, at full resolution (float32)."""
    e = embed(model, images, tokenizer(captions), device=model.logit_scale.device, validate=False)
    return sigmoid_positive_losses(e.image, e.text, e.scale, e.bias).cpu()


@torch.no_grad()
def score_splits(
    reference: Any,
    reference_tokenizer: Any,
    split_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    learner: Any | None = None,
    learner_tokenizer: Any | None = None,
    batch_size: int = 512,
    strict: bool = False,
    progress: bool = True,
) -> pa.Table:
    """Per-example scores of every example in ``split_dirs`` (de-duplicated by uid), sorted by uid.

    Each model runs on its own device, in eval mode (restored afterwards), at full resolution,
    without gradients, ``batch_size`` examples per call, with its own tokenizer. Columns: ``uid``,
    ``reference_loss``, ``easy_reference``, and with a learner ``learner_loss``, ``learnability``.
    """
    from jestkit.progress import progress_bar

    if isinstance(split_dirs, (str, os.PathLike)):
        split_dirs = [split_dirs]
    if not split_dirs:
        raise JestkitError("--shards: no split folder given")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise JestkitError(f"--batch-size: must be a positive integer, got {batch_size!r}")
    if (learner is None) != (learner_tokenizer is None):
        raise JestkitError("learner and learner_tokenizer must be given together")
    splits = [resolve_split_dir(d) for d in split_dirs]
    models = [("reference", reference, reference_tokenizer)]
    if learner is not None:
        models.append(("learner", learner, learner_tokenizer))
    for role, model, _ in models:
        _check_shape(model, splits, role)
    total = sum(len(build_index(d, strict=strict, progress=False)) for d in splits)

    modes = [m.training for _, m, _ in models]
    for _, m, _ in models:
        m.eval()
    ids: list[np.ndarray] = []
    source_uids: dict[int, str] = {}  # img2dataset shards: the json's uid (DataComp's), by key
    losses: dict[str, list[torch.Tensor]] = {role: [] for role, _, _ in models}
    seen: set[str] = set()
    bar = progress_bar(total=total, desc="score", unit="ex", disable=not progress)
    try:
        for d in splits:
            for sb in iter_split(d, batch_size, strict=strict):
                bar.update(len(sb))
                keep = [i for i, u in enumerate(sb.uids) if u not in seen]
                seen.update(sb.uids)
                if not keep:
                    continue
                if len(keep) < len(sb):
                    sb = sb.index(keep)
                for role, model, tok in models:
                    losses[role].append(_positive_losses(model, tok, sb.images, sb.captions))
                ids.append(uid_to_int(sb.uids))
                src = sb.meta.get("source_uid")
                if src is not None:
                    source_uids.update(
                        (int(k), str(s)) for k, s in zip(ids[-1], src, strict=True) if s
                    )
    finally:
        bar.close()
        for (_, m, _), mode in zip(models, modes, strict=True):
            m.train(mode)

    uid_int = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
    order = np.argsort(uid_int, kind="stable")
    keys = int_to_uid(uid_int[order])
    columns: dict[str, Any] = {"uid": pa.array(keys, pa.string())}
    if source_uids:  # the source's own uids (DataComp's), so the scores join its uid lists
        columns["uid"] = pa.array(
            [source_uids.get(int(k), h) for k, h in zip(uid_int[order], keys, strict=True)],
            pa.string(),
        )
        columns["jestkit_uid"] = pa.array(keys, pa.string())
    ref = torch.cat(losses["reference"]).numpy()[order] if ids else np.zeros(0, np.float32)
    columns["reference_loss"] = ref
    columns["easy_reference"] = -ref
    if learner is not None:
        lrn = torch.cat(losses["learner"]).numpy()[order] if ids else np.zeros(0, np.float32)
        columns["learner_loss"] = lrn
        columns["learnability"] = lrn - ref
    meta = {
        "format": SCORES_FORMAT,
        "version": SCORES_VERSION,
        "scores": "per-example (diagonal) sigmoid pair losses at full resolution",
        "splits": [str(d) for d in splits],
        "count": len(uid_int),
    }
    for role, model, _ in models:
        meta[role] = _model_info(model)
    table = pa.table(columns)
    return table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})


def _model_info(model: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "scale": float(model.logit_scale.detach().exp()),
        "bias": float(model.logit_bias.detach()),
    }
    try:
        from jestkit.models import model_fingerprint

        info["fingerprint"] = model_fingerprint(model)
    except Exception:  # a model from elsewhere
        info["fingerprint"] = None
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "name"):
        info["name"] = config.name
    return info


def _check_out(out: Path, overwrite: bool, flag: str = "--out") -> None:
    if out.is_dir():
        raise JestkitError(f"{flag} {out}: is a folder; give a file path")
    if out.exists() and not overwrite:
        raise JestkitError(f"{flag} {out}: already exists (pass --overwrite to replace it)")


def _atomic(out: Path, write) -> None:
    """``write(tmp_path)`` then rename into place: readers never see a half-written file."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, write)
    except OSError as e:  # a full disk or read-only folder (pyarrow raises OSError too)
        raise JestkitError(f"--out {out}: cannot write it ({e})") from e


def write_scores(table: pa.Table, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a scores table as parquet, atomically."""
    out = Path(out)
    _check_out(out, overwrite)
    _atomic(out, lambda tmp: pq.write_table(table, tmp))
    return out


def read_scores(path: str | os.PathLike) -> pa.Table:
    """A scores parquet file (any parquet with a ``uid`` column of 16-hex strings works)."""
    path = Path(path)
    if not path.is_file():
        raise JestkitError(f"{path}: scores file not found (write one with `jestkit score`)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise JestkitError(f"{path}: cannot read it as parquet ({e})") from None
    if "uid" not in table.column_names:
        raise JestkitError(f"{path}: no 'uid' column (columns: {table.column_names})")
    return table


# ----------------------------------------------------------------------------- filtering


def _score_name(score: str) -> str:
    name = score.replace("-", "_").lower() if isinstance(score, str) else score
    if name not in SCORE_COLUMNS:
        raise JestkitError(f"--score: must be one of {', '.join(SCORE_COLUMNS)}, got {score!r}")
    return name


def keep_count(n: int, keep_fraction: float) -> int:
    """``ceil(P * n)``: any P > 0 keeps at least one example, P = 1 keeps all.

    ``P * n`` is rounded to 9 decimals first, so that 0.3 * 10 keeps 3, not 4.
    """
    return min(n, math.ceil(round(keep_fraction * n, 9)))


def _check_fraction(keep_fraction: Any) -> float:
    try:
        p = float(keep_fraction)
    except (TypeError, ValueError):
        raise JestkitError(
            f"--keep-fraction: must be a number in (0, 1], got {keep_fraction!r}"
        ) from None
    if isinstance(keep_fraction, bool) or not 0.0 < p <= 1.0:
        raise JestkitError(f"--keep-fraction: must be in (0, 1], got {keep_fraction!r}")
    return p


def filter_scores(
    scores: pa.Table | str | os.PathLike,
    keep_fraction: float,
    score: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The uids (``np.uint64``, sorted) of the top ``ceil(keep_fraction * n)`` examples by ``score``.

    ``score`` defaults to ``learnability`` when the table has it, else ``easy_reference``.
    Higher scores are kept; equal scores are broken by uid (deterministic). Returns the uids and
    a summary (``score``, ``kept``, ``total``, ``threshold`` = the lowest kept score).
    """
    source = "scores"
    if not isinstance(scores, pa.Table):
        source = str(scores)
        scores = read_scores(scores)
    p = _check_fraction(keep_fraction)
    if score is None:
        score = "learnability" if "learnability" in scores.column_names else "easy_reference"
    name = _score_name(score)
    if name not in scores.column_names:
        hint = " (score with --learner to get learnability)" if name == "learnability" else ""
        raise JestkitError(
            f"{source}: no column {name!r} for --score {score}{hint}; columns: {scores.column_names}"
        )
    values = scores.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise JestkitError(
            f"{source}: column {name!r} has {int(bad.sum())} non-finite values (NaN/inf); first at "
            f"row {int(np.flatnonzero(bad)[0])}"
        )
    # Scores of img2dataset shards carry the source's uids in `uid`, jestkit's keys beside them.
    key = "jestkit_uid" if "jestkit_uid" in scores.column_names else "uid"
    ids = uid_to_int(scores.column(key).to_pylist(), name=f"{source} {key!r}")
    if len(np.unique(ids)) != len(ids):
        raise JestkitError(f"{source}: 'uid' has duplicates; one row per example expected")
    n = len(ids)
    k = keep_count(n, p)
    order = np.lexsort((ids, -values))  # by score descending, then uid ascending
    chosen = order[:k]
    summary = {
        "score": name,
        "kept": int(k),
        "total": int(n),
        "keep_fraction": p,
        "threshold": float(values[chosen].min()) if k else float("nan"),
    }
    return np.sort(ids[chosen]), summary


def source_uids(scores: pa.Table, ids: np.ndarray) -> list[str]:
    """The ``uid`` strings (e.g. DataComp's) of the rows whose jestkit key is in ``ids``."""
    if "jestkit_uid" not in scores.column_names:
        return int_to_uid(ids)
    by_key = dict(
        zip(scores.column("jestkit_uid").to_pylist(), scores.column("uid").to_pylist(), strict=True)
    )
    return [by_key[k] for k in int_to_uid(ids)]


def datacomp_uids(uids: Sequence[str]) -> np.ndarray:
    """32-hex uids as DataComp stores its uid lists: sorted ``np.dtype("u8,u8")`` records."""
    bad = [u for u in uids if len(u) != 32 or not all(c in "0123456789abcdefABCDEF" for c in u)]
    if bad:
        raise JestkitError(
            f"--format datacomp: uid {bad[0]!r} is not a 32-hex DataComp uid ({len(bad)} such)"
        )
    arr = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in uids], np.dtype("u8,u8"))
    return np.sort(arr, order=["f0", "f1"])


def write_uids(
    uids: np.ndarray,
    out: str | os.PathLike,
    fmt: str = "uint64",
    overwrite: bool = False,
    names: Sequence[str] | None = None,
) -> Path:
    """Save uids sorted: ``np.uint64`` (``fmt="uint64"``), 16-character strings (``"hex"``), or
    DataComp's ``u8,u8`` records of the 32-hex source uids ``names`` (``"datacomp"``)."""
    if fmt not in UID_FORMATS:
        raise JestkitError(f"--format: must be one of {', '.join(UID_FORMATS)}, got {fmt!r}")
    out = Path(out)
    _check_out(out, overwrite)
    ids = np.sort(np.asarray(uids, dtype=np.uint64))
    if fmt == "datacomp":
        arr = datacomp_uids(list(names) if names is not None else int_to_uid(ids))
    else:
        arr = ids if fmt == "uint64" else np.array(int_to_uid(ids), dtype="<U16")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a bare path
            np.save(f, arr, allow_pickle=False)

    _atomic(out, write)
    return out


def load_uids(path: str | os.PathLike) -> np.ndarray:
    """Kept uids from :func:`write_uids` in either format, as a sorted ``np.uint64`` array.

    ``jestkit.data.int_to_uid`` turns them back into hex strings.
    """
    path = Path(path)
    if not path.is_file():
        raise JestkitError(f"{path}: uid file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise JestkitError(f"{path}: not a numpy .npy uid array ({e})") from None
    if arr.ndim != 1:
        raise JestkitError(f"{path}: expected a 1-D uid array, got shape {arr.shape}")
    if arr.dtype == np.uint64:
        ids = arr
    elif arr.dtype.kind in "US":
        strs = arr.astype(str).tolist()
        ids = uid_to_int([s.lower() for s in strs], name=str(path))
    else:
        raise JestkitError(
            f"{path}: dtype {arr.dtype}; expected uint64 or 16-character hex strings"
        )
    return np.sort(ids)


# ----------------------------------------------------------------------------- CLI


def _load_model(path: str, flag: str, device: torch.device):
    from jestkit.models import load_pretrained
    from jestkit.models.factory import is_factory

    if not Path(path).is_dir() and not is_factory(path):
        raise JestkitError(f"{flag} {path}: model folder not found")
    return load_pretrained(path, device=device)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="REF_DIR",
        help="reference model folder (export or checkpoint) or py:package.module:function",
    )
    parser.add_argument(
        "--shards",
        nargs="+",
        required=True,
        metavar="SPLIT_DIR",
        help="split folders, or img2dataset shards: a folder of .tar or 'pool/{00000..00123}.tar'",
    )
    parser.add_argument(
        "--learner",
        metavar="LEARNER_DIR",
        help="learner model folder: adds learner_loss and learnability",
    )
    parser.add_argument(
        "--out", required=True, metavar="SCORES.parquet", help="parquet file to write"
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad record instead of skipping it"
    )
    parser.add_argument("--quiet", action="store_true")


def run_score(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    _check_out(out, args.overwrite)
    from jestkit.data.img2dataset import is_source, split_for

    for d in args.shards:
        if not Path(d).exists() and not is_source(d):
            raise JestkitError(f"--shards {d}: split folder not found")
    device = resolve_device(args.device)
    reference, ref_tok = _load_model(args.model, "--model", device)
    shards = [split_for(d, reference, progress=not args.quiet) for d in args.shards]
    learner = learner_tok = None
    if args.learner:
        learner, learner_tok = _load_model(args.learner, "--learner", device)
    table = score_splits(
        reference, ref_tok, shards, learner, learner_tok, batch_size=args.batch_size,
        strict=args.strict, progress=not args.quiet,
    )  # fmt: skip
    write_scores(table, out, overwrite=args.overwrite)
    if not args.quiet:
        cols = ", ".join(c for c in table.column_names if c != "uid")
        print(
            f"scored {table.num_rows} examples ({cols}) -> {out} in {time.perf_counter() - t0:.1f}s"
        )
    return 0


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scores", metavar="SCORES.parquet", help="a file written by `jestkit score`"
    )
    parser.add_argument(
        "--keep-fraction",
        type=float,
        required=True,
        metavar="P",
        help="fraction of examples to keep, in (0, 1]; keeps ceil(P * n)",
    )
    parser.add_argument(
        "--out", required=True, metavar="UIDS.npy", help="numpy file of the kept uids, sorted"
    )
    parser.add_argument(
        "--score",
        default=None,
        help="easy_reference | learnability (default: learnability if present)",
    )
    parser.add_argument(
        "--format",
        default="uint64",
        choices=UID_FORMATS,
        help="uint64 (jestkit.data.uid_to_int), hex strings, or datacomp (DataComp's u8,u8 "
        "uid records, for scores of shards whose json has DataComp's 32-hex uid)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true")


def run_filter(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_out(out, args.overwrite)
    uids, s = filter_scores(args.scores, args.keep_fraction, args.score)
    names = source_uids(read_scores(args.scores), uids) if args.format == "datacomp" else None
    write_uids(uids, out, fmt=args.format, overwrite=args.overwrite, names=names)
    if not args.quiet:
        print(
            f"kept {s['kept']} of {s['total']} examples (top {s['keep_fraction']:.4g} by "
            f"{s['score']}, lowest kept {s['threshold']:.4g}) -> {out}"
        )
    return 0


COMMANDS = {"score": (add_score_arguments, run_score), "filter": (add_filter_arguments, run_filter)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One module, two commands: ``jestkit score`` and ``jestkit filter`` (chosen by ``parser.prog``)."""
    name = parser.prog.split()[-1] if parser.prog else ""
    if name not in COMMANDS:
        raise JestkitError(
            f"jestkit.curation serves the commands {sorted(COMMANDS)}, not {parser.prog!r}"
        )
    COMMANDS[name][0](parser)
    parser.set_defaults(_curation_command=name)


def run(args: argparse.Namespace) -> int:
    return COMMANDS[args._curation_command][1](args)


def main(argv: list[str] | None = None) -> int:
    """``python -m jestkit.curation score|filter ...`` (the same as ``jestkit score|filter``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m jestkit.curation {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"jestkit {argv[0]}")
    add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(run(args) or 0)
    except JestkitError as e:
        print(f"jestkit {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
