"""The two-tower image-text model (SigLIP-style) and its flat, validated config.

A ``DualEncoder`` is an image tower and a text tower that each end in a linear projection to a
shared ``embed_dim``, plus a learnable logit scale ``t'`` (``t = exp(t')``) and bias ``c``. The
shape of the API follows open_clip's SigLIP models (``encode_image``, ``encode_text``,
``logit_scale``, ``logit_bias``), so selection and training code works with either.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from jestkit import rng
from jestkit.errors import JestkitError
from jestkit.models.towers import IMAGE_TOWERS, TEXT_TOWERS, image_tower, text_tower

if TYPE_CHECKING:
    from jestkit.scoring import Embeddings

POOLINGS = ("gap", "cls", "map")
TEXT_POOLINGS = ("mean", "eos")


@dataclass(frozen=True)
class ModelConfig:
    """Every hyper-parameter of a ``DualEncoder``, flat so that ``key=value`` overrides are easy.

    ``patch_sizes`` lists the FlexiViT patch sizes the model accepts, the full-resolution (smallest)
    one first: the patch-embedding weights are stored at that size. The presets list them in
    ascending order, so the last is the lowest resolution (the trainer's default scoring and
    multi-resolution size). Non-ViT towers have ``()``.
    """

    name: str = "custom"
    # image tower
    image_kind: str = "vit"
    image_size: int = 28
    in_channels: int = 1
    patch_sizes: tuple[int, ...] = (4, 7)
    image_width: int = 64
    image_depth: int = 2
    image_heads: int = 2
    mlp_ratio: float = 4.0
    pooling: str = "gap"
    # text tower
    text_kind: str = "transformer"
    vocab_size: int = 512
    context_length: int = 32
    text_width: int = 64
    text_depth: int = 1
    text_heads: int = 2
    text_pooling: str = "mean"
    # shared
    embed_dim: int = 64
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float = -10.0
    init_seed: int = 0

    def __post_init__(self) -> None:
        # Normalise (lists -> tuples, ints -> floats) so that equal configs compare equal.
        for key, value in coerce_fields(
            self.to_dict(), source=f"model config {self.name!r}"
        ).items():
            object.__setattr__(self, key, value)
        self.validate()

    # ---- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.field_names()}
        if isinstance(self.patch_sizes, (tuple, list)):
            d["patch_sizes"] = list(self.patch_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a dict (e.g. parsed JSON); unknown keys and wrong types are errors."""
        if not isinstance(d, dict):
            raise JestkitError(f"{source}: expected a mapping of model config fields, got {d!r}")
        return cls(**coerce_fields(d, source=source))

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with ``overrides`` applied and the result validated."""
        values = self.to_dict()
        values.update(coerce_fields(overrides, source=f"model {self.name!r} override"))
        return ModelConfig(**values)

    # ---- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`JestkitError` naming the first inconsistent field and its value."""
        coerce_fields(self.to_dict(), source=f"model config {self.name!r}")

        def err(msg: str) -> JestkitError:
            return JestkitError(f"model config {self.name!r}: {msg}")

        for key, allowed in (
            ("image_kind", IMAGE_TOWERS),
            ("text_kind", TEXT_TOWERS),
            ("pooling", POOLINGS),
            ("text_pooling", TEXT_POOLINGS),
        ):
            if getattr(self, key) not in allowed:
                raise err(f"{key}={getattr(self, key)!r} is not one of {list(allowed)}")
        positive = ["image_size", "in_channels", "image_width", "vocab_size", "context_length"]
        positive += ["text_width", "embed_dim"]
        for key in ("image_depth", "text_depth", "init_seed"):
            if getattr(self, key) < 0:
                raise err(f"{key}={getattr(self, key)!r} must be >= 0")
        if self.image_kind == "vit":
            positive.append("image_heads")
        if self.text_kind == "transformer":
            positive.append("text_heads")
        for key in positive:
            if getattr(self, key) < 1:
                raise err(f"{key}={getattr(self, key)!r} must be >= 1")
        if not (math.isfinite(self.mlp_ratio) and self.image_hidden >= 1 and self.text_hidden >= 1):
            raise err(f"mlp_ratio={self.mlp_ratio!r} must be finite and give MLPs of width >= 1")
        if self.vocab_size < 3:
            raise err(f"vocab_size={self.vocab_size!r} must be >= 3 ([PAD], [UNK], [EOS])")
        for key in ("init_logit_scale", "init_logit_bias"):
            if not math.isfinite(getattr(self, key)):
                raise err(f"{key}={getattr(self, key)!r} must be finite")
        if self.image_kind == "vit":
            ps = self.patch_sizes
            if not ps:
                raise err("patch_sizes=() but image_kind='vit' needs at least one patch size")
            for p in ps:
                if p < 1 or self.image_size % p != 0:
                    raise err(
                        f"patch size {p!r} in patch_sizes={ps!r} does not divide image_size={self.image_size}"
                    )
            if len(set(ps)) != len(ps):
                raise err(f"patch_sizes={ps!r} has duplicates")
            if ps[0] != min(ps):
                raise err(
                    f"patch_sizes={ps!r} must list the full-resolution (smallest) patch size first"
                )
            if self.image_width % self.image_heads:
                raise err(
                    f"image_width={self.image_width} is not divisible by image_heads={self.image_heads}"
                )
        elif self.patch_sizes:
            raise err(
                f"patch_sizes={self.patch_sizes!r} must be () for image_kind={self.image_kind!r}"
            )
        if self.text_kind == "transformer" and self.text_width % self.text_heads:
            raise err(
                f"text_width={self.text_width} is not divisible by text_heads={self.text_heads}"
            )
        if self.context_length < 2:
            raise err(f"context_length={self.context_length!r} must be >= 2 (text + [EOS])")

    @property
    def image_hidden(self) -> int:
        return int(self.image_width * self.mlp_ratio)

    @property
    def text_hidden(self) -> int:
        return int(self.text_width * self.mlp_ratio)


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)}


def coerce_fields(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check names and types of config fields; return them with tuples normalised.

    Ints must be ints (not bools), floats accept ints, ``patch_sizes`` accepts any sequence of ints.
    Strings are not parsed here (``jestkit.config`` turns ``key=value`` text into values).
    """
    types = _field_types()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            raise JestkitError(
                f"{source}: unknown model config key {key!r} (value {value!r}); valid keys: "
                + ", ".join(sorted(types))
            )
        t = types[key]
        bad = JestkitError(
            f"{source}: {key}={value!r} has type {type(value).__name__}, expected {t}"
        )
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif t == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)
        elif t == "str":
            if not isinstance(value, str):
                raise bad
        elif t.startswith("tuple"):
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
                raise bad
            if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise bad
            value = tuple(value)
        out[key] = value
    return out


class DualEncoder(nn.Module):
    """Image tower + text tower + learnable SigLIP logit scale and bias.

    ``encode_image`` accepts uint8 images (scaled to [-1, 1] here) or float images already
    normalised to that range; both encoders return L2-normalised ``[B, embed_dim]`` embeddings.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        # Built on the meta device, then materialised where the caller builds (the default device,
        # e.g. inside `with torch.device("cuda"):`) and initialised once from `config.init_seed`:
        # equal configs give equal weights and the global RNG is never touched.
        device = torch.empty(()).device
        with torch.device("meta"):
            self.visual = image_tower(config.image_kind).from_config(config)
            self.text = text_tower(config.text_kind).from_config(config)
            self.logit_scale = nn.Parameter(torch.empty(()))
            self.logit_bias = nn.Parameter(torch.empty(()))
        self.to_empty(device=device)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """(Re-)initialise every weight; by default from a generator seeded by ``config.init_seed``."""
        device = self.logit_scale.device
        if device.type == "meta":
            return
        if generator is None:
            generator = rng.generator(self.config.init_seed, "model-init", device=device)
        self.visual.reset_parameters(generator)
        self.text.reset_parameters(generator)
        self.logit_scale.fill_(self.config.init_logit_scale)
        self.logit_bias.fill_(self.config.init_logit_bias)

    # Stable attributes for tools and tests.
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self.config.patch_sizes)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # ---- validation -------------------------------------------------------------------------
    def check_images(self, images: Tensor, patch_size: int | None = None) -> None:
        """Raise a :class:`JestkitError` for images or a patch size this model cannot take."""
        if not isinstance(images, Tensor):
            raise JestkitError(
                f"images: expected a Tensor [B, C, H, W], got {type(images).__name__}"
            )
        want = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise JestkitError(
                f"images: shape {tuple(images.shape)} does not match [B, {want[0]}, {want[1]}, {want[2]}] "
                f"(in_channels={self.in_channels}, image_size={self.image_size})"
            )
        if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
            raise JestkitError(
                f"images: dtype {images.dtype} must be torch.uint8 or floating point"
            )
        if patch_size is not None and patch_size not in self.patch_sizes:
            if not self.patch_sizes:
                raise JestkitError(
                    f"patch_size={patch_size!r}: model {self.config.name!r} ({self.config.image_kind} "
                    "image tower) has no patch sizes; pass patch_size=None"
                )
            raise JestkitError(
                f"patch_size={patch_size!r} is not one of model {self.config.name!r}'s patch_sizes "
                f"{self.patch_sizes} (image_size={self.image_size})"
            )

    def check_tokens(self, tokens: Tensor) -> None:
        """Shape/dtype checks and one min/max check of the ids (skipped on the meta device)."""
        if not isinstance(tokens, Tensor):
            raise JestkitError(f"tokens: expected a LongTensor [B, L], got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise JestkitError(f"tokens: dtype {tokens.dtype} must be torch.int64 (token ids)")
        if tokens.ndim != 2 or not (1 <= tokens.shape[1] <= self.context_length):
            raise JestkitError(
                f"tokens: shape {tuple(tokens.shape)} must be [B, L] with 1 <= L <= "
                f"context_length={self.context_length}"
            )
        if tokens.numel() and not tokens.is_meta:
            lo, hi = (int(v) for v in torch.aminmax(tokens))
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise JestkitError(
                    f"tokens: id {bad} is outside [0, vocab_size={self.vocab_size}) "
                    "(was the tokenizer trained with a larger vocabulary than the model?)"
                )

    # ---- encoders ---------------------------------------------------------------------------
    def encode_image(
        self,
        images: Tensor,
        patch_size: int | None = None,
        *,
        normalize: bool = True,
        validate: bool = True,
    ) -> Tensor:
        """``[B, C, H, W]`` uint8 or normalised float images -> ``[B, embed_dim]``.

        ``patch_size`` picks the FlexiViT resolution (None = full resolution, ``patch_sizes[0]``).
        ``validate=False`` skips the checks on a hot path whose input was checked once.
        """
        if validate:
            self.check_images(images, patch_size)
        dtype = self.logit_scale.dtype
        if images.dtype == torch.uint8:
            images = images.to(dtype).mul_(1.0 / 127.5).sub_(1.0)
        elif images.dtype != dtype:
            images = images.to(dtype)
        x = self.visual(images, patch_size) if self.patch_sizes else self.visual(images)
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(
        self, tokens: Tensor, *, normalize: bool = True, validate: bool = True
    ) -> Tensor:
        """``[B, L]`` token ids (pad id 0, L <= context_length) -> ``[B, embed_dim]``."""
        if validate:
            self.check_tokens(tokens)
        x = self.text(tokens)
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def forward(
        self,
        images: Tensor,
        tokens: Tensor,
        patch_size: int | None = None,
        *,
        validate: bool = True,
        n_low: int = 0,
        low_patch_size: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(image_emb, text_emb, scale, bias)`` like open_clip's SigLIP; ``scale = exp(logit_scale)``.

        Multi-resolution training (Flexi-JEST): the first ``n_low`` images are encoded at
        ``low_patch_size``, the rest at ``patch_size``; row i is still image i. It lives in the
        forward so that a DistributedDataParallel wrapper sees one forward per step.
        """
        if n_low:
            m = images.shape[0]
            parts = [self.encode_image(images[:n_low], low_patch_size, validate=validate)]
            if n_low < m:
                parts.append(self.encode_image(images[n_low:], patch_size, validate=validate))
            img = torch.cat(parts) if len(parts) > 1 else parts[0]
        else:
            img = self.encode_image(images, patch_size, validate=validate)
        txt = self.encode_text(tokens, validate=validate)
        return img, txt, self.logit_scale.exp(), self.logit_bias

    def embeddings(
        self,
        images: Tensor,
        tokens: Tensor,
        patch_size: int | None = None,
        *,
        validate: bool = True,
    ) -> Embeddings:
        """Both embeddings plus this model's scale and bias as a :class:`jestkit.scoring.Embeddings`.

        Gradients flow as usual; wrap the call in ``torch.no_grad()`` for scoring.
        """
        from jestkit.scoring import Embeddings

        img, txt, scale, bias = self(images, tokens, patch_size, validate=validate)
        return Embeddings(image=img, text=txt, scale=scale, bias=bias)

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, patch_sizes={self.patch_sizes}"
