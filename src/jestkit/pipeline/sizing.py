"""How long the learners train by default: until the uniform baseline stops improving (#14).

A fixed formula (passes over the pool) can stop a baseline before it learns anything, and a
speed-up measured against a baseline that never learned is meaningless. So by default the
uniform baseline trains in segments of a fixed step sequence (8 evaluations, then +25% each
time) and stops once its eval metric has not gained more than one chance level (1 / eval size)
over the last quarter of its evaluations, or at ``--max-steps``. Every other method then trains
that many steps. The learning rate is constant after warmup in these runs, so the segments add
up to exactly one run of the final length (and JEST's runs get the same schedule).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jestkit.metrics import final_record, read_metrics
from jestkit.pipeline.options import PLATEAU_MIN_EVALS
from jestkit.pipeline.util import say


def eval_series(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of each evaluation after step 0, by step (a resumed run's repeats merged)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    points: dict[int, float] = {}
    for row in read_metrics(path):
        v, step = row.get(metric), row.get("step")
        if isinstance(v, (int, float)) and isinstance(step, int) and step > 0:
            points[step] = float(v)
    return sorted(points.items())


def plateaued(values: list[float], tol: float) -> bool:
    """No gain above ``tol`` over the last quarter of the evaluations (8 at least)."""
    k = len(values)
    if k < PLATEAU_MIN_EVALS:
        return False
    q = max(1, math.ceil(k / 4))
    return max(values[-q:]) <= max(values[:-q]) + tol


def targets(eval_every: int, max_steps: int) -> list[int]:
    """The segment ends: 8 evaluations, then 25% more each time, capped at ``max_steps``."""
    out, k = [], PLATEAU_MIN_EVALS
    while True:
        t = min(max_steps, k * eval_every)
        out.append(t)
        if t >= max_steps:
            return out
        k += max(1, math.ceil(k / 4))


def train_to_plateau(
    cfg: Any, run_dir: Path, max_steps: int, tol: float, metric: str, quiet: bool
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Train ``cfg`` (uniform) segment by segment until its metric plateaus or ``max_steps``.

    Returns (final record, "done" | "resumed" | "skipped", a summary for the report: steps,
    why it stopped, the evaluations). Re-running continues where it stopped.
    """
    from jestkit.checkpoint import latest_checkpoint
    from jestkit.train import train

    ends = targets(cfg.train.eval_every, max_steps)
    status = "skipped"
    while True:
        final = final_record(run_dir)
        values = [v for _, v in eval_series(run_dir, metric)]
        if final is not None:
            if plateaued(values, tol):
                why = "plateau"
                break
            if final["step"] >= max_steps:
                why = "cap"
                break
        ckpt = latest_checkpoint(run_dir)
        done = 0 if ckpt is None else int(ckpt.name.split("-")[-1])
        if final is not None:
            done = max(done, int(final["step"]))
        cfg.train.steps = next(t for t in ends if t > done)
        if ckpt is not None and status == "skipped":
            status = "resumed"
        elif status == "skipped":
            status = "done"
        say(
            f"  uniform: training to step {cfg.train.steps} (until its eval metric plateaus)", quiet
        )
        final = train(cfg, run_dir, resume="latest")
        if final.get("interrupted"):
            return final, status, {}
    series = eval_series(run_dir, metric)
    info = {
        "rule": "plateau",
        "steps": int(final["step"]),
        "stopped": why,
        "max_steps": max_steps,
        "evaluations": len(series),
        "tolerance": tol,
        "series": series,
    }
    return final, status, info


def describe_rule(info: dict[str, Any], metric: str) -> str:
    """One sentence for the report: how the run length was chosen."""
    short = metric.split("/")[-1]
    if info.get("rule") == "plateau":
        if info["stopped"] == "plateau":
            return (
                f"{info['steps']} steps: the uniform baseline trained until its {short} stopped "
                f"improving (no gain above one chance level, {info['tolerance']:.4g}, over the "
                f"last quarter of its {info['evaluations']} evaluations); every method trained "
                "as long"
            )
        return (
            f"{info['steps']} steps: the cap (--max-steps); the uniform baseline was still "
            f"improving after {info['evaluations']} evaluations, so every method may gain from "
            "a longer run"
        )
    if info.get("rule") == "epochs":
        return f"{info['steps']} steps: --epochs {info['epochs']:g} passes of batches over POOL"
    return f"{info['steps']} steps: given by --steps"
