"""Stable example ids: 16 hex characters = the first 64 bits of SHA-256(image bytes, caption).

Everything per-example (metadata, cached reference embeddings, scores) is keyed by uid, never by
position, so shards can be re-ordered, split or merged without invalidating anything. The integer
form (``np.uint64``) makes lookups vectorised: ``np.searchsorted`` over a sorted uid array.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from jestkit.errors import JestkitError

UID_CHARS = 16
_HEX = frozenset("0123456789abcdef")


def compute_uid(image_bytes: bytes, caption: str) -> str:
    """The uid of one example: sha256(image bytes + b"\\0" + caption as UTF-8), first 16 hex chars."""
    h = hashlib.sha256(image_bytes)
    h.update(b"\0")
    h.update(caption.encode("utf-8"))
    return h.hexdigest()[:UID_CHARS]


def is_uid(value: object) -> bool:
    """True for a 16-character lowercase hex string."""
    return isinstance(value, str) and len(value) == UID_CHARS and set(value) <= _HEX


def uid_to_int(uids: Sequence[str] | str, name: str = "uids") -> np.ndarray:
    """Vectorised uid -> ``np.uint64`` (big-endian reading of the hex string, so order is kept).

    Raises :class:`JestkitError` naming the first malformed uid.
    """
    if isinstance(uids, str):
        uids = [uids]
    uids = list(uids)
    if not uids:
        return np.zeros(0, dtype=np.uint64)
    joined = "".join(uids)
    if len(joined) != UID_CHARS * len(uids) or any(len(u) != UID_CHARS for u in uids):
        bad = next(u for u in uids if not isinstance(u, str) or len(u) != UID_CHARS)
        raise JestkitError(f"{name}: {bad!r} is not a uid (16 hex characters)")
    try:
        raw = bytes.fromhex(joined)
    except (ValueError, TypeError):
        bad = next(u for u in uids if not is_uid(u.lower()))
        raise JestkitError(f"{name}: {bad!r} is not a uid (16 hex characters)") from None
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def int_to_uid(values: Iterable[int] | np.ndarray) -> list[str]:
    """Inverse of :func:`uid_to_int`."""
    arr = np.asarray(values, dtype=np.uint64).astype(">u8")
    hexed = arr.tobytes().hex()
    return [hexed[i : i + UID_CHARS] for i in range(0, len(hexed), UID_CHARS)]


def fingerprint_uids(uids: Sequence[str] | np.ndarray) -> str:
    """A content fingerprint of a set of examples: sha256 over their sorted uids (16 hex chars).

    Independent of shard layout and order, so re-sharding the same examples keeps it.
    """
    ints = uids if isinstance(uids, np.ndarray) else uid_to_int(list(uids))
    ints = np.unique(np.asarray(ints, dtype=np.uint64))
    return hashlib.sha256(ints.astype(">u8").tobytes()).hexdigest()[:UID_CHARS]


def combine_fingerprints(parts: dict[str, str]) -> str:
    """One fingerprint for several named parts (e.g. the splits of a dataset)."""
    text = ";".join(f"{k}={parts[k]}" for k in sorted(parts))
    return hashlib.sha256(text.encode()).hexdigest()[:UID_CHARS]
