"""Non-ViT image towers for the fastest CPU runs: an MLP on raw pixels and a small strided CNN.

Neither has patch sizes (``patch_sizes == ()``): they always see the full-resolution image, so
Flexi-JEST's low-resolution scoring does not apply to them; everything else does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from jestkit.models.vit import Mlp, init_weights


def mlp_tower_flops(in_features: int, width: int, depth: int, hidden: int, embed_dim: int) -> int:
    """Forward FLOPs of an :class:`MlpTower` for one example (stem, blocks, projection)."""
    return 2 * in_features * width + depth * 4 * width * hidden + 2 * width * embed_dim


class ResidualMlp(nn.Module):
    """``x + MLP(LayerNorm(x))``: a transformer block without the attention."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))


class MlpTower(nn.Module):
    """Flattened input -> linear -> ``depth`` residual MLP blocks -> LayerNorm -> projection."""

    def __init__(self, in_features: int, width: int, depth: int, hidden: int, embed_dim: int):
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*(ResidualMlp(width, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        init_weights(self, generator)
        nn.init.trunc_normal_(
            self.stem.weight, std=self.stem.in_features**-0.5, generator=generator
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.stem(x.flatten(1)))))


class ImageMlp(MlpTower):
    """MLP on the raw pixels of a ``[B, C, S, S]`` image."""

    def __init__(
        self, image_size: int, in_channels: int, width: int, depth: int, hidden: int, embed_dim: int
    ):
        super().__init__(in_channels * image_size * image_size, width, depth, hidden, embed_dim)

    @classmethod
    def from_config(cls, cfg: Any) -> ImageMlp:
        """The tower a ``ModelConfig`` with ``image_kind="mlp"`` describes."""
        return cls(
            cfg.image_size, cfg.in_channels, cfg.image_width, cfg.image_depth, cfg.image_hidden,
            cfg.embed_dim,
        )  # fmt: skip

    @staticmethod
    def flops(cfg: Any, patch_size: int | None = None) -> int:
        """Forward FLOPs for one image (no patch sizes: always full resolution)."""
        pixels = cfg.in_channels * cfg.image_size * cfg.image_size
        return mlp_tower_flops(
            pixels, cfg.image_width, cfg.image_depth, cfg.image_hidden, cfg.embed_dim
        )


def cnn_channels(width: int, depth: int) -> list[int]:
    """Channels of the CNN's stages: ``width`` doubling each stage."""
    return [width * 2**i for i in range(depth)]


class ImageCnn(nn.Module):
    """``depth`` stride-2 3x3 conv + GELU stages (channels double), global average pool, projection."""

    def __init__(self, in_channels: int, width: int, depth: int, embed_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in cnn_channels(width, depth):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GELU()]
            c_in = c
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(c_in)
        self.head = nn.Linear(c_in, embed_dim)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: Any) -> ImageCnn:
        """The tower a ``ModelConfig`` with ``image_kind="cnn"`` describes."""
        return cls(cfg.in_channels, cfg.image_width, cfg.image_depth, cfg.embed_dim)

    @staticmethod
    def flops(cfg: Any, patch_size: int | None = None) -> int:
        """Forward FLOPs for one image (no patch sizes: always full resolution)."""
        flops, c_in, size = 0, cfg.in_channels, cfg.image_size
        for c_out in cnn_channels(cfg.image_width, cfg.image_depth):
            size = (size - 1) // 2 + 1  # 3x3, stride 2, padding 1
            flops += 2 * size * size * c_out * c_in * 9
            c_in = c_out
        return flops + 2 * c_in * cfg.embed_dim

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        init_weights(self, generator)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(x)
        return self.head(self.norm(torch.mean(x, dim=(2, 3))))
