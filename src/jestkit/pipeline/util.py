"""Progress lines, warnings and atomic JSON writes shared by the pipeline's stages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jestkit.fsutil import atomic_write


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


def say_skipped(status: str, quiet: bool) -> None:
    if status == "skipped":
        say("  already there and valid: skipped", quiet)


def warn(message: str, warnings: list[str]) -> None:
    warnings.append(message)
    print(f"pipeline: warning: {message}", file=sys.stderr, flush=True)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
