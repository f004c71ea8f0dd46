"""FlexiViT image tower: one set of weights, several patch sizes (Beyer et al. 2023).

The patch-embedding kernel is stored at the full-resolution patch size ``p``. For another patch
size ``P`` it is PI-resized: with ``B`` the ``[P*P, p*p]`` matrix of the bilinear resize of a
``p x p`` patch to ``P x P``, the new kernel is ``pinv(B^T) @ w``. Then ``<B x, w'> = <x, w>`` for
every patch ``x`` when upsampling, i.e. a bilinearly upsampled patch gives the same token as the
original (big_vision ``resample_patchemb``). Position embeddings are resampled bilinearly to the
new grid. Fewer tokens -> cheaper scoring, which is what Flexi-JEST exploits.

The transformer blocks here are shared with the text tower.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jestkit.errors import JestkitError

# (old, new, device, dtype) -> pinv(B^T) [new*new, old*old]. A plain dict: never a buffer, never in
# a state_dict. The matrices depend only on the sizes, so every model shares them.
_PI_RESIZE_CACHE: dict[tuple[int, int, str, torch.dtype], Tensor] = {}


def bilinear_resize_matrix(old: int, new: int) -> Tensor:
    """``B [new*new, old*old]`` (float64, CPU): ``B @ x.flatten()`` = bilinear resize of ``x``.

    Half-pixel centres, antialiased when shrinking, as ``jax.image.resize(..., "bilinear")``.
    """
    basis = torch.eye(old * old, dtype=torch.float64, device="cpu").reshape(old * old, 1, old, old)
    resized = F.interpolate(
        basis, size=(new, new), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.reshape(old * old, new * new).T.contiguous()


def pi_resize_matrix(old: int, new: int, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """The cached ``pinv(B^T)`` that maps a flattened ``old x old`` kernel to ``new x new``."""
    device = torch.device(device)
    key = (old, new, str(device), dtype)
    mat = _PI_RESIZE_CACHE.get(key)
    if mat is None:
        # Solved once on the CPU in float64 (pinv is not available for every device/dtype, e.g. meta
        # or bfloat16), then moved to where the kernel lives.
        mat = torch.linalg.pinv(bilinear_resize_matrix(old, new).T).to(device=device, dtype=dtype)
        _PI_RESIZE_CACHE[key] = mat
    return mat


def pi_resize_patch_embed(kernel: Tensor, new_patch_size: int) -> Tensor:
    """PI-resize a patch-embedding kernel ``[..., p, p]`` to ``[..., P, P]`` (differentiable).

    Exact for upsampling (``P > p``): a patch bilinearly resized from ``p`` to ``P`` gives the same
    inner product with the new kernel as the original patch with the old one. For ``P < p`` it is
    the least-squares solution, as in FlexiViT.
    """
    if kernel.ndim < 2 or kernel.shape[-1] != kernel.shape[-2]:
        raise JestkitError(f"kernel: shape {tuple(kernel.shape)} must end in a square [..., p, p]")
    if not isinstance(new_patch_size, int) or new_patch_size < 1:
        raise JestkitError(f"new_patch_size={new_patch_size!r} must be a positive int")
    old = kernel.shape[-1]
    if new_patch_size == old:
        return kernel
    mat = pi_resize_matrix(old, new_patch_size, kernel.device, kernel.dtype)
    with _autocast_off(kernel.device):  # the resize is a weight transform: keep its precision
        flat = kernel.reshape(-1, old * old) @ mat.T
    return flat.reshape(*kernel.shape[:-2], new_patch_size, new_patch_size)


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def resample_pos_embed(pos: Tensor, new_grid: int) -> Tensor:
    """Bilinearly resample ``[1, g*g, D]`` position embeddings to ``[1, new_grid**2, D]``."""
    n, d = pos.shape[-2:]
    grid = round(n**0.5)
    if grid * grid != n:
        raise JestkitError(f"pos: {n} position embeddings do not form a square grid")
    if new_grid == grid:
        return pos
    x = pos.reshape(1, grid, grid, d).permute(0, 3, 1, 2)
    x = F.interpolate(
        x, size=(new_grid, new_grid), mode="bilinear", align_corners=False, antialias=True
    )
    return x.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d)


# ---- transformer parts (shared with the text tower) ---------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        q, k, v = (
            self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, hidden)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class MapHead(nn.Module):
    """Multihead attention pooling (one learned probe), as in SigLIP's ViT image tower."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.heads
        q = self.q(self.probe.expand(b, -1, -1)).view(b, 1, h, d // h).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, d)
        y = self.proj(y)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]


def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """timm/open_clip-style init of the standard layers inside ``module``.

    Linears and embeddings: truncated normal (std 0.02); convs: He normal; the patch embedding:
    LeCun normal (as big_vision); LayerNorms: identity; biases zero. Towers then set their own
    position embeddings and stems.
    """
    g = generator
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02, generator=g)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
        elif isinstance(m, PatchEmbed):
            nn.init.trunc_normal_(m.weight, std=m.weight[0].numel() ** -0.5, generator=g)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
        else:
            continue
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


def transformer_flops(tokens: int, width: int, hidden: int, depth: int) -> int:
    """Forward FLOPs of ``depth`` pre-LN blocks over ``tokens`` tokens (one example).

    The convention is :mod:`jestkit.flops`'s: matmuls only, a multiply-add is 2 FLOPs.
    """
    t, d = tokens, width
    linear = 2 * t * d * (3 * d + d + 2 * hidden)  # qkv, out proj, two MLP layers
    attention = 2 * 2 * t * t * d  # QK^T and AV
    return depth * (linear + attention)


def vit_num_tokens(image_size: int, patch_size: int, pooling: str) -> int:
    """Tokens a ViT's blocks see: the patch grid, plus the [CLS] token under ``cls`` pooling."""
    return (image_size // patch_size) ** 2 + (pooling == "cls")


# ---- the image tower ------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """A conv patch embedding whose kernel is stored at ``base`` and PI-resized on the fly."""

    def __init__(self, in_channels: int, base: int, width: int):
        super().__init__()
        self.base = base
        self.weight = nn.Parameter(torch.empty(width, in_channels, base, base))
        self.bias = nn.Parameter(torch.empty(width))

    def forward(self, x: Tensor, patch_size: int) -> Tensor:
        w = (
            self.weight
            if patch_size == self.base
            else pi_resize_patch_embed(self.weight, patch_size)
        )
        return F.conv2d(x, w, self.bias, stride=patch_size).flatten(2).transpose(1, 2)


class FlexiViT(nn.Module):
    """ViT whose forward takes any patch size in ``patch_sizes`` (first = full resolution)."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        patch_sizes: tuple[int, ...],
        width: int,
        depth: int,
        heads: int,
        hidden: int,
        embed_dim: int,
        pooling: str = "gap",
    ):
        super().__init__()
        self.image_size = image_size
        self.patch_sizes = tuple(patch_sizes)
        self.pooling = pooling
        grid = image_size // self.patch_sizes[0]
        self.patch_embed = PatchEmbed(in_channels, self.patch_sizes[0], width)
        self.pos_embed = nn.Parameter(torch.empty(1, grid * grid, width))
        self.cls_token = nn.Parameter(torch.empty(1, 1, width)) if pooling == "cls" else None
        self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.map_head = MapHead(width, heads, hidden) if pooling == "map" else None
        self.head = nn.Linear(width, embed_dim)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: Any) -> FlexiViT:
        """The tower a ``ModelConfig`` with ``image_kind="vit"`` describes."""
        return cls(
            cfg.image_size, cfg.in_channels, cfg.patch_sizes, cfg.image_width, cfg.image_depth,
            cfg.image_heads, cfg.image_hidden, cfg.embed_dim, cfg.pooling,
        )  # fmt: skip

    @staticmethod
    def flops(cfg: Any, patch_size: int | None = None) -> int:
        """Forward FLOPs for one image at ``patch_size`` (None: full resolution)."""
        p = patch_size or cfg.patch_sizes[0]
        c, s, d, h = cfg.in_channels, cfg.image_size, cfg.image_width, cfg.image_hidden
        tokens = vit_num_tokens(s, p, cfg.pooling)
        flops = 2 * (s // p) ** 2 * d * c * p * p  # patch embedding (= 2 d c s^2 for any p)
        flops += transformer_flops(tokens, d, h, cfg.image_depth)
        if cfg.pooling == "map":  # one probe query: q, kv, attention, out proj, MLP
            flops += 2 * d * d + 2 * tokens * d * 2 * d + 2 * 2 * tokens * d + 2 * d * d + 4 * d * h
        return flops + 2 * d * cfg.embed_dim

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        init_weights(self, generator)
        nn.init.normal_(self.pos_embed, std=self.pos_embed.shape[-1] ** -0.5, generator=generator)
        for probe in (self.cls_token, self.map_head.probe if self.map_head else None):
            if probe is not None:
                nn.init.trunc_normal_(probe, std=0.02, generator=generator)

    def num_tokens(self, patch_size: int | None = None) -> int:
        return vit_num_tokens(self.image_size, patch_size or self.patch_sizes[0], self.pooling)

    def forward(self, images: Tensor, patch_size: int | None = None) -> Tensor:
        p = patch_size or self.patch_sizes[0]
        x = self.patch_embed(images, p)
        x = x + resample_pos_embed(self.pos_embed, self.image_size // p)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.pooling == "gap":
            x = x.mean(dim=1)
        elif self.pooling == "cls":
            x = x[:, 0]
        else:
            x = self.map_head(x)
        return self.head(x)
