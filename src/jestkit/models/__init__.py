"""Image-text dual encoders: FlexiViT / MLP / CNN image towers, transformer / MLP text towers.

from jestkit.models import create_model, Tokenizer
model = create_model("vit-tiny-56")
tok = Tokenizer.train(captions, vocab_size=512, context_length=model.context_length)
img = model.encode_image(images_uint8, patch_size=14)   # low-res FlexiViT view
txt = model.encode_text(tok(captions))
"""

from jestkit.models.dual_encoder import DualEncoder, ModelConfig
from jestkit.models.io import (
    load_pretrained,
    model_fingerprint,
    read_config,
    save_pretrained,
    write_model_files,
)
from jestkit.models.registry import create_model, get_model_config, list_models, register_model
from jestkit.models.text import trim_padding
from jestkit.models.tokenizer import Tokenizer
from jestkit.models.vit import FlexiViT, pi_resize_patch_embed, resample_pos_embed

__all__ = [
    "DualEncoder",
    "FlexiViT",
    "ModelConfig",
    "Tokenizer",
    "create_model",
    "get_model_config",
    "list_models",
    "load_pretrained",
    "model_fingerprint",
    "pi_resize_patch_embed",
    "read_config",
    "register_model",
    "resample_pos_embed",
    "save_pretrained",
    "trim_padding",
    "write_model_files",
]
