"""The table of tower kinds: ``ModelConfig.image_kind`` / ``text_kind`` -> the builder of that tower.

A new tower kind is one entry here (and its FLOP formula in :mod:`jestkit.flops`). The dual
encoder builds its towers from this table; the named model configs live in
:mod:`jestkit.models.registry`, which builds dual encoders: imports go registry -> dual_encoder ->
towers, never back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from jestkit.errors import JestkitError
from jestkit.models.mlp import ImageCnn, ImageMlp
from jestkit.models.text import TextMlp, TextTransformer
from jestkit.models.vit import FlexiViT

ModelConfig = Any  # jestkit.models.ModelConfig (not imported: dual_encoder imports this module)


def _vit(cfg: ModelConfig) -> nn.Module:
    return FlexiViT(
        cfg.image_size, cfg.in_channels, cfg.patch_sizes, cfg.image_width, cfg.image_depth,
        cfg.image_heads, cfg.image_hidden, cfg.embed_dim, cfg.pooling,
    )  # fmt: skip


def _image_mlp(cfg: ModelConfig) -> nn.Module:
    return ImageMlp(
        cfg.image_size, cfg.in_channels, cfg.image_width, cfg.image_depth, cfg.image_hidden,
        cfg.embed_dim,
    )  # fmt: skip


def _cnn(cfg: ModelConfig) -> nn.Module:
    return ImageCnn(cfg.in_channels, cfg.image_width, cfg.image_depth, cfg.embed_dim)


def _text_transformer(cfg: ModelConfig) -> nn.Module:
    return TextTransformer(
        cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_depth, cfg.text_heads,
        cfg.text_hidden, cfg.embed_dim, cfg.text_pooling,
    )  # fmt: skip


def _text_mlp(cfg: ModelConfig) -> nn.Module:
    return TextMlp(
        cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_depth, cfg.text_hidden,
        cfg.embed_dim,
    )  # fmt: skip


IMAGE_TOWERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "vit": _vit,
    "mlp": _image_mlp,
    "cnn": _cnn,
}
TEXT_TOWERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "transformer": _text_transformer,
    "mlp": _text_mlp,
}


def build_image_tower(cfg: ModelConfig) -> nn.Module:
    if cfg.image_kind not in IMAGE_TOWERS:
        raise JestkitError(f"image_kind={cfg.image_kind!r}: known kinds {sorted(IMAGE_TOWERS)}")
    return IMAGE_TOWERS[cfg.image_kind](cfg)


def build_text_tower(cfg: ModelConfig) -> nn.Module:
    if cfg.text_kind not in TEXT_TOWERS:
        raise JestkitError(f"text_kind={cfg.text_kind!r}: known kinds {sorted(TEXT_TOWERS)}")
    return TEXT_TOWERS[cfg.text_kind](cfg)
