"""Kill/resume campaign: `jestkit train` interrupted at random moments ends as if never interrupted.

    python bench/kill_resume.py --out runs/kill-resume --kills 12 --seed 0      # the quick preset, 300 steps
    python bench/kill_resume.py --out /tmp/kr --kills 6 train.steps=60 train.checkpoint_every=20

Runs `jestkit train --config PRESET --out A` once without interruption and, beside it, the same
run in `B` started again and again with `--resume latest`, each time interrupted by one of:

- ``step``: SIGKILL at a random moment: once the metrics show step s (random), after a random
  fraction of a step's wall time, so it lands inside step s + 1 (or its log/eval/checkpoint);
- ``checkpoint``: SIGKILL inside a checkpoint write, at a random point of the write protocol
  (``jestkit.faults``: model files written / state written / manifest written / renamed /
  committed) of a random one of the checkpoints the process would write;
- ``eval``: SIGKILL inside a random evaluation (at its start, or between retrieval and zero-shot);
- ``metrics``: SIGKILL halfway through writing a random metrics line (a torn last line);
- ``SIGTERM`` / ``SIGINT``: at a random step; the run must save a checkpoint and exit with 0.

After every interruption it checks that each visible ``step-*`` checkpoint and the one
``--resume latest`` will pick verify in full (sizes and sha256 against their manifest), i.e. no
half-written checkpoint is ever visible. Then it runs B to the end and compares: the last line of
``B/metrics.jsonl`` must be byte-identical to A's, and every other line equal except wall-clock
fields. Kill points come from a seeded RNG (``--seed``), so a campaign can be replayed; each
lands within the next 1/k of what remains (k: interruptions still to come), spreading them over
the run, and fault points are visited in turn before any repeats. ``--kinds`` restricts the
kinds (e.g. ``checkpoint,eval``). Prints one line per interruption (where it landed) and a
summary; ``--json`` writes them. Figures: RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jestkit.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from jestkit.faults import ENV as FAULT_ENV
from jestkit.faults import LOG_ENV as FAULT_LOG_ENV
from jestkit.metrics import read_metrics

WALL_CLOCK = ("time", "step_time")
CHECKPOINT_POINTS = (
    "checkpoint.model",
    "checkpoint.state",
    "checkpoint.manifest",
    "checkpoint.renamed",
    "checkpoint.committed",
)
EVAL_POINTS = ("eval.start", "eval.retrieval")
KINDS = ("step", "checkpoint", "eval", "metrics", "SIGTERM", "SIGINT")


@dataclass
class Schedule:
    """What one launch does, given where the run stands (`start`: its latest checkpoint's step)."""

    steps: int
    checkpoint_every: int
    eval_every: int

    def checkpoints_after(self, start: int) -> int:
        every = self.checkpoint_every or self.steps
        return sum(1 for s in range(start + 1, self.steps + 1) if s % every == 0 or s == self.steps)

    def evals_after(self, start: int) -> int:
        if not self.eval_every:
            return 0
        later = sum(
            1
            for s in range(start + 1, self.steps + 1)
            if s % self.eval_every == 0 or s == self.steps
        )
        return later + (start == 0) + (start >= self.steps)

    def writes_after(self, start: int) -> int:
        """metrics.jsonl lines a launch writes (log_every=1): step 0's eval, steps, the final."""
        return (start == 0 and self.eval_every > 0) + (self.steps - start) + 1


@dataclass
class Interruption:
    kind: str
    start: int  # the step the launch resumed from (0: fresh)
    point: str = ""  # fault point, "NAME@N"
    at_step: int = 0  # timed signals: sent once this step is logged ...
    delay: float = 0.0  # ... plus this many seconds
    returncode: int | None = None
    landed: str = ""  # where it landed
    logged_step: int | None = None  # the last complete metrics line's step after the kill
    torn_line: bool = False  # metrics.jsonl ended with half a line
    partial_dirs: list[str] = field(default_factory=list)  # unfinished checkpoint folders left
    latest: int | None = None  # the checkpoint `--resume latest` will pick
    ok: bool = False
    problems: list[str] = field(default_factory=list)


def _cmd(preset: str, out: Path, overrides: list[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "jestkit.cli", "train", "--config", preset, "--out", str(out)]
    return cmd + (["--resume", "latest"] if resume else []) + ["train.progress=false", *overrides]


def _env(fault: str = "", log: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
        env[FAULT_LOG_ENV] = str(log)
    return env


def _last_step(metrics: Path) -> int | None:
    """Step of the last complete line of metrics.jsonl (reads only its tail)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            tail = f.read()
    except FileNotFoundError:
        return None
    for line in reversed(tail.split(b"\n")[:-1]):  # [-1]: the unterminated rest, if any
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _step_time(metrics: Path) -> float:
    try:
        times = [r["step_time"] for r in read_metrics(metrics) if r.get("step_time")]
    except Exception:
        times = []
    return statistics.median(times[-20:]) if times else 0.1


def _launch(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def plan(
    rng: random.Random,
    kind: str,
    start: int,
    sched: Schedule,
    step_time: float,
    used: dict[str, int] | None = None,
    left: int = 1,
) -> Interruption:
    """One interruption of `kind` for a launch resuming from `start`, drawn from `rng`.

    It lands within the next 1/`left` of what remains (`left`: interruptions still to come,
    this one included), so the kills spread over the whole run. A fault point is drawn among
    the points of its kind used least so far (`used`): every point comes before any repeats.
    """
    used = {} if used is None else used

    def point(names: tuple[str, ...]) -> str:
        fewest = min(used.get(n, 0) for n in names)
        name = rng.choice([n for n in names if used.get(n, 0) == fewest])
        used[name] = used.get(name, 0) + 1
        return name

    def nth(count: int) -> int:
        return rng.randint(1, max(1, math.ceil(count / left)))

    it = Interruption(kind=kind, start=start)
    if kind == "checkpoint":
        it.point = f"{point(CHECKPOINT_POINTS)}@{nth(sched.checkpoints_after(start))}"
    elif kind == "eval":
        it.point = f"{point(EVAL_POINTS)}@{nth(sched.evals_after(start))}"
    elif kind == "metrics":
        it.point = f"metrics.write@{nth(sched.writes_after(start))}"
    else:  # timed: leave at least one step to go so the signal lands inside the loop
        it.at_step = start + min(nth(sched.steps - 2 - start), max(1, sched.steps - 2 - start))
        it.delay = rng.random() * 0.9 * step_time
    return it


def interrupt(
    it: Interruption, preset: str, out: Path, overrides: list[str], logs: Path, timeout: float
) -> Interruption:
    """Run one launch of the campaign with interruption `it`, then inspect what it left."""
    fault_log = logs / "faults.log"
    before = fault_log.read_text().splitlines() if fault_log.exists() else []
    log = logs / f"launch-{len(list(logs.glob('launch-*.log'))):02d}.log"
    proc = _launch(_cmd(preset, out, overrides, resume=True), _env(it.point, fault_log), log)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    if not it.point:
        # Lines the killed launch logged past `start` stay until the new launch truncates the
        # file (an atomic rewrite: a new inode): only steps logged after that count.
        old_ino, old_last = _inode(metrics), _last_step(metrics)
        fresh = old_last is None or old_last <= it.start
        while proc.poll() is None and time.monotonic() < deadline:
            s = _last_step(metrics)
            fresh = fresh or _inode(metrics) != old_ino or (s is not None and s <= it.start)
            if fresh and s is not None and s >= it.at_step:
                break
            time.sleep(0.005)
        time.sleep(it.delay)
        sig = signal.SIGKILL if it.kind == "step" else signal.Signals[it.kind]
        if proc.poll() is None:
            proc.send_signal(sig)
    try:
        it.returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        it.returncode = proc.wait()
        it.problems.append(f"still running after {timeout:.0f}s")
    inspect(it, out, log, fault_log, before)
    return it


def inspect(it: Interruption, out: Path, log: Path, fault_log: Path, before: list[str]) -> None:
    """Where the interruption landed, and whether the run folder is still safe to resume."""
    data = (out / "metrics.jsonl").read_bytes() if (out / "metrics.jsonl").exists() else b""
    it.torn_line = bool(data) and not data.endswith(b"\n")
    it.logged_step = _last_step(out / "metrics.jsonl")
    root = out / "checkpoints"
    it.partial_dirs = (
        sorted(p.name for p in root.iterdir() if ".tmp-" in p.name) if root.is_dir() else []
    )
    fired = (fault_log.read_text().splitlines() if fault_log.exists() else [])[len(before) :]
    text = log.read_text(errors="replace")
    if it.point:
        it.landed = fired[0] if fired else "did not fire"
        want = -signal.SIGKILL
    elif it.kind == "step":
        it.landed = f"after step {it.logged_step} was logged"
        want = -signal.SIGKILL
    else:
        saved = [ln for ln in text.splitlines() if "checkpoint saved at step" in ln]
        it.landed = saved[-1].strip() if saved else "no checkpoint message"
        want = 0
    finished = it.returncode == 0 and "done:" in text  # the run ended before the signal: fine
    if it.returncode is not None and it.returncode != want and not finished:
        it.problems.append(f"exit code {it.returncode}, expected {want}: {text[-400:]!r}")
    if it.point and not fired and it.returncode != 0:
        it.problems.append("the fault point did not fire")
    # No half-written checkpoint is ever visible: every step-* folder verifies in full.
    for p in list_checkpoints(out):
        reason = verify_checkpoint(p, full=True)
        if reason is not None and ".replaced-" not in p.name:
            it.problems.append(f"visible checkpoint {p.name} does not verify: {reason}")
    latest = latest_checkpoint(out, verify_hashes=True)
    it.latest = checkpoint_step(latest) if latest is not None else None
    signalled = it.kind in ("SIGTERM", "SIGINT") and it.returncode == 0 and not finished
    if signalled and (
        f"checkpoint saved at step {it.logged_step}" not in text or it.latest != it.logged_step
    ):
        it.problems.append(
            f"{it.kind}: expected a checkpoint at the last logged step {it.logged_step}, "
            f"latest is {it.latest}"
        )
    it.ok = not it.problems


def compare(a: Path, b: Path) -> list[str]:
    """Differences between two runs' metrics.jsonl: the last line byte for byte, others without
    wall-clock fields. Empty if none."""
    problems = []
    la, lb = (p.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1] for p in (a, b))
    if la != lb:
        problems.append(f"last lines differ:\n  {la.decode()}\n  {lb.decode()}")
    ra, rb = (
        [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_metrics(p)]
        for p in (a, b)
    )
    if len(ra) != len(rb):
        problems.append(f"{len(ra)} lines vs {len(rb)} lines")
    for x, y in zip(ra, rb, strict=False):
        if x != y:
            keys = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
            problems.append(f"step {x.get('step')}: {keys[:5]} differ")
            break
    return problems


def campaign(
    out: Path,
    kinds: list[str],
    seed: int,
    preset: str = "quick",
    overrides: list[str] | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """The uninterrupted run and the interrupted one (in parallel), then the comparison."""
    from jestkit.config import load_config

    overrides = list(overrides or [])
    cfg = load_config(preset, overrides)
    sched = Schedule(cfg.train.steps, cfg.train.checkpoint_every, cfg.train.eval_every)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    a, b = out / "uninterrupted", out / "interrupted"
    rng = random.Random(seed)
    t0 = time.perf_counter()
    ref = _launch(_cmd(preset, a, overrides, resume=False), _env(), logs / "uninterrupted.log")
    events: list[Interruption] = []
    used: dict[str, int] = {}
    for kind in kinds:
        latest = latest_checkpoint(b)
        start = checkpoint_step(latest) if latest is not None else 0
        if start >= sched.steps:
            break
        step_time = _step_time(b / "metrics.jsonl")
        it = plan(rng, kind, start, sched, step_time, used, left=len(kinds) - len(events))
        events.append(interrupt(it, preset, b, overrides, logs, timeout))
        print(_line(events[-1]), flush=True)
    final = _launch(_cmd(preset, b, overrides, resume=True), _env(), logs / "final.log")
    rc_final, rc_ref = final.wait(timeout=timeout), ref.wait(timeout=timeout)
    problems = [f"{e.kind} {e.point or e.at_step}: {p}" for e in events for p in e.problems]
    if rc_final or rc_ref:
        problems.append(f"exit codes: final resume {rc_final}, uninterrupted {rc_ref}")
    else:
        problems += compare(a / "metrics.jsonl", b / "metrics.jsonl")
    return {
        "preset": preset,
        "overrides": overrides,
        "seed": seed,
        "launches": len(events) + 2,
        "seconds": round(time.perf_counter() - t0, 1),
        "interruptions": [asdict(e) for e in events],
        "last_line": (a / "metrics.jsonl").read_text().splitlines()[-1] if not rc_ref else "",
        "problems": problems,
        "ok": not problems,
    }


def _line(e: Interruption) -> str:
    what = e.point or f"step {e.at_step} + {e.delay * 1000:.0f} ms"
    partial = f", left {len(e.partial_dirs)} partial dir(s)" if e.partial_dirs else ""
    torn = ", torn metrics line" if e.torn_line else ""
    return (
        f"{'ok ' if e.ok else 'BAD'} {e.kind:10s} from step {e.start:4d}: {what:26s} -> "
        f"{e.landed}; rc {e.returncode}, logged {e.logged_step}, resume from "
        f"{e.latest}{partial}{torn}" + ("".join(f"\n    {p}" for p in e.problems))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="campaign folder (two run folders, logs)")
    parser.add_argument("--config", default="quick", help="preset (default quick)")
    parser.add_argument(
        "--kills", type=int, default=12, help="interruptions (each kind at least once)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds every kill point")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}"
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    pool = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(pool) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; known: {list(KINDS)}")
    rng = random.Random(args.seed)
    kinds = pool + [rng.choice(pool) for _ in range(max(0, args.kills - len(pool)))]
    rng.shuffle(kinds)
    result = campaign(
        Path(args.out), kinds[: args.kills], args.seed + 1, args.config, args.overrides
    )
    n_ok = sum(e["ok"] for e in result["interruptions"])
    print(
        f"{len(result['interruptions'])} interruptions ({n_ok} clean), {result['launches']} "
        f"launches in {result['seconds']}s; final line identical to the uninterrupted run: "
        f"{'yes' if result['ok'] else 'NO'}"
    )
    for p in result["problems"]:
        print("  problem:", p)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
