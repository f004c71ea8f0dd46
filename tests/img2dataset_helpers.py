"""Builders for tests: img2dataset-shaped shards and a toy open_clip-shaped model factory.

``toy_clip`` is what a user's ``py:`` factory returns for open_clip's SigLIP models (model with
encode_image / encode_text / logit_scale / logit_bias, a preprocess, a tokenizer), small enough
for a CPU test. The tests name it as ``py:img2dataset_helpers:toy_clip``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_images(n: int, seed: int = 0, labels=None) -> tuple[list[np.ndarray], list[int]]:
    """n sklearn digits (8x8 grey, 0..16) as uint8 arrays, with their labels."""
    d = load_digits()
    rng = np.random.default_rng(seed)
    pool = np.arange(len(d.target)) if labels is None else np.flatnonzero(np.isin(d.target, labels))
    idx = rng.choice(pool, size=n, replace=n > len(pool))
    imgs = [(d.images[i] * (255 / 16)).astype(np.uint8) for i in idx]
    return imgs, [int(d.target[i]) for i in idx]


def _encode(arr: np.ndarray, fmt: str, size: int, colour: bool) -> bytes:
    img = Image.fromarray(arr, mode="L").resize((size, size + size // 4), Image.NEAREST)
    if colour:
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset(
    folder: Path,
    n: int,
    shards: int = 2,
    seed: int = 0,
    with_uid: bool = True,
    truncated: int | None = None,
    no_caption: int | None = None,
    wrong_caption_frac: float = 0.0,
    labels=None,
) -> dict[str, object]:
    """img2dataset layout: {key}.jpg|png|webp + .txt + .json (DataComp uid) per example, several
    sizes, a .parquet per shard. ``truncated``/``no_caption``: that example is broken.

    Returns {"uids": json uids of the good examples, "labels": ...}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    images, labs = digit_images(n, seed, labels)
    rng = np.random.default_rng(seed + 1)
    good_uids, good_labels = [], []
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per, min(n, (s + 1) * per)):
                key = f"{s:05d}{i:04d}"
                fmt = ("jpg", "jpg", "png", "webp")[i % 4]
                data = _encode(images[i], fmt, (16, 24, 40)[i % 3], colour=i % 2 == 0)
                if i == truncated:
                    data = data[: len(data) // 2]
                label = labs[i]
                if rng.random() < wrong_caption_frac:
                    label = int((label + rng.integers(1, 10)) % 10)
                uid = f"{rng.integers(0, 2**63):016x}{rng.integers(0, 2**63):016x}"
                meta = {"url": f"http://x/{key}.jpg", "key": key, "status": "success"}
                if with_uid:
                    meta["uid"] = uid
                _add(tar, f"{key}.{fmt}", data)
                if i != no_caption:
                    _add(tar, f"{key}.txt", f"a handwritten {WORDS[label]}".encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                if i not in (truncated, no_caption):
                    good_uids.append(uid)
                    good_labels.append(labs[i])
        (folder / f"{s:05d}.parquet").write_bytes(b"")  # img2dataset writes one; jestkit ignores it
    return {"uids": good_uids, "labels": good_labels}


class ToyTokenizer:
    """Word-level tokenizer over a fixed vocabulary, open_clip-style call and context_length."""

    context_length = 8
    vocab_size = 64

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for r, t in enumerate(texts):
            ids = [1 + (sum(map(ord, w)) % (self.vocab_size - 1)) for w in t.lower().split()]
            ids = ids[: self.context_length]
            out[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class ToyClip(nn.Module):
    """open_clip's SigLIP shape: encode_image(images), encode_text(tokens), logit_scale/bias."""

    def __init__(self, image_size: int = 16, dim: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.visual = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, dim))
        self.visual.image_size = image_size
        self.embed = nn.Embedding(ToyTokenizer.vocab_size, dim)
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        mask = (tokens > 0).float().unsqueeze(-1)
        x = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.proj(x)


PREPROCESS = {"image_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def toy_clip():
    """A py: factory: (model, preprocess, tokenizer), as open_clip's API returns them."""
    return ToyClip(), PREPROCESS, ToyTokenizer()


class _Compose:  # torchvision-style preprocess, without torchvision
    def __init__(self, transforms):
        self.transforms = transforms


class Resize:
    def __init__(self, size):
        self.size = size


class CenterCrop:
    def __init__(self, size):
        self.size = size


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std


def toy_clip_compose():
    """The same model with a torchvision-style Compose as its preprocess (open_clip's kind)."""
    pre = _Compose([Resize(16), CenterCrop(16), Normalize((0.5,) * 3, (0.5,) * 3)])
    return ToyClip(), pre, ToyTokenizer()


class _NoText(nn.Module):
    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def encode_image(self, images):
        return images.flatten(1)


def no_encode_text():
    """A broken factory: its model lacks encode_text."""
    return _NoText(), PREPROCESS, ToyTokenizer()
