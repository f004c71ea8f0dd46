"""Export and import: ``model.safetensors`` + ``config.json`` (model config and tokenizer).

A training checkpoint is an exported model plus ``train_state.pt``, so ``load_pretrained`` also
opens checkpoints. ``model_fingerprint`` identifies a model's exact weights (it keys reference
caches: embeddings cached from one model are refused for another).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from jestkit.errors import JestkitError
from jestkit.fsutil import replace_dir
from jestkit.models.dual_encoder import DualEncoder, ModelConfig
from jestkit.models.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "jestkit-dual-encoder"
FORMAT_VERSION = 1


def _config_json(config: ModelConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def _check_pair(model: DualEncoder, tokenizer: Tokenizer) -> None:
    from jestkit.models.factory import FactoryModel

    if isinstance(model, FactoryModel):  # a user's model: its config names the factory
        return
    if not isinstance(model, DualEncoder):
        raise JestkitError(f"model: expected a jestkit DualEncoder, got {type(model).__name__}")
    if not isinstance(tokenizer, Tokenizer):
        raise JestkitError(
            f"tokenizer: expected a jestkit Tokenizer, got {type(tokenizer).__name__}"
        )
    if tokenizer.vocab_size > model.vocab_size:
        raise JestkitError(
            f"tokenizer vocab_size={tokenizer.vocab_size} exceeds the model's vocab_size={model.vocab_size}"
        )
    if tokenizer.context_length != model.context_length:
        raise JestkitError(
            f"tokenizer context_length={tokenizer.context_length} != model context_length={model.context_length}"
        )


def write_model_files(
    directory: str | os.PathLike, model: DualEncoder, tokenizer: Tokenizer
) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if missing).

    Not atomic on its own (see :func:`save_pretrained`); files are fsynced so that a caller's
    atomic rename publishes complete files.
    """
    _check_pair(model, tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
    }
    with open(directory / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    with open(directory / WEIGHTS_FILE, "rb") as f:
        os.fsync(f.fileno())


def save_pretrained(directory: str | os.PathLike, model: DualEncoder, tokenizer: Tokenizer) -> Path:
    """Export atomically: write into a temporary sibling directory, then rename it into place.

    An existing ``directory`` is replaced; readers never see a half-written export.
    """
    _check_pair(model, tokenizer)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write_model_files(tmp, model, tokenizer)
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, Tokenizer]:
    """The model config and tokenizer stored in ``directory/config.json``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise JestkitError(
            f"{path}: not found (is {str(directory)!r} an exported model or checkpoint?)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise JestkitError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise JestkitError(f"{path}: format={fmt!r}, expected {FORMAT!r}")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise JestkitError(
            f"{path}: format_version={data.get('format_version')!r} is newer than this jestkit ({FORMAT_VERSION})"
        )
    for key in ("model", "tokenizer"):
        if key not in data:
            raise JestkitError(f"{path}: missing key {key!r}")
    config = ModelConfig.from_dict(data["model"], source=f"{path} 'model'")
    tokenizer = Tokenizer.from_dict(data["tokenizer"])
    return config, tokenizer


def load_pretrained(
    directory: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[DualEncoder, Tokenizer]:
    """Load ``(model, tokenizer)`` from an export or a checkpoint directory onto ``device``.

    Weights that do not match the stored config (missing, unexpected, or differently shaped
    tensors) raise a :class:`JestkitError` naming the tensor.
    """
    from jestkit.models.factory import factory_export, is_factory, load_factory

    if is_factory(directory) or factory_export(directory):  # py:module:function (#14)
        return load_factory(directory, device)
    config, tokenizer = read_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise JestkitError(f"{path}: not found")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise JestkitError(f"{path}: cannot read safetensors ({e})") from None
    with torch.device("meta"):
        model = DualEncoder(config)
    expected = model.state_dict()
    for key in sorted(expected):
        if key not in state:
            raise JestkitError(
                f"{path}: tensor {key!r} is missing (weights of another model config?)"
            )
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise JestkitError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, config {config.name!r} "
                f"expects {tuple(expected[key].shape)} (weights of another model config?)"
            )
    for key in sorted(state):
        if key not in expected:
            raise JestkitError(
                f"{path}: unexpected tensor {key!r} (weights of another model config?)"
            )
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval(), tokenizer


def model_fingerprint(model: DualEncoder) -> str:
    """sha256 over the config JSON and every state_dict tensor (sorted keys, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(_config_json(model.config).encode())
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach()
        h.update(f"\0{key}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
