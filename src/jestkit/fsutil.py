"""Filesystem durability helpers shared by every atomic writer (checkpoints, exports, shards)."""

from __future__ import annotations

import contextlib
import os
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
