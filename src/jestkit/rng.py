"""Randomness keyed by (seed, step, rank, ...): every draw is reproducible and resumable.

Library code never touches the global RNG. A generator derived from the same keys yields the same
stream wherever it is made, so a resumed run re-derives step ``s``'s generator instead of
restoring generator state.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``seed`` and any number of keys (step, rank, a purpose string...)."""
    h = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded from ``(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def np_generator(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy generator seeded from ``(seed, *keys)``."""
    return np.random.default_rng(derive_seed(seed, *keys))
