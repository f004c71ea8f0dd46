"""Filesystem durability helpers shared by every atomic writer (checkpoints, exports, shards)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or new entry in ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(Path(path), os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], object]) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never a
    torn one, and the new one survives a power cut.

    ``data`` is the content (``str`` is written as UTF-8) or a function that writes the file at the
    temporary path it is given (e.g. a parquet or ``.npz`` writer). The temporary file sits next to
    ``path`` (same filesystem, so the rename is atomic) and is removed if anything fails; errors
    propagate for the caller to name its argument.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        if callable(data):
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with open(tmp, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing any folder there.

    POSIX cannot swap two folders in one step, so the old one is renamed aside first: a crash
    between the two renames leaves ``out`` missing (never half-written) and the old copy beside it
    as ``.<name>.old-<pid>``. The parent is fsync'ed so the new entry survives a power cut.
    """
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)
