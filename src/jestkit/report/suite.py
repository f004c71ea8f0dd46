"""Loading a suite folder: suite.json and every run's metrics.jsonl, each run with its status."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jestkit.errors import JestkitError, check
from jestkit.metrics import read_metrics

DEFAULT_METRIC = "eval/retrieval_r1"


@dataclass
class Run:
    """One run of the suite: its suite.json entry plus what its metrics.jsonl says."""

    name: str
    method: str
    seed: int
    dir: Path
    info: dict[str, Any]
    status: str = "missing"  # finished | partial | missing | no-metric
    records: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return self.info.get("kind") or "learner"

    @property
    def family(self) -> str:
        return self.info.get("family") or "default"

    @property
    def steps(self) -> int | None:
        s = self.info.get("steps")
        if s is None and self.final is not None:
            s = self.final.get("step")
        return None if s is None else int(s)

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), int)]
        return max(steps) if steps else None

    def step_lines(self) -> list[dict[str, Any]]:
        """Training-step records (not the step-0 eval line, not the final line)."""
        return [r for r in self.records if not r.get("final") and "loss" in r]


def _finite(v: Any) -> float:
    """A float, NaN for null / non-numeric values (metrics.jsonl writes non-finite as null)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def load_suite(suite_dir: str | Path) -> tuple[dict[str, Any], list[Run]]:
    """suite.json and every run it lists, each with its metrics and status."""
    suite_dir = Path(suite_dir)
    check(suite_dir.is_dir(), f"suite_dir {str(suite_dir)!r}: no such folder")
    path = suite_dir / "suite.json"
    check(path.is_file(), f"suite_dir {str(suite_dir)!r}: no suite.json (not a suite folder)")
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise JestkitError(f"{path}: cannot read it as JSON ({e})") from None
    check(
        isinstance(suite, dict) and isinstance(suite.get("runs"), list),
        f"{path}: expected an object with a 'runs' list, got {str(suite)[:120]!r}",
    )
    runs: list[Run] = []
    seen: set[str] = set()
    for i, entry in enumerate(suite["runs"]):
        check(
            isinstance(entry, dict) and all(k in entry for k in ("name", "method")),
            f"{path}: runs[{i}] needs 'name' and 'method', got {str(entry)[:120]!r}",
        )
        name = str(entry["name"])
        check(name not in seen, f"{path}: run name {name!r} is listed twice")
        seen.add(name)
        run_dir = Path(entry.get("dir") or Path("runs") / name)
        run = Run(
            name=name,
            method=str(entry["method"]),
            seed=int(entry.get("seed", 0)),
            dir=run_dir if run_dir.is_absolute() else suite_dir / run_dir,
            info=entry,
        )
        metrics = run.dir / "metrics.jsonl"
        if metrics.is_file():
            run.records = read_metrics(metrics)
            run.final = next((r for r in reversed(run.records) if r.get("final")), None)
            run.status = "finished" if run.final is not None else "partial"
        runs.append(run)
    metric = suite.get("target_metric") or DEFAULT_METRIC
    for run in runs:
        if run.status == "finished" and math.isnan(_finite(run.final.get(metric))):
            run.status = "no-metric"  # no eval, or a non-finite final metric: not comparable
    return suite, runs
