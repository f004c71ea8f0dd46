"""`torchrun -m jestkit.train` with 2 CPU processes (gloo) against one process, on the debug preset.

A global super-batch is the same examples whatever the number of ranks, and distributed selection
picks what one process would, so a 2-rank run follows the 1-rank run step by step (up to float
summation order in the loss). A rank killed mid-run is restarted by torchrun (`--max-restarts`)
and the run resumes from its last checkpoint to the same final line as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jestkit.config import load_config
from jestkit.distributed import World
from jestkit.errors import JestkitError
from jestkit.train import train

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux")

BIN = Path(sys.executable).parent
LONG = ["train.steps=200", "train.checkpoint_every=20", "train.eval_every=100"]


def _env() -> dict[str, str]:
    # PYTHONFAULTHANDLER: a rank killed by a fatal signal (SIGABRT, SIGSEGV) prints every thread's
    # Python stack into the output a failing assertion shows, so a rare crash can be located.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def _torchrun(
    out: Path, *args: str, nproc: int = 2, restarts: int = 0, env: dict | None = None
) -> subprocess.Popen:
    cmd = [
        str(BIN / "torchrun"),
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={restarts}",
        "-m",
        "jestkit.train",
        "--config",
        "debug",
        "--out",
        str(out),
        *args,
    ]
    return subprocess.Popen(
        cmd,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a failed test kills all of it
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(rows: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def two_ranks_long(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchrun") / "p2"
    _finish(_torchrun(out, *LONG))
    return out


def test_two_ranks_on_an_empty_cache_prepare_the_data_and_reference_and_finish(tmp_path):
    # A new user's first run: no prepared dataset, no reference, no cache. Rank 0 runs the stages
    # alone (the reference is trained by the one-process loop, no collective inside) while rank 1
    # waits; then both train. It used to hang: the reference's inner train() ran a collective.
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {**_env(), "JESTKIT_CACHE": str(cache)}
    out = tmp_path / "cold"
    log = _finish(_torchrun(out, "train.steps=10", env=env), timeout=240)
    assert "training the reference model" in log and "caching the reference" in log
    rows = _rows(out)
    assert rows[-1]["final"] and rows[-1]["step"] == 10 and rows[-1]["world_size"] == 2
    assert list(cache.glob("references/*/model/config.json"))  # the stage's export, in the cache


def test_two_ranks_follow_the_one_rank_run(tmp_path):
    one, two = tmp_path / "p1", tmp_path / "p2"
    proc = _torchrun(two)
    subprocess.run(
        [str(BIN / "jestkit"), "train", "--config", "debug", "--out", str(one)],
        env=_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    _finish(proc)
    rows1, rows2 = _rows(one), _rows(two)
    assert all(r["world_size"] == 2 for r in rows2) and all(r["world_size"] == 1 for r in rows1)
    s1, s2 = _steps(rows1), _steps(rows2)
    assert s1.keys() == s2.keys() and len(s1) == 40
    for step in s1:
        a, b = s1[step], s2[step]
        # the same super-batches (data order) and the same number of examples
        assert a["noisy_pool_frac"] == b["noisy_pool_frac"]
        assert a["examples_seen"] == b["examples_seen"]
        # the same selections and updates, up to the summation order of the loss across ranks
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["noisy_selected_frac"] == pytest.approx(a["noisy_selected_frac"], abs=1 / 32)
    f1, f2 = rows1[-1], rows2[-1]
    assert f1["final"] and f2["final"]
    assert f2["flops/total"] == pytest.approx(f1["flops/total"], rel=1e-12)
    assert f2["eval/retrieval_r1"] == pytest.approx(f1["eval/retrieval_r1"], abs=0.02)


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_resumes_exactly(
    tmp_path, two_ranks_long
):
    out = tmp_path / "killed"
    proc = _torchrun(out, "--resume", "latest", *LONG, restarts=2)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until the run is past its second checkpoint
            rows = metrics.read_text().splitlines() if metrics.exists() else []
            if rows and rows[-1].endswith("}") and json.loads(rows[-1]).get("step", 0) >= 45:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run did not reach step 45")
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, timeout=30
        ).stdout.split()
        assert len(workers) == 2, workers
        victim = max(int(p) for p in workers)  # rank 1 (started second); torchrun sees it die
        os.kill(victim, signal.SIGKILL)
        log = _finish(proc)
        assert "exitcode: -9" in log  # torchrun reported the dead rank, then restarted the group
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rows = _rows(out)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 201))  # no step lost or logged twice
    assert rows[-1] == _rows(two_ranks_long)[-1]


def test_resume_on_another_number_of_ranks_continues_the_same_data(tmp_path, two_ranks_long):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_ranks_long / "checkpoints" / "step-00000180", ckpt)
    out = tmp_path / "p1"
    subprocess.run(
        [
            str(BIN / "jestkit"),
            "train",
            "--config",
            "debug",
            "--out",
            str(out),
            "--resume",
            str(ckpt),
            *LONG,
        ],
        env=_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    two, one = _steps(_rows(two_ranks_long)), _steps(_rows(out))
    assert sorted(one) == list(range(181, 201))
    for step in one:
        assert one[step]["noisy_pool_frac"] == two[step]["noisy_pool_frac"]
        assert one[step]["examples_seen"] == two[step]["examples_seen"]
    assert one[181]["loss"] == pytest.approx(two[181]["loss"], rel=1e-4)
    assert _rows(out)[-1]["world_size"] == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.batch_size=33", "selection.n_chunks=3"],
            "batch_size=33 .*not divisible by the 2 ranks",
        ),
        (
            ["train.batch_size=32", "selection.filter_ratio=0.7"],
            "super-batch of 107 .*not divisible by the 2 ranks",
        ),
    ],
)
def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path, overrides, message):
    cfg = load_config("debug", overrides)
    with pytest.raises(JestkitError, match=message):
        train(cfg, tmp_path / "run", world=World(rank=0, world_size=2))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_ranks_started_with_different_configs_fail_at_start_naming_the_key(tmp_path):
    out = tmp_path / "mismatch"
    script = (
        f"exec {BIN / 'jestkit'} train --config debug --out {out} train.seed=$RANK "
        "train.progress=false"
    )
    proc = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "--no-python",
            "bash",
            "-c",
            script,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "different configs: train.seed: rank 0 has 0, rank 1 has 1" in log
    assert not (out / "metrics.jsonl").exists()  # refused before training began
