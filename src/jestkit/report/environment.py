"""The environment a suite ran in: what a re-run must match to reproduce its numbers exactly.

CPU runs are bit-identical only on the same CPU model, library versions and threads per run
(different math-library kernels change the last bits, and training amplifies them); elsewhere
they reproduce only statistically. ``jestkit reproduce`` records this in suite.json
(``"environment"``); the report copies it, and falls back to the machine that builds the report.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith(("model name", "hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def jestkit_commit() -> str | None:
    """The git commit of the jestkit source in use (+ "-dirty" with local changes), if any."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def collect_environment(threads_per_run: int | None = None, jobs: int | None = None) -> dict:
    """CPU model and count, OS, Python and library versions, threads per run, jestkit commit."""
    import torch

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "numpy": _version("numpy"),
        "tokenizers": _version("tokenizers"),
        "scipy": _version("scipy"),
        "jestkit": _version("jestkit"),
        "jestkit_commit": jestkit_commit(),
        "threads_per_run": threads_per_run,
        "jobs": jobs,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def suite_environment(suite: dict[str, Any]) -> dict[str, Any]:
    """The environment suite.json recorded, else this machine's (marked as such)."""
    env = suite.get("environment")
    if isinstance(env, dict) and env:
        return {**env, "source": "recorded by jestkit reproduce when the suite ran"}
    return {
        **collect_environment(),
        "source": "the machine that built this report (the suite recorded none; its runs may "
        "have run elsewhere)",
    }
