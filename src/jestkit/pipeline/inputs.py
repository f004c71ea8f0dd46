"""POOL / CURATED / EVAL as given (a table file or a shard folder) and their fingerprints, and
the plan (OUT/pipeline.json) that refuses a re-run with other inputs or options.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jestkit.errors import JestkitError, check
from jestkit.pipeline.options import FREE_OPTIONS, PipelineOptions

INPUTS = ("pool", "curated", "eval")
PLAN_FORMAT = "jestkit-pipeline"
PLAN_VERSION = 1


@dataclass
class Input:
    """One of POOL / CURATED / EVAL as given, and the split folder it ends up as."""

    name: str
    arg: str
    path: Path
    kind: str  # file | shards | img2dataset (standard webdataset shards, read in place)
    fingerprint: str
    split_dir: Path | None = None  # the shards the runs read (after conversion)
    count: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_input(name: str, value: str | os.PathLike) -> Input:
    """POOL / CURATED / EVAL as given: a table file to convert, or a shard folder to read."""
    from jestkit.data.img2dataset import expand_source, is_source
    from jestkit.data.make_shards import FORMATS
    from jestkit.data.shards import read_split_info, resolve_split_dir

    arg = str(value)
    if is_source(value):  # img2dataset shards: a folder of .tar, a .tar, or a brace pattern
        try:
            tars = expand_source(value)
        except JestkitError as e:
            raise JestkitError(f"--{name} {e}") from None
        h = hashlib.sha256()
        for t in tars:
            st = t.stat()
            h.update(f"{t}:{st.st_size}:{st.st_mtime_ns};".encode())
        return Input(name, arg, tars[0].parent, "img2dataset", "tars:" + h.hexdigest())
    path = Path(value).expanduser()
    check(path.exists(), f"--{name} {arg!r}: no such file or folder")
    if path.is_file():
        check(
            path.suffix.lower() in FORMATS,
            f"--{name} {arg!r}: not a shard folder and not a table of images and captions "
            f"(expected one of {sorted(FORMATS)})",
        )
        return Input(name, arg, path.resolve(), "file", "sha256:" + _file_sha256(path))
    try:
        split = resolve_split_dir(path)
        info = read_split_info(split)
    except JestkitError as e:
        raise JestkitError(f"--{name} {arg!r}: {e}") from None
    return Input(
        name,
        arg,
        path.resolve(),
        "shards",
        "uids:" + str(info.get("fingerprint", "")),
        split_dir=Path(info["dir"]),
        count=int(info["count"]),
        info=info,
    )


def make_plan(inputs: dict[str, Input], opts: PipelineOptions) -> dict[str, Any]:
    options = {k: v for k, v in asdict(opts).items() if k not in FREE_OPTIONS}
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "inputs": {n: {"kind": i.kind, "fingerprint": i.fingerprint} for n, i in inputs.items()},
        "options": json.loads(json.dumps(options)),  # tuples -> lists, as read back
    }


def _plan_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for n, i in new["inputs"].items():
        o = old.get("inputs", {}).get(n)
        if o != i:
            diffs.append(f"--{n} changed ({_short(o)} before, {_short(i)} now)")
    for k, v in new["options"].items():
        o = old.get("options", {}).get(k)
        if o != v:
            diffs.append(f"{k}: {o!r} before, {v!r} now")
    return diffs


def check_plan(out: Path, plan: dict[str, Any]) -> None:
    """Refuse an OUT made from other inputs or options: its finished stages would not match."""
    path = out / "pipeline.json"
    if not path.is_file():
        check(
            not (out / "suite.json").is_file() and not (out / "runs").is_dir(),
            f"--out {str(out)!r} holds runs that are not a pipeline's; choose another --out",
        )
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise JestkitError(f"--out {str(out)!r}: cannot read {path} ({e})") from None
    check(
        isinstance(old, dict) and old.get("format") == PLAN_FORMAT,
        f"--out {str(out)!r}: {path} is not a pipeline plan",
    )
    diffs = _plan_differences(old, plan)
    check(
        not diffs,
        f"--out {str(out)!r} holds a pipeline made from other inputs or options ("
        + "; ".join(diffs)
        + "); choose another --out, or delete it to start over",
    )


def _short(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "none"
    return f"{entry['kind']} {entry['fingerprint'].split(':')[-1][:12]}"
