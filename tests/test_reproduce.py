"""`jestkit reproduce` end to end on the `smoke` size (sklearn digits): data -> references ->
caches -> every method -> report, and an interrupted suite that continues where it stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jestkit.errors import JestkitError
from jestkit.metrics import final_record, read_metrics
from jestkit.reproduce import SIZES, plan_suite, reproduce, run_config, same_run, select_runs

REQUIRED = ("uniform", "independent-f0.8", "jest-f0.5", "jest-f0.8", "jest-f0.9")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):

    old = os.environ.get("JESTKIT_CACHE")
    os.environ["JESTKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("suite")
    try:
        report = reproduce(out, mode="smoke", jobs=1)
    finally:
        if old is None:
            os.environ.pop("JESTKIT_CACHE")
        else:
            os.environ["JESTKIT_CACHE"] = old
    return out, report


def evals(run_dir):
    return [
        (r["step"], r["eval/retrieval_r1"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if "eval/retrieval_r1" in r and not r.get("final")
    ]


def test_report_has_the_promised_shape(suite):
    out, report = suite
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["target_metric"] == report["target_metric"] == "eval/retrieval_r1"
    for name in REQUIRED:
        m = on_disk["methods"][name]
        for key in ("final_metric", "final_metric_std", "steps_to_target", "flops_to_target"):
            assert key in m
    assert {c["claim"] for c in on_disk["claims"]} and all(
        c["holds"] in (True, False, None) and c["measured"] for c in on_disk["claims"]
    )
    assert (out / "report.md").read_text().startswith("# JEST reproduction report")
    assert any((out / "plots").glob("*.png"))


def test_numbers_match_the_runs(suite):
    out, report = suite
    runs = [r for r in plan_suite(SIZES["smoke"]) if r.kind == "learner"]
    finals = {}
    for r in runs:
        rows = read_metrics(out / r.dir / "metrics.jsonl")
        assert rows[-1]["final"] and rows[-1]["step"] == r.steps  # every run finished
        # The final metric: the mean of the last three evaluations.
        last = [v for step, v in evals(out / r.dir) if step > 0][-3:]
        finals.setdefault(r.method, []).append(statistics.mean(last))
    target = finals["uniform"][0]  # one seed: seed 0's target is uniform seed 0's final
    for method in REQUIRED:
        m = report["methods"][method]
        assert m["final_metric"] == pytest.approx(statistics.mean(finals[method]))
        # steps_to_target: where the curve crosses the target, linear between evaluations.
        run = next(r for r in runs if r.method == method)
        points = evals(out / run.dir)
        step = next(
            (
                s1 if s0 is None else s0 + (target - v0) / (v1 - v0) * (s1 - s0)
                for (s0, v0), (s1, v1) in zip([(None, -1.0), *points], points, strict=False)
                if v1 >= target - 1e-9
            ),
            None,
        )
        assert m["steps_to_target_per_seed"][0] == pytest.approx(step)


def test_uniform_frontier_and_learning_rate_grid_are_trained_and_used(suite):
    out, report = suite
    size = SIZES["smoke"]
    lr = json.loads((out / "runs" / "uniform-s0" / "config.json").read_text())["optim"]["lr"]
    # The frontier: uniform with its whole schedule in fewer steps, paired by seed.
    for frac in size.frontier:
        t = round(size.steps * frac)
        cfg = json.loads((out / "runs" / f"uniform-T{t}-s0" / "config.json").read_text())
        assert cfg["train"]["steps"] == t and cfg["optim"]["lr"] == lr
        assert read_metrics(out / "runs" / f"uniform-T{t}-s0" / "metrics.jsonl")[-1]["final"]
        assert report["methods"][f"uniform-T{t}"]["tags"]["frontier_of"] == "uniform"
    # Uniform's yardstick (the least of run length, own saturation, frontier) is within its run.
    for m in report["methods"].values():
        for b in m["baseline_steps_to_target_per_seed"] or []:
            assert b is None or b <= size.steps
    (grid,) = report["lr_grid"]
    assert grid["baseline"] == "uniform" and grid["baseline_lr"] == lr
    assert sorted(g["lr"] for g in grid["grid"]) == sorted([lr, *(lr * m for m in size.lr_grid)])
    finals = {g["method"]: g["final"] for g in grid["grid"]}
    assert finals[grid["pick"]] == max(finals.values())
    # Sweep-tagged runs never stand in for a claim's method.
    claimed = {n for c in report["claims"] for n in json.dumps(c.get("measured", {})).split('"')}
    assert not any(n.startswith(("uniform-T", "uniform-lr")) for n in claimed)


def test_scoring_runs_use_their_reference_cache(suite):
    out, _ = suite
    cfg = json.loads((out / "runs" / "jest-f0.8-s0" / "config.json").read_text())
    assert cfg["selection"]["reference_cache"].endswith("caches/reference-curated")
    cfg = json.loads((out / "runs" / "jest-f0.8-uncurated-ref-s0" / "config.json").read_text())
    assert cfg["selection"]["reference_cache"].endswith("caches/reference-uncurated")
    last = read_metrics(out / "runs" / "jest-f0.8-s0" / "metrics.jsonl")[-1]
    assert last["flops/reference"] > 0  # the one-off cache build is charged
    last = read_metrics(out / "runs" / "uniform-s0" / "metrics.jsonl")[-1]
    assert last["flops/reference"] == 0 and last["flops/learner_score"] == 0


def test_an_interrupted_suite_continues(suite, monkeypatch):
    out, report = suite
    # Lose one finished run entirely and cut another back to its first checkpoint's metrics:
    # the rerun redoes exactly those and leaves every other run's files untouched.

    untouched = out / "runs" / "jest-f0.5-s0" / "metrics.jsonl"
    before = untouched.stat().st_mtime_ns
    final_before = read_metrics(out / "runs" / "jest-f0.8-s0" / "metrics.jsonl")[-1]
    shutil.rmtree(out / "runs" / "jest-f0.8-s0")
    monkeypatch.setenv("JESTKIT_CACHE", str(out.parent / "cache-rerun"))
    again = reproduce(out, mode="smoke", jobs=1)
    assert untouched.stat().st_mtime_ns == before
    final_after = read_metrics(out / "runs" / "jest-f0.8-s0" / "metrics.jsonl")[-1]
    assert final_after == final_before  # deterministic on CPU: the redone run is the same run
    assert (
        again["methods"]["jest-f0.8"]["final_metric"]
        == report["methods"]["jest-f0.8"]["final_metric"]
    )


def test_sweeps_size_plans_the_sweep_and_the_ablation():
    size = SIZES["sweeps"]
    runs = plan_suite(size)
    refs = [r for r in runs if r.kind == "reference"]
    assert sorted((r.method, r.seed) for r in refs) == [
        ("reference-curated", 0),
        ("reference-curated", 1),
        ("reference-uncurated", 0),
        ("reference-uncurated", 1),
    ]
    assert {r.name for r in refs if r.seed == 0} == {"reference-curated", "reference-uncurated"}
    main = {r.method for r in runs if r.kind == "learner" and not r.tags}
    assert main == {"uniform", "independent-f0.8", "jest-f0.8"}
    sweep = [r for r in runs if r.tags.get("sweep") == "batch_size"]
    assert sorted({r.batch_size for r in sweep}) == [256, 1024, 2048, 4096]
    for r in sweep:
        # Same steps at every b; each b against its own uniform baseline, in the main family.
        assert r.steps == size.sweep_steps and r.eval_every == size.sweep_eval_every
        assert r.baseline == f"uniform-b{r.batch_size}" and r.family == "mlp"
        assert f"train.batch_size={r.batch_size}" in r.overrides
    assert len(sweep) == 4 * 3 * size.seeds_secondary
    bias = [r for r in runs if r.tags.get("sweep") == "bias_init"]
    assert {r.method for r in bias} == {
        "uniform-bias0",
        "jest-f0.8-bias0",
        "independent-f0.8-bias0",
    }
    assert all("model.init_logit_bias=0.0" in r.overrides and r.steps == size.steps for r in bias)
    # Learners score with seed 0 of the curated reference; the other seeds only give a spread.
    assert {r.reference for r in runs if r.kind == "learner"} <= {None, "reference-curated"}


def test_regime_size_is_the_classic_suite_on_the_regime_data(tmp_path):
    from jestkit.selection import super_batch_size

    regime, classic = SIZES["regime"], SIZES["classic"]
    runs = plan_suite(regime)
    names = {r.name for r in runs}
    assert {r.name for r in plan_suite(classic) if "-lr" not in r.name} == names
    for r in runs:
        cfg = run_config(r, regime, tmp_path)
        assert cfg.data.recipe == "graded-web" and cfg.data.hard_negative_edits == "layout"
        assert cfg.data.hard_negative_group_size == 96 and cfg.data.curated_fraction == 0.2
        if r.kind == "reference":
            assert cfg.data.train_split == "curated" or r.name == "reference-uncurated"
            assert cfg.train.steps == regime.reference_steps
    # The regime's promise, by the arithmetic prepare follows: every clean scene (half the pool)
    # sits in a layout of 96, so an example meets >= 1 near-twin in a super-batch at f = 0.8.
    cfg = run_config(runs[0], regime, tmp_path)
    pool, g = cfg.data.pool_size, cfg.data.hard_negative_group_size
    n = super_batch_size(cfg.train.batch_size, 0.8)
    assert _near_twins(pool, cfg.data.hard_negative_density, g, n) >= 1.0


def _near_twins(pool: int, density: float, g: int, n: int) -> float:
    """Near-twins an example meets in a random super-batch of n, by prepare's group arithmetic."""
    in_groups = round(density * pool) // g * g
    return in_groups * (g - 1) / pool * (n - 1) / (pool - 1)


def test_unrepeated_size_is_the_regime_on_a_pool_scored_twice(tmp_path):
    from jestkit.selection import super_batch_size

    regime, unrepeated = SIZES["regime"], SIZES["unrepeated"]
    runs = plan_suite(unrepeated)
    assert [r.name for r in runs] == [r.name for r in plan_suite(regime)]
    n = super_batch_size(regime.batch_size, 0.8)
    for size in (regime, unrepeated):
        cfg = run_config(runs[0], size, tmp_path)
        d = cfg.data
        assert d.recipe == "graded-web" and d.hard_negative_edits == "layout"
        assert round(d.curated_fraction * d.pool_size) == 12000  # the same curated set size
        # Each pool's layouts are the smallest groups that give >= 1 near-twin per example.
        g, pool = d.hard_negative_group_size, d.pool_size
        assert _near_twins(pool, d.hard_negative_density, g, n) >= 1.0
        assert _near_twins(pool, d.hard_negative_density, g - 1, n) < 1.0
    # The f = 0.8 learner scores the unrepeated pool twice (the regime's about 11 times).
    passes = unrepeated.steps * n / unrepeated.pool_size
    assert passes == 2.0 and regime.steps * n / regime.pool_size > 10
    for a, b in zip(plan_suite(regime), runs, strict=True):  # otherwise the same runs
        ca, cb = run_config(a, regime, tmp_path), run_config(b, unrepeated, tmp_path)
        assert (ca.train, ca.selection, ca.model) == (cb.train, cb.selection, cb.model)


def test_default_size_is_the_unrepeated_regime_with_the_vit_pair(tmp_path):
    default, unrepeated = SIZES["default"], SIZES["unrepeated"]
    runs = {r.name: r for r in plan_suite(default)}
    mlp = {r.name: r for r in plan_suite(unrepeated)}
    assert {n: r for n, r in runs.items() if r.family != "vit"} == mlp
    vit = [r for r in runs.values() if r.family == "vit"]
    assert sorted(r.name for r in vit) == [
        "flexi-jest-f0.8-s0", "flexi-jest-f0.8-s1", "uniform-vit-s0", "uniform-vit-s1",
    ]  # fmt: skip
    for r in vit:
        cfg = run_config(r, default, tmp_path)
        assert cfg.train.steps == 1000 and cfg.data.pool_size == unrepeated.pool_size
        assert cfg.model.overrides == {
            "patch_sizes": [14, 28],
            "image_depth": 4,
            "text_kind": "mlp",
        }
    # The MLP runs are configured exactly as the unrepeated suite's (one data, one reference).
    for name, r in mlp.items():
        assert run_config(runs[name], default, tmp_path) == run_config(r, unrepeated, tmp_path)


def test_only_takes_regexes_and_keeps_the_references_needed():
    runs = plan_suite(SIZES["sweeps"])
    chosen = select_runs(runs, [r".*-b4096"])
    assert {r.name for r in chosen if r.kind == "reference"} == {"reference-curated"}
    assert {r.batch_size for r in chosen if r.kind == "learner"} == {4096}
    assert len([r for r in chosen if r.kind == "learner"]) == 3 * 2
    # A method name is its own regex; a name selects one run.
    assert {r.name for r in select_runs(runs, ["uniform"])} == {
        "uniform-s0",
        "uniform-s1",
        "uniform-s2",
    }
    assert [r.name for r in select_runs(runs, ["jest-f0.8-s1"])] == [
        "reference-curated",
        "jest-f0.8-s1",
    ]
    with pytest.raises(JestkitError, match=r"--only: '\(' is not a regular expression"):
        select_runs(runs, ["("])
    with pytest.raises(JestkitError, match=r"--only: 'jest-f0\.9' matches no run"):
        select_runs(runs, ["jest-f0.9"])


def test_same_run_compares_configs_but_not_suite_folders(tmp_path):
    size = SIZES["smoke"]
    spec = next(r for r in plan_suite(size) if r.name == "jest-f0.8-s0")
    cfg = run_config(spec, size, tmp_path / "a")
    saved = run_config(spec, size, tmp_path / "b").to_dict()
    assert same_run(saved, cfg) == []  # the reference lives in another suite folder: same run
    saved["train"]["progress"] = True  # may change on resume: ignored
    del saved["selection"]["score_refresh"]  # a key added since, at its default: same run
    assert same_run(saved, cfg) == []
    saved["optim"]["lr"] = 0.5
    saved["selection"]["reference"] = str(tmp_path / "b" / "references" / "reference-uncurated")
    diffs = same_run(saved, cfg)
    assert len(diffs) == 2 and any("optim.lr: 0.5" in d for d in diffs)
    assert any("selection.reference: 'reference-uncurated'" in d for d in diffs)
    saved = run_config(spec, size, tmp_path).to_dict()
    del saved["selection"]["score_refresh"]
    cfg.selection.score_refresh = 3
    assert same_run(saved, cfg) == ["selection.score_refresh: missing, now 3"]


def test_reuse_links_finished_runs_instead_of_training(suite, tmp_path, monkeypatch):
    out, report = suite
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path / "cache"))
    new = tmp_path / "new"
    again = reproduce(new, mode="smoke", jobs=1, reuse=out, only=["uniform", "jest-f0.8"])
    for name in ("uniform-s0", "jest-f0.8-s0", "reference-curated"):
        assert (new / "runs" / name).is_symlink()
        assert (new / "runs" / name).resolve() == (out / "runs" / name).resolve()
    assert (new / "caches" / "reference-curated").resolve() == (
        out / "caches" / "reference-curated"
    ).resolve()
    for method in ("uniform", "jest-f0.8"):
        assert again["methods"][method]["final_metric"] == report["methods"][method]["final_metric"]
    # An old suite.json without the size fields added since is still the same size.
    path = new / "suite.json"
    old = json.loads(path.read_text())
    for key in ("reference_seeds", "main_methods", "sweep_batch_sizes", "sweep_steps"):
        del old["size"][key]
    path.write_text(json.dumps(old))
    reproduce(new, mode="smoke", jobs=1, only=["uniform"])
    with pytest.raises(JestkitError, match=r"holds a suite of another size \(smoke\)"):
        reproduce(new, mode="quick", jobs=1, only=["uniform"])
    # The same size name defined otherwise (a suite folder from another version's default).
    old["size"]["steps"] += 1
    path.write_text(json.dumps(old))
    with pytest.raises(JestkitError, match=r"\(smoke, as another jestkit version defined it\)"):
        reproduce(new, mode="smoke", jobs=1, only=["uniform"])
    with pytest.raises(JestkitError, match=r"--reuse .*: not a suite folder"):
        reproduce(tmp_path / "other", mode="smoke", jobs=1, reuse=tmp_path, only=["uniform"])


def test_full_size_plans_the_arms_and_the_reference_strength_ablation(tmp_path):
    size = SIZES["full"]
    runs = plan_suite(size)
    by = {r.name: r for r in runs}
    n = size.seeds_secondary
    cfg = {name: run_config(by[name], size, tmp_path) for name in by}
    arms = [r for r in runs if r.tags.get("sweep") == "arm"]
    assert len(arms) == 4 * n
    rowcol = cfg["independent-f0.8-rowcol-s0"].selection
    assert rowcol.method == "independent" and rowcol.score_mode == "rowcol"
    assert [cfg[f"jest-f0.8-chunks{c}-s0"].selection.n_chunks for c in (1, 4)] == [1, 4]
    assert cfg["jest-f0.8-s0"].selection.n_chunks == 16  # the third point: the main run
    # lambda = N_paper / N at b = 256, f = 0.8: 163,840 / 1,280.
    lam = cfg["jest-f0.8-lambda128-s0"].selection
    assert lam.joint_weight == 128.0 and lam.method == "jest"
    assert all(c.selection.joint_weight == 1.0 for k, c in cfg.items() if "lambda" not in k)
    for r in arms:
        assert r.tags["compare"] in by or f"{r.tags['compare']}-s0" in by
    # Reference strength: one reference per curated fraction, each guiding its own jest-f0.8.
    for frac in size.reference_fractions:
        ref = cfg[f"reference-curated-c{frac:g}"]
        assert ref.data.train_split == "curated" and ref.data.curated_fraction == frac
        assert ref.train.steps == size.reference_steps
        learner = by[f"jest-f0.8-ref-c{frac:g}-s0"]
        assert learner.reference == f"reference-curated-c{frac:g}"
        assert cfg[learner.name].data.curated_fraction == cfg["jest-f0.8-s0"].data.curated_fraction
    assert len(size.reference_fractions) >= 2
    first_learner = next(i for i, r in enumerate(runs) if r.kind == "learner")
    assert all(r.kind == "learner" for r in runs[first_learner:])  # references first


def test_smoke_suite_ran_the_arms_and_the_reference_strength_ablation(suite):
    out, report = suite
    arms = {r["method"]: r for r in report["arms"]}
    assert set(arms) == {
        "independent-f0.8-rowcol",
        "jest-f0.8-chunks1",
        "jest-f0.8-chunks4",
        f"jest-f0.8-lambda{163840 // 160}",  # b = 32, f = 0.8: N = 160
    }
    assert all(r["vs_compare"] is not None for r in arms.values())
    cfg = json.loads((out / "runs" / "reference-curated-c0.04" / "config.json").read_text())
    assert cfg["data"]["curated_fraction"] == 0.04
    rows = report["reference_strength"]
    assert {r["reference"] for r in rows} == {"reference-curated", "reference-curated-c0.04"}
    assert all(r["vs_reference"]["estimate"] is not None for r in rows)
    # Every selecting learner is in the per-FLOP answer, the arms and the ablation included.
    selecting = {n for n, m in report["methods"].items() if m["kind"] == "learner"
                 and m["selection"] != "uniform"}  # fmt: skip
    assert {r["method"] for r in report["compute"]["rows"]} == selecting


def _group_alive(pgid: int) -> bool:

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _a_worker(parent: int) -> int:
    """A pool worker of `parent` (Linux: /proc lists a process's children)."""

    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            return int(pid)
    raise AssertionError(f"no pool worker among the children of {parent}")


@pytest.mark.parametrize("target", ["parent", "group", "worker"])
def test_sigterm_stops_the_suite_and_its_workers_and_the_suite_resumes_identically(
    suite, tmp_path, target
):
    # SIGTERM to the parent alone (a scheduler, `kill PID`), to its whole process group (a
    # terminal, `kill -- -PGID`) or to one worker: the suite stops with 130 and no worker outlives
    # it (they used to go on training the runs queued to them, beside the suite a user restarts);
    # the same command then ends as if never stopped.

    out = tmp_path / "suite"
    only = ["uniform", "independent-f0.8", "jest-f0.5", "jest-f0.8", "jest-f0.9"]  # one reference
    cmd = [sys.executable, "-m", "jestkit.cli", "reproduce", "--smoke", "--out", str(out)]
    cmd += ["--jobs", "2", "--threads", "2", "--only", *only]  # the fixture's threads per run
    learners = [
        r.name for r in select_runs(plan_suite(SIZES["smoke"]), only) if r.kind == "learner"
    ]
    assert len(learners) > 3  # runs are queued to the workers beyond the two they train
    log = open(tmp_path / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any((out / "runs" / n / "metrics.jsonl").exists() for n in learners):
            assert proc.poll() is None and time.monotonic() < deadline, "no learner started"
            time.sleep(0.05)
        if target == "parent":
            proc.send_signal(signal.SIGTERM)
        elif target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(_a_worker(proc.pid), signal.SIGTERM)
        returncode = proc.wait(timeout=120)
        deadline = time.monotonic() + 5  # the workers were joined; the resource tracker follows
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(proc.pid), "a worker outlived the stopped suite"
        assert returncode == 130
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "log").read_text()
    assert "stopping" in text and "interrupted" in text, text
    if target != "group":
        return  # resuming is the same after each
    assert any(final_record(out / "runs" / n) is None for n in learners)  # it stopped early
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    reference_out, _ = suite
    for name in learners:
        got = read_metrics(out / "runs" / name / "metrics.jsonl")[-1]
        want = read_metrics(reference_out / "runs" / name / "metrics.jsonl")[-1]
        assert got == want, name
