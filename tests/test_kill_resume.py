"""Crash safety of `jestkit train`: killed at any moment and resumed, it ends as if never killed.

The SIGKILL campaign runs the real CLI on the `quick` preset (shortened to 60 steps with a
checkpoint and an evaluation every 20, to fit CI): one uninterrupted run, and beside it the same
run killed four times (during a step at a random moment, inside a checkpoint write, inside an
evaluation, halfway through a metrics line; the points drawn from a seeded RNG) and resumed with
`--resume latest` after each. The driver is `bench/kill_resume.py`, which also runs the
full-length campaign (figures in RELIABILITY.md). The campaign uses the ordinary cache folder
($JESTKIT_CACHE, default ~/.cache/jestkit) like any `quick` run: on a machine where `quick` never
ran, its first launch prepares the data and the reference (about 40 s). SIGTERM/SIGINT are
tested in-process on the `debug` preset, with the signal raised from inside a chosen step.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import sys
from pathlib import Path

import pytest

import jestkit.train as train_mod
from jestkit.checkpoint import checkpoint_step, latest_checkpoint, verify_checkpoint
from jestkit.config import apply_overrides, get_preset, validate
from jestkit.errors import JestkitError
from jestkit.faults import fault_point
from jestkit.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("time", "step_time")


def _driver():
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "bench" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_ends_identical(tmp_path):
    kr = _driver()
    kinds = ["step", "checkpoint", "eval", "metrics"]
    random.Random(7).shuffle(kinds)
    result = kr.campaign(
        tmp_path,
        kinds,
        seed=7,
        preset="quick",
        overrides=["train.steps=60", "train.checkpoint_every=20", "train.eval_every=20"],
        timeout=300,
    )
    events = result["interruptions"]
    assert [e["kind"] for e in events] == kinds
    for e in events:
        assert e["returncode"] == -signal.SIGKILL, e
        if e["point"]:
            assert e["landed"].startswith(e["point"]), e  # the kill landed where it was aimed
        else:  # a timed kill inside the loop: after the chosen step was logged by this launch
            assert e["logged_step"] >= e["at_step"], e
        assert (e["latest"] or 0) >= e["start"]  # a kill never loses a committed checkpoint
    # Every kill left the run resumable from a checkpoint that verifies in full, and the resumed
    # run ends byte-identical to the uninterrupted one (every line equal but wall clock).
    assert result["problems"] == [], "\n".join(result["problems"])
    a = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    b = read_metrics(tmp_path / "interrupted" / "metrics.jsonl")
    assert a[-1] == b[-1] and a[-1]["final"] and a[-1]["step"] == 60
    strip = [[{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows] for rows in (a, b)]
    assert strip[0] == strip[1]


def test_schedule_counts_match_the_loop():
    kr = _driver()
    s = kr.Schedule(steps=60, checkpoint_every=20, eval_every=25)
    assert (
        s.checkpoints_after(0) == 3
        and s.checkpoints_after(20) == 2
        and s.checkpoints_after(59) == 1
    )
    # fresh: step 0, 25, 50 and the last; a finished run re-evaluates once
    assert s.evals_after(0) == 4 and s.evals_after(25) == 2 and s.evals_after(60) == 1
    assert s.writes_after(0) == 62 and s.writes_after(40) == 21


# ----------------------------------------------------------------------------- SIGTERM / SIGINT


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jestkit-cache")


@pytest.fixture
def _cache(cache, monkeypatch):
    monkeypatch.setenv("JESTKIT_CACHE", str(cache))


def debug(*overrides: str):
    base = ("train.checkpoint_every=10", "train.eval_every=10")
    return validate(apply_overrides(get_preset("debug"), [*base, *overrides]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("JESTKIT_CACHE", str(cache))
    out = tmp_path_factory.mktemp("full")
    try:
        train_mod.train(debug(), out)
    finally:
        mp.undo()
    return read_metrics(out / "metrics.jsonl")


def _signal_at(monkeypatch, signum: int, step: int):
    """Deliver `signum` to this process from inside step `step` (1-based), handler installed."""
    real = train_mod.lr_at

    def lr_at(cfg, s):
        if s + 1 == step:
            os.kill(os.getpid(), signum)
        return real(cfg, s)

    monkeypatch.setattr(train_mod, "lr_at", lr_at)
    return real


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.usefixtures("_cache")
def test_sigterm_sigint_checkpoint_exit_and_resume(
    tmp_path, monkeypatch, capsys, signum, uninterrupted
):
    out = tmp_path / "run"
    handler = signal.getsignal(signum)
    real = _signal_at(monkeypatch, signum, 13)  # not a checkpoint step: the signal forces one
    result = train_mod.train(debug(), out)
    name = signal.Signals(signum).name
    assert result == {"step": 13, "interrupted": name}
    assert f"{name}: checkpoint saved at step 13" in capsys.readouterr().err
    latest = latest_checkpoint(out)
    assert checkpoint_step(latest) == 13 and verify_checkpoint(latest, full=True) is None
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == 13
    assert signal.getsignal(signum) == handler  # restored: a finished run swallows no signal
    monkeypatch.setattr(train_mod, "lr_at", real)
    train_mod.train(debug(), out, resume="latest")
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1] == uninterrupted[-1]
    strip = [
        [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in x]
        for x in (rows, uninterrupted)
    ]
    assert strip[0] == strip[1]


@pytest.mark.usefixtures("_cache")
def test_rerunning_a_finished_run_does_not_duplicate_its_final_line(tmp_path, uninterrupted):
    out = tmp_path / "run"
    train_mod.train(debug(), out)
    again = train_mod.train(debug(), out, resume="latest")  # nothing left: re-evaluates only
    rows = read_metrics(out / "metrics.jsonl")
    assert again == rows[-1] == uninterrupted[-1]
    assert sum(1 for r in rows if r.get("final")) == 1


def test_fault_spec_is_validated(monkeypatch):
    monkeypatch.setenv("JESTKIT_FAULT", "checkpoint.nowhere@1")
    with pytest.raises(
        JestkitError, match=r"JESTKIT_FAULT='checkpoint.nowhere@1'.*checkpoint.manifest"
    ):
        fault_point("checkpoint.manifest")
    monkeypatch.setenv("JESTKIT_FAULT", "checkpoint.manifest@0")
    with pytest.raises(JestkitError, match="N >= 1"):
        fault_point("checkpoint.manifest")
    monkeypatch.setenv("JESTKIT_FAULT", "eval.start@3")
    fault_point("checkpoint.manifest")  # another point: nothing happens
