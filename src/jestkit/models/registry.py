"""Named model configs (timm-style ``create_model`` / ``list_models``) and tower builders.

Presets, smallest first (see docs/models.md for what each is for):

- ``mlp-tiny-28`` / ``mlp-tiny-56`` / ``mlp-tiny-32c``: MLP image tower + MLP text tower; the
  fastest CPU runs (Fashion-MNIST items, the 56x56 "fashion-scenes" canvas, 32x32 colour).
- ``cnn-tiny-56``: a small strided CNN image tower for the 56x56 canvas.
- ``vit-tiny-28`` / ``vit-tiny-56`` / ``vit-tiny-32c``: tiny FlexiViTs with two patch sizes, the
  second with about 4x fewer tokens (paper: 16 -> 32), for Flexi-JEST on a CPU.
- ``vit-small-56``: a wider/deeper FlexiViT for the 56x56 canvas (e.g. a stronger reference).
- ``vit-b16``: the paper's SigLIP ViT-B/16 (MAP head, patch sizes 16, 28, 32) with its 12-layer
  text tower, for GPUs.
"""

from __future__ import annotations

from typing import Any

from jestkit.errors import JestkitError
from jestkit.models.dual_encoder import DualEncoder, ModelConfig

_TINY_TEXT_MLP = dict(
    text_kind="mlp", vocab_size=512, context_length=32, text_width=64, text_depth=1
)
_TINY_TEXT_TF = dict(
    text_kind="transformer",
    vocab_size=512,
    context_length=32,
    text_width=64,
    text_depth=1,
    text_heads=2,
)

_PRESETS: dict[str, dict[str, Any]] = {
    "mlp-tiny-28": dict(
        image_kind="mlp", image_size=28, in_channels=1, patch_sizes=(), image_width=256, image_depth=1,
        mlp_ratio=2.0, embed_dim=64, **_TINY_TEXT_MLP,
    ),
    "mlp-tiny-56": dict(
        image_kind="mlp", image_size=56, in_channels=1, patch_sizes=(), image_width=256, image_depth=1,
        mlp_ratio=2.0, embed_dim=64, **_TINY_TEXT_MLP,
    ),
    "mlp-tiny-32c": dict(
        image_kind="mlp", image_size=32, in_channels=3, patch_sizes=(), image_width=256, image_depth=1,
        mlp_ratio=2.0, embed_dim=64, **_TINY_TEXT_MLP,
    ),
    "cnn-tiny-56": dict(
        image_kind="cnn", image_size=56, in_channels=1, patch_sizes=(), image_width=16, image_depth=3,
        mlp_ratio=2.0, embed_dim=64, **_TINY_TEXT_MLP,
    ),
    "vit-tiny-28": dict(
        image_kind="vit", image_size=28, in_channels=1, patch_sizes=(4, 7), image_width=64,
        image_depth=2, image_heads=2, mlp_ratio=2.0, pooling="gap", embed_dim=64, **_TINY_TEXT_TF,
    ),
    "vit-tiny-56": dict(
        image_kind="vit", image_size=56, in_channels=1, patch_sizes=(7, 14), image_width=64,
        image_depth=2, image_heads=2, mlp_ratio=2.0, pooling="gap", embed_dim=64, **_TINY_TEXT_TF,
    ),
    "vit-tiny-32c": dict(
        image_kind="vit", image_size=32, in_channels=3, patch_sizes=(4, 8), image_width=64,
        image_depth=2, image_heads=2, mlp_ratio=2.0, pooling="gap", embed_dim=64, **_TINY_TEXT_TF,
    ),
    "vit-small-56": dict(
        image_kind="vit", image_size=56, in_channels=1, patch_sizes=(7, 14), image_width=128,
        image_depth=4, image_heads=4, mlp_ratio=4.0, pooling="gap", embed_dim=128,
        text_kind="transformer", vocab_size=512, context_length=32, text_width=128, text_depth=2,
        text_heads=4,
    ),
    # SigLIP ViT-B/16 (Zhai et al. 2023) as used by JEST: 224px, MAP head, 12-layer text tower of
    # width 768 over 64 tokens, [EOS] pooling, 768-d embeddings. Set vocab_size to your tokenizer's.
    "vit-b16": dict(
        image_kind="vit", image_size=224, in_channels=3, patch_sizes=(16, 28, 32), image_width=768,
        image_depth=12, image_heads=12, mlp_ratio=4.0, pooling="map", text_kind="transformer",
        vocab_size=32000, context_length=64, text_width=768, text_depth=12, text_heads=12,
        text_pooling="eos", embed_dim=768,
    ),
}  # fmt: skip


def list_models() -> list[str]:
    """Names of the registered model configs."""
    return sorted(_PRESETS)


def register_model(
    name: str, config: ModelConfig | dict[str, Any], overwrite: bool = False
) -> None:
    """Add a named config (e.g. from a user's code) so ``create_model(name)`` finds it."""
    if not overwrite and name in _PRESETS:
        raise JestkitError(f"model name {name!r} is already registered (pass overwrite=True)")
    values = config.to_dict() if isinstance(config, ModelConfig) else dict(config)
    values.pop("name", None)
    ModelConfig(name=name, **values)  # validate now, not at first use
    _PRESETS[name] = values


def get_model_config(name: str, /, **overrides: Any) -> ModelConfig:
    """The named config with ``overrides`` (ModelConfig fields) applied and validated."""
    if not isinstance(name, str) or name not in _PRESETS:
        raise JestkitError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return ModelConfig(name=name, **_PRESETS[name]).replace(**overrides)


def create_model(name: str, /, **overrides: Any) -> DualEncoder:
    """A freshly initialised ``DualEncoder`` of the named config (``overrides``: ModelConfig fields).

    To build straight onto a device (or the meta device), use ``with torch.device(...):``.
    """
    return DualEncoder(get_model_config(name, **overrides))
