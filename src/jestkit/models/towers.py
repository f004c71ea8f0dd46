"""The table of tower kinds: ``ModelConfig.image_kind`` / ``text_kind`` -> the tower class.

Each class builds itself from a config (``from_config``) and knows its forward FLOPs per example
(``flops``), so a new tower kind is one class and one entry here: ``ModelConfig`` validates kinds
against these tables and :mod:`jestkit.flops` charges through them. Imports go registry ->
dual_encoder -> towers -> tower modules, never back (configs are typed ``Any`` here for that reason).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from jestkit.errors import JestkitError
from jestkit.models.mlp import ImageCnn, ImageMlp
from jestkit.models.text import TextMlp, TextTransformer
from jestkit.models.vit import FlexiViT


class ImageTower(Protocol):
    """An ``nn.Module`` mapping ``[B, C, S, S]`` float images to ``[B, embed_dim]``; FlexiViT's
    forward also takes a ``patch_size``. ``DualEncoder`` builds it on the meta device, then calls
    ``reset_parameters`` with its seeded generator."""

    @classmethod
    def from_config(cls, cfg: Any) -> nn.Module: ...

    @staticmethod
    def flops(cfg: Any, patch_size: int | None = None) -> int: ...

    def reset_parameters(self, generator: torch.Generator | None = None) -> None: ...


class TextTower(Protocol):
    """An ``nn.Module`` mapping ``[B, L]`` right-padded token ids to ``[B, embed_dim]``."""

    @classmethod
    def from_config(cls, cfg: Any) -> nn.Module: ...

    @staticmethod
    def flops(cfg: Any, length: int) -> int: ...

    def reset_parameters(self, generator: torch.Generator | None = None) -> None: ...


IMAGE_TOWERS: dict[str, type[ImageTower]] = {"vit": FlexiViT, "mlp": ImageMlp, "cnn": ImageCnn}
TEXT_TOWERS: dict[str, type[TextTower]] = {"transformer": TextTransformer, "mlp": TextMlp}


def image_tower(kind: str) -> type[ImageTower]:
    if kind not in IMAGE_TOWERS:
        raise JestkitError(f"image_kind={kind!r}: known kinds {sorted(IMAGE_TOWERS)}")
    return IMAGE_TOWERS[kind]


def text_tower(kind: str) -> type[TextTower]:
    if kind not in TEXT_TOWERS:
        raise JestkitError(f"text_kind={kind!r}: known kinds {sorted(TEXT_TOWERS)}")
    return TEXT_TOWERS[kind]
