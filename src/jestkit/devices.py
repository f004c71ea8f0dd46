"""Which device to run on: one resolver behind every ``--device`` flag and ``train.device``, and
the device a model lives on. A core helper: torch only, no models or data."""

from __future__ import annotations

from typing import Any

import torch

from jestkit.errors import JestkitError, check


def resolve_device(
    name: str, flag: str = "--device", local_rank: int | None = None
) -> torch.device:
    """``auto`` is CUDA when present, else CPU; any other name must exist on this machine.

    ``local_rank`` (one process per GPU, as torchrun starts them) makes a bare ``cuda`` or ``auto``
    mean this process's GPU. ``flag`` names the argument in errors (``--device 'tpu9'`` or
    ``train.device='tpu9'``).
    """
    label = f"{flag} {name!r}" if flag.startswith("-") else f"{flag}={name!r}"
    resolved = name
    if resolved == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    if resolved == "cuda" and local_rank is not None:
        resolved = f"cuda:{local_rank}"
    try:
        device = torch.device(resolved)
    except (RuntimeError, ValueError) as e:
        raise JestkitError(f"{label} is not a device: {e}") from e
    if device.type == "cuda":
        check(torch.cuda.is_available(), f"{label}: CUDA is not available on this machine")
        check(
            device.index is None or device.index < torch.cuda.device_count(),
            f"{label}: only {torch.cuda.device_count()} CUDA devices",
        )
    return device


def model_device(model: Any, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter (``fallback`` for a parameterless model)."""
    params = getattr(model, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    return p.device if p is not None else torch.device(fallback)
