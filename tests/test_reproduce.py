"""`jestkit reproduce` end to end on the `smoke` size (sklearn digits): data -> references ->
caches -> every method -> report, and an interrupted suite that continues where it stopped."""

from __future__ import annotations

import json
import statistics

import pytest

from jestkit.metrics import read_metrics
from jestkit.reproduce import SIZES, plan_suite, reproduce

REQUIRED = ("uniform", "independent-f0.8", "jest-f0.5", "jest-f0.8", "jest-f0.9")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    import os

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
        isinstance(c["holds"], bool) and c["measured"] for c in on_disk["claims"]
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
        finals.setdefault(r.method, []).append(rows[-1]["eval/retrieval_r1"])
    target = statistics.mean(finals["uniform"])
    for method in REQUIRED:
        m = report["methods"][method]
        assert m["final_metric"] == pytest.approx(statistics.mean(finals[method]))
        # steps_to_target: the first evaluated step reaching the uniform baseline's final metric.
        run = next(r for r in runs if r.method == method)
        hits = [step for step, v in evals(out / run.dir) if v >= target]
        assert m["steps_to_target"] == (hits[0] if hits else None)


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
    import shutil

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
