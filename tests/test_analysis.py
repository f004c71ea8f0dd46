"""The joint-term probe: helpers against naive loops, and the probe end to end on the debug preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jestkit.analysis import analyse_runs, categories, joint_terms, main, probe_batch, twin_pairs
from jestkit.config import apply_overrides, get_preset, validate
from jestkit.errors import JestkitError
from jestkit.losses import sigmoid_pair_losses
from jestkit.scoring import Embeddings
from jestkit.train import train


def _emb(n: int, seed: int, bias: float) -> Embeddings:
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.7 * torch.randn(n, 8, generator=g), dim=1)
    return Embeddings(img, txt, torch.tensor(10.0), torch.tensor(bias))


def test_categories_and_twin_pairs_match_hand_counts():
    noise = ["", "junk_caption", "", "", "", "caption_swap", ""]
    group = [3, 3, 5, 5, 7, -1, 9]
    # 0's twin (1) is junk: 0 still has a twin in the batch; 6 is alone in its group.
    assert categories(noise, group).tolist() == [
        "twin", "junk_caption", "twin", "twin", "clean", "caption_swap", "clean",
    ]  # fmt: skip
    assert categories(noise, None).tolist()[0] == "clean"
    assert twin_pairs(group, [0, 1, 2, 6]) == (2, 1, 1)  # pairs {0,1} both, {2,3} one
    assert twin_pairs([4, 4, 4, -1], [0, 1]) == (3, 1, 2)  # a triple: 3 pairs


def test_joint_terms_match_a_naive_loop():
    learner, reference = _emb(23, 1, -2.0), _emb(23, 2, -4.0)
    s = torch.tensor([4, 0, 17, 9, 12])
    parts = joint_terms(learner, reference, s, "learnability", chunk=7)
    ll = sigmoid_pair_losses(learner.image, learner.text, learner.scale, learner.bias).double()
    lr = sigmoid_pair_losses(reference.image, reference.text, reference.scale, reference.bias)
    a = (ll - lr.double()).numpy()
    sel = s.tolist()
    for k in range(23):
        want = sum(a[i, k] + a[k, i] for i in sel if i != k)
        want_l = sum(ll[i, k] + ll[k, i] for i in sel if i != k)
        assert float(parts["total"][k]) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert float(parts["learner"][k]) == pytest.approx(float(want_l), rel=1e-5, abs=1e-6)
    hl = joint_terms(learner, None, s, "hard_learner")
    assert torch.allclose(hl["total"], parts["learner"])
    with pytest.raises(JestkitError, match="needs reference embeddings"):
        joint_terms(learner, None, s, "learnability")


def test_probe_batch_accounts_for_every_example():
    learner, reference = _emb(80, 3, -1.0), _emb(80, 4, -3.0)
    rng = np.random.default_rng(0)
    meta = {
        "noise": rng.choice(["", "", "junk_caption", "image_corrupt"], 80),
        "hard_negative_group": np.where(rng.random(80) < 0.5, rng.integers(0, 20, 80), -1),
    }
    out = probe_batch(learner, reference, 16, meta, seed=0, n_chunks=4)
    assert sum(out["counts"]["pool"].values()) == 80
    assert sum(out["counts"]["jest"].values()) == sum(out["counts"]["independent"].values()) == 16
    assert sum(v["n"] for v in out["joint"].values()) == 80
    for key in ("overlap_jest_independent", "overlap_independent_redraw", "overlap_jest_redraw"):
        assert 0.0 <= out[key] <= 1.0
    tp = out["twin_pairs"]
    assert tp["jest_both"] + tp["jest_one"] <= tp["present"]
    # Deterministic: the same seed gives the same probe.
    assert probe_batch(learner, reference, 16, meta, seed=0, n_chunks=4) == out


def test_analyse_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path / "cache"))
    cfg = validate(
        apply_overrides(
            get_preset("debug"),
            ["train.steps=20", "train.checkpoint_every=10", "train.keep_checkpoints=5"],
        )
    )
    run = tmp_path / "run"
    train(cfg, run)
    out = tmp_path / "analysis.json"
    assert (
        main([str(run), "--out", str(out), "--batch-sizes", "16", "32", "--examples", "400"]) == 0
    )
    result = json.loads(out.read_text())
    (entry,) = result["runs"]
    assert [c["step"] for c in entry["checkpoints"]] == [10, 20]
    for ckpt in entry["checkpoints"]:
        assert [r["b"] for r in ckpt["by_b"]] == [16, 32]
        for r in ckpt["by_b"]:
            assert r["n"] == 5 * r["b"] and r["batches"] == 400 // r["n"]
            for sel in ("pool", "jest", "independent"):
                assert sum(r["share"][sel].values()) == pytest.approx(1.0)
    again = analyse_runs([run], [16], 400, steps=[20], progress=False)
    assert again["runs"][0]["checkpoints"][0]["by_b"][0] == entry["checkpoints"][1]["by_b"][0]
    # Another regime from the same pool: a noise kind dropped from every super-batch.
    clean = analyse_runs([run], [16], 400, steps=[20], progress=False, exclude=["junk_caption"])
    r = clean["runs"][0]["checkpoints"][0]["by_b"][0]
    assert r["n"] == 80 and "junk_caption" not in r["share"]["pool"]
    assert sum(r["share"]["pool"].values()) == pytest.approx(1.0)
    assert main([str(tmp_path), "--out", str(out)]) == 2  # no config.json: a clean error


@pytest.mark.parametrize("scorer", ["learner", "proxy"])
def test_scorer_agreement(tmp_path, monkeypatch, scorer):
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path / "cache"))
    over = ["train.steps=20", "train.checkpoint_every=10", "train.keep_checkpoints=5"]
    cfg = validate(apply_overrides(get_preset("debug"), [*over, f"selection.scorer={scorer}"]))
    run = tmp_path / "run"
    train(cfg, run)
    out = tmp_path / "agreement.json"
    assert main([str(run), "--scorers", "--out", str(out), "--examples", "480"]) == 0
    rows = json.loads(out.read_text())["scorer_agreement"]
    if scorer == "proxy":  # the proxy of each checkpoint against that checkpoint's learner
        assert [(r["step"], r["scorer"]) for r in rows] == [(10, "proxy"), (20, "proxy")]
    else:  # the step-10 learner as a 10-step-old snapshot of the step-20 one
        assert [(r["step"], r["staleness"]) for r in rows] == [(20, 10)]
    for r in rows:
        assert r["batches"] == 3 and 0 <= r["overlap"] <= 1 and 0 <= r["overlap_redraw"] <= 1
        assert 0 <= r["noisy_scorer"] <= 1 and r["noisy_pool"] > 0


def test_time_scorers_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(validate(apply_overrides(get_preset("debug"), ["train.steps=10"])), run)
    out = tmp_path / "timing.json"
    assert main([str(run), "--time-scorers", "30", "--out", str(out)]) == 0
    rows = {r["scorer"]: r for r in json.loads(out.read_text())["scorer_timing"]}
    assert set(rows) == {"learner", "snapshot k=50", "snapshot k=200", "proxy", "train step"}
    live = rows["learner"]["flops_per_step"]
    assert rows["learner"]["vs_learner_scoring"] == pytest.approx(1.0)
    # 30 steps of N=160 over a 1200-example pool, one window: only first sightings are embedded.
    assert rows["snapshot k=50"]["flops_per_step"] < 0.5 * live
    assert rows["snapshot k=50"]["flops_per_step"] == rows["snapshot k=200"]["flops_per_step"]
    assert 0 < rows["proxy"]["flops_per_step"] < live
    assert all(r["ms_per_step"] > 0 for r in rows.values())
