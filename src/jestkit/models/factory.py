"""Your own open_clip-style model, named ``py:package.module:function``, as learner or reference.

The function takes no arguments and returns ``(model, preprocess, tokenizer)`` (or a dict with
those keys), the shape of open_clip's API::

    # mymodels.py, on a machine with open_clip
    import open_clip
    def siglip_b16():
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-SigLIP", pretrained="webli")
        return model, preprocess, open_clip.get_tokenizer("ViT-B-16-SigLIP")

- ``model``: an ``nn.Module`` with ``encode_image(images)``, ``encode_text(tokens)``,
  ``logit_scale`` (log of the multiplier t) and ``logit_bias`` (c), like open_clip's SigLIP.
- ``preprocess``: a dict ``{"image_size": 224, "mean": [...], "std": [...], "resize": "crop"}``
  or a torchvision-style ``Compose`` whose ``Resize``/``CenterCrop`` size and ``Normalize``
  mean/std are read (open_clip's are); falls back to ``model.visual.image_size`` /
  ``image_mean`` / ``image_std``.
- ``tokenizer``: ``tokenizer(list_of_captions) -> LongTensor [B, L]``.

jestkit never imports open_clip. :class:`FactoryModel` wraps the model so the rest of jestkit sees
its own interface (uint8 images in, L2-normalised embeddings out, ``embeddings()``, a config to
store): jestkit's data stays ``uint8 [C, S, S]``; the wrapper resizes to the model's input size
if needed, repeats grey to RGB, and normalises with the model's mean/std. Its FLOPs are measured
once with ``torch.utils.flop_counter`` (no analytic formula applies to an arbitrary model).

An export of a factory model (a checkpoint of a ``py:`` learner) is ``config.json`` naming the
factory plus ``model.safetensors``; loading calls the factory, then loads the weights.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jestkit.errors import JestkitError, check

PREFIX = "py:"
FLOPS_SOURCE = "measured once with torch.utils.flop_counter"
REQUIRED = ("encode_image", "encode_text", "logit_scale", "logit_bias")


def is_factory(name: Any) -> bool:
    """True for a ``py:package.module:function`` model name."""
    return isinstance(name, (str, os.PathLike)) and str(name).startswith(PREFIX)


def resolve_factory(spec: str) -> Callable[[], Any]:
    """The function ``spec`` names; a clear error for a malformed spec, module or function."""
    check(is_factory(spec), f"{spec!r}: a model factory is named 'py:package.module:function'")
    module_name, sep, func_name = str(spec)[len(PREFIX) :].rpartition(":")
    check(
        bool(sep and module_name and func_name),
        f"{spec!r}: expected 'py:package.module:function' (module path, a colon, a function name)",
    )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise JestkitError(
            f"{spec!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?"
        ) from None
    fn = getattr(module, func_name, None)
    check(fn is not None, f"{spec!r}: module {module_name!r} has no attribute {func_name!r}")
    check(callable(fn), f"{spec!r}: {module_name}.{func_name} is not callable")
    return fn


@dataclass(frozen=True)
class FactoryConfig:
    """What jestkit records about a factory model (stored in exports; part of its fingerprint)."""

    name: str
    image_size: int
    in_channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: str = "crop"
    context_length: int = 0
    vocab_size: int = 0
    patch_sizes: tuple[int, ...] = field(default=())
    image_kind: str = "factory"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("mean", "std", "patch_sizes"):
            d[k] = list(d[k])
        return d


def _read_preprocess(spec: str, preprocess: Any, model: Any) -> dict[str, Any]:
    """Image size, mean, std and resize mode from a dict or a torchvision-style Compose."""
    if isinstance(preprocess, dict):
        out = dict(preprocess)
    else:
        out = {}
        steps = getattr(preprocess, "transforms", None)
        for t in steps or ():
            kind = type(t).__name__.lower()
            size = getattr(t, "size", None)
            if size is not None and ("crop" in kind or "image_size" not in out):
                s = size if isinstance(size, int) else (size[0] if len(size) else None)
                if isinstance(s, int):
                    out["image_size"] = s
                if "crop" in kind:
                    out["resize"] = "crop"
                elif not isinstance(size, int) and len(size) == 2:
                    out.setdefault("resize", "stretch")
            if getattr(t, "mean", None) is not None and getattr(t, "std", None) is not None:
                out["mean"], out["std"] = t.mean, t.std
    visual = getattr(model, "visual", None)
    if "image_size" not in out and visual is not None:
        s = getattr(visual, "image_size", None)
        out["image_size"] = s if isinstance(s, int) else (s[0] if s else None)
    if "mean" not in out and getattr(visual, "image_mean", None) is not None:
        out["mean"], out["std"] = visual.image_mean, visual.image_std
    size = out.get("image_size")
    check(
        isinstance(size, int) and size > 0,
        f"{spec!r}: cannot read the input image size from its preprocess "
        f"({type(preprocess).__name__}); return a dict such as "
        "{'image_size': 224, 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]} as the preprocess",
    )
    channels = int(out.get("channels", 3))
    mean = tuple(float(x) for x in out.get("mean", (0.5,) * channels))
    std = tuple(float(x) for x in out.get("std", (0.5,) * channels))
    check(
        len(mean) == channels and len(std) == channels and all(s > 0 for s in std),
        f"{spec!r}: preprocess mean {mean} / std {std} do not match {channels} channels",
    )
    resize = str(out.get("resize", "crop"))
    check(resize in ("crop", "stretch", "pad"), f"{spec!r}: preprocess resize {resize!r}")
    return {"image_size": size, "in_channels": channels, "mean": mean, "std": std, "resize": resize}


class FactoryTokenizer:
    """A user's tokenizer behind jestkit's interface: ``tok(captions) -> LongTensor [B, L]``."""

    def __init__(self, spec: str, tokenizer: Any):
        check(
            callable(tokenizer),
            f"{spec!r}: the factory's tokenizer ({type(tokenizer).__name__}) is not callable; it "
            "must map a list of captions to a LongTensor [B, L]",
        )
        self.spec, self.tokenizer = spec, tokenizer
        length = getattr(tokenizer, "context_length", None)
        if not isinstance(length, int):
            length = int(self(["a"]).shape[1])
        self.context_length = length
        vocab = getattr(tokenizer, "vocab_size", None)
        self.vocab_size = int(vocab) if isinstance(vocab, int) else 0

    def __call__(self, captions: Sequence[str]) -> Tensor:
        out = self.tokenizer(list(captions))
        return torch.as_tensor(out, dtype=torch.long)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "factory",
            "factory": self.spec,
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
        }


class FactoryModel(nn.Module):
    """A user's open_clip-style model with jestkit's model interface (see the module docstring)."""

    resizes_images = True  # takes jestkit images of any size/channels: resized here

    def __init__(self, config: FactoryConfig, model: nn.Module):
        super().__init__()
        self.config = config
        self.model = model
        self.register_buffer("_mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)
        self._flops: dict[tuple[Any, Any], dict[str, int]] = {}

    # The interface the rest of jestkit reads.
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return ()

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale

    @property
    def logit_bias(self) -> Tensor:
        return self.model.logit_bias

    def _pixels(self, images: Tensor) -> Tensor:
        """uint8 [B, C, H, W] (any size, 1 or 3 channels) -> the model's normalised float input."""
        x = images.to(self._mean.dtype) / 255.0
        c = self.config.in_channels
        if x.shape[1] != c:
            check(x.shape[1] == 1, f"images: {x.shape[1]} channels, model takes {c}")
            x = x.expand(-1, c, -1, -1)
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            x = nn.functional.interpolate(
                x, size=(s, s), mode="bicubic", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        return (x - self._mean) / self._std

    def encode_image(self, images: Tensor, patch_size: int | None = None, **_: Any) -> Tensor:
        """uint8 images (jestkit data) are preprocessed here; float images are passed as given."""
        check(
            patch_size is None,
            f"patch_size={patch_size!r}: model {self.config.name!r} has no patch sizes (use None)",
        )
        x = self._pixels(images) if images.dtype == torch.uint8 else images
        return nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)

    def encode_text(self, tokens: Tensor, **_: Any) -> Tensor:
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def forward(
        self, images: Tensor, tokens: Tensor, patch_size: int | None = None, **_: Any
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        img = self.encode_image(images, patch_size)
        txt = self.encode_text(tokens)
        return img, txt, self.logit_scale.exp(), self.logit_bias

    def embeddings(self, images: Tensor, tokens: Tensor, patch_size: int | None = None, **_: Any):
        from jestkit.scoring import Embeddings

        img, txt, scale, bias = self(images, tokens, patch_size)
        return Embeddings(image=img, text=txt, scale=scale, bias=bias)

    def measured_flops(
        self, patch_size: int | None = None, text_length: int | None = None
    ) -> dict[str, int]:
        """Forward FLOPs per example, counted once on one example by ``torch.utils.flop_counter``."""
        from torch.utils.flop_counter import FlopCounterMode

        key = (patch_size, text_length)
        if key not in self._flops:
            device = self._mean.device
            s, c = self.config.image_size, self.config.in_channels
            length = text_length or self.config.context_length or 1
            img = torch.zeros(1, c, s, s, device=device)
            tok = torch.zeros(1, length, dtype=torch.long, device=device)
            counts = {}
            was = self.training
            self.eval()
            with torch.no_grad():
                for part, fn in (
                    ("image", lambda: self.model.encode_image((img - self._mean) / self._std)),
                    ("text", lambda: self.model.encode_text(tok)),
                ):
                    mode = FlopCounterMode(display=False)
                    with mode:
                        fn()
                    counts[part] = int(mode.get_total_flops())
            self.train(was)
            self._flops[key] = counts
        return dict(self._flops[key])

    def extra_repr(self) -> str:
        return f"factory={self.config.name!r}, image_size={self.config.image_size}"


def _unpack(spec: str, result: Any) -> tuple[Any, Any, Any]:
    if isinstance(result, dict):
        missing = [k for k in ("model", "preprocess", "tokenizer") if k not in result]
        check(not missing, f"{spec!r}: the factory's dict lacks {missing}")
        return result["model"], result["preprocess"], result["tokenizer"]
    check(
        isinstance(result, (tuple, list)) and len(result) == 3,
        f"{spec!r}: the factory must return (model, preprocess, tokenizer) (open_clip's "
        f"create_model_and_transforms model and val preprocess, and get_tokenizer); got "
        f"{type(result).__name__}",
    )
    return result[0], result[1], result[2]


def _check_model(spec: str, model: Any) -> None:
    missing = [a for a in REQUIRED if getattr(model, a, None) is None]
    check(
        not missing,
        f"{spec!r}: the factory's model ({type(model).__name__}) has no "
        + ", ".join(missing)
        + "; an open_clip-style model needs encode_image(images), encode_text(tokens), "
        "logit_scale and logit_bias (open_clip's SigLIP models have all four)",
    )
    for name in ("encode_image", "encode_text"):
        check(callable(getattr(model, name)), f"{spec!r}: the model's {name} is not callable")
    check(
        isinstance(model, nn.Module),
        f"{spec!r}: the factory's model is a {type(model).__name__}, not a torch.nn.Module",
    )


def create_factory_model(spec: str) -> tuple[FactoryModel, FactoryTokenizer]:
    """Call the factory and wrap its model and tokenizer (weights as the factory made them)."""
    fn = resolve_factory(spec)
    try:
        result = fn()
    except JestkitError:
        raise
    except Exception as e:
        raise JestkitError(f"{spec!r}: the factory raised {type(e).__name__}: {e}") from e
    model, preprocess, tokenizer = _unpack(spec, result)
    _check_model(spec, model)
    pre = _read_preprocess(spec, preprocess, model)
    tok = FactoryTokenizer(spec, tokenizer)
    config = FactoryConfig(
        name=str(spec), context_length=tok.context_length, vocab_size=tok.vocab_size, **pre
    )
    device = next(iter(model.parameters()), torch.empty(())).device
    return FactoryModel(config, model).to(device), tok


_INPUTS: dict[str, tuple[int, int]] = {}


def factory_input(spec: str) -> tuple[int, int]:
    """(image_size, in_channels) of a factory's model (the factory is called once per process)."""
    if spec not in _INPUTS:
        model, _ = create_factory_model(spec)
        _INPUTS[spec] = (model.image_size, model.in_channels)
    return _INPUTS[spec]


def factory_export(directory: str | os.PathLike) -> str | None:
    """The factory named by an export folder's config.json, or None (not a factory export)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        name = data.get("model", {}).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if is_factory(name) else None


def load_factory(
    source: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[FactoryModel, FactoryTokenizer]:
    """A ``py:`` spec (the factory's own weights) or an export of one (its saved weights)."""
    from safetensors.torch import load_file

    if is_factory(source):
        model, tok = create_factory_model(str(source))
        return model.to(device).eval(), tok
    spec = factory_export(source)
    check(spec is not None, f"{source}: not an export of a py: factory model")
    model, tok = create_factory_model(spec)
    weights = Path(source) / "model.safetensors"
    check(weights.is_file(), f"{weights}: not found")
    state = load_file(str(weights), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    check(
        not missing and not unexpected,
        f"{weights}: does not match the model {spec!r} makes now (missing {missing[:3]}, "
        f"unexpected {unexpected[:3]})",
    )
    return model.to(device).eval(), tok


def flops_note(model: Any) -> str:
    """How the FLOPs of ``model`` are counted, for reports."""
    if isinstance(model, FactoryModel):
        return FLOPS_SOURCE
    return "analytic (jestkit.flops)"


def gflops(model: Any) -> float:
    """Forward GFLOPs per image-caption pair (for messages)."""
    from jestkit.flops import forward_flops

    f = forward_flops(model)
    return (f["image"] + f["text"]) / 1e9 if all(math.isfinite(v) for v in f.values()) else 0.0
