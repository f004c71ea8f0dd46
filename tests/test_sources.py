"""Cheaper learner-side scorers: a snapshot refreshed every k steps (cached by uid), an online proxy."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from jestkit.checkpoint import checkpoint_name
from jestkit.config import apply_overrides, get_preset, validate
from jestkit.data import SuperBatch
from jestkit.errors import JestkitError
from jestkit.flops import forward_flops
from jestkit.metrics import read_metrics
from jestkit.models import create_model
from jestkit.models.embed import embed
from jestkit.sources import LearnerSource, ProxySource, SnapshotSource, learner_source
from jestkit.train import train

WALL_CLOCK = ("time", "step_time")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path_factory.getbasetemp() / "jestkit-cache"))


def debug(*overrides: str):
    return validate(apply_overrides(get_preset("debug"), list(overrides)))


def _model(seed: int = 0):
    return create_model(
        "mlp-tiny-28", image_size=8, vocab_size=32, context_length=6, init_seed=seed
    ).train()


def _batch(uids: list[int], seed: int = 0) -> tuple[SuperBatch, torch.Tensor]:
    """A super-batch whose content is a function of the uid (so a repeated uid is the same example)."""
    images, tokens = [], []
    for u in uids:
        g = torch.Generator().manual_seed(u)
        images.append(torch.randint(0, 256, (1, 8, 8), generator=g, dtype=torch.uint8))
        tokens.append(torch.randint(1, 32, (6,), generator=g))
    batch = SuperBatch(
        uids=[f"{u:016x}" for u in uids],
        images=torch.stack(images),
        captions=[str(u) for u in uids],
        meta={},
    )
    table = dict(zip(batch.uids, tokens, strict=True))
    return batch, table


def _tokenize(table=None):
    """Tokens as a function of the uid (what _batch draws), whatever batch they come in."""
    return lambda b: torch.stack([_batch([int(u, 16)])[1][u] for u in b.uids])


def _step(model):
    """Change the model as an optimizer step would."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))


def test_snapshot_scorer_matches_a_copy_taken_at_each_refresh():
    model = _model()
    scorer = SnapshotSource(model, _tokenize(), refresh=3)
    fwd = forward_flops(model)
    per_example = fwd["image"] + fwd["text"]
    pools = [[1, 2, 3, 4], [3, 4, 5, 6], [1, 6, 7, 7], [1, 2, 3, 4], [2, 9, 1, 3]]
    snapshot = None
    seen: set[int] = set()
    for step, uids in enumerate(pools):
        if step % 3 == 0:  # what the scorer should be using: the model as it is now
            snapshot, seen = copy.deepcopy(model), set()
        batch, table = _batch(uids)
        emb, flops = scorer.embeddings(batch, step)
        want = embed(snapshot, batch.images, _tokenize(table)(batch))
        assert torch.allclose(emb.image, want.image, atol=1e-6)
        assert torch.allclose(emb.text, want.text, atol=1e-6)
        assert float(emb.bias.detach()) == float(want.bias.detach())
        # Only uids not seen since the refresh are embedded (a repeat within the batch once).
        new = set(uids) - seen
        assert flops == len(new) * per_example
        seen |= new
        _step(model)
    assert scorer.hits + scorer.misses == sum(len(p) for p in pools)


def test_snapshot_state_round_trip_continues_identically():
    model = _model(1)
    a = SnapshotSource(model, _tokenize(), refresh=4)
    for step, uids in enumerate([[1, 2, 3], [3, 4, 5]]):
        batch, _ = _batch(uids)
        a.embeddings(batch, step)
        _step(model)
    b = SnapshotSource(model, _tokenize(), refresh=4)
    b.load_state(copy.deepcopy(a.state_dict()))
    for step, uids in enumerate([[5, 6, 1], [8, 2, 2], [7, 3]], start=2):
        batch, _ = _batch(uids)
        ea, fa = a.embeddings(batch, step)
        eb, fb = b.embeddings(batch, step)
        assert torch.equal(ea.image, eb.image) and torch.equal(ea.text, eb.text) and fa == fb
        _step(model)
    with pytest.raises(JestkitError, match="score_refresh is now 5"):
        SnapshotSource(model, _tokenize(), refresh=5).load_state(a.state_dict())
    with pytest.raises(JestkitError, match=r"scored by selection\.scorer 'snapshot'"):
        LearnerSource(model, _tokenize()).load_state(a.state_dict())


def test_proxy_scorer_trains_on_the_selected_batch():
    learner = _model(2)
    cfg = debug("selection.scorer=proxy")
    scorer = learner_source(cfg, learner, _tokenize(), None)
    assert isinstance(scorer, ProxySource)
    proxy = scorer.proxy
    assert proxy.config.image_size == 8 and proxy.config.embed_dim == 32
    batch, table = _batch(list(range(10)))
    dev = torch.device("cpu")
    emb, flops = scorer.embeddings(batch, 0)
    want = embed(proxy, batch.images, _tokenize(table)(batch), device=dev)
    assert torch.equal(emb.image, want.image)  # the proxy scores, not the learner
    f = forward_flops(proxy)
    assert flops == 10 * (f["image"] + f["text"])
    before = {k: v.clone() for k, v in proxy.state_dict().items()}
    chosen = batch.index(torch.tensor([1, 4, 7]))
    assert scorer.observe(chosen, 0) == 3 * 3 * (f["image"] + f["text"])
    assert any(not torch.equal(before[k], v) for k, v in proxy.state_dict().items())
    assert np.isfinite(scorer.last_loss)


@pytest.mark.parametrize(
    "overrides",
    [("selection.score_refresh=4",), ("selection.scorer=proxy",)],
    ids=["snapshot", "proxy"],
)
def test_resume_equals_uninterrupted(tmp_path, overrides):
    # Checkpoints at 10 and 20: with a refresh every 4 steps, step 20 is mid-window (16..19 -> 20
    # refreshes) and step 10 is mid-window too; the scorer state must travel in the checkpoint.
    cfg = (*overrides, "train.keep_checkpoints=5", "train.checkpoint_every=10")
    full = tmp_path / "full"
    train(debug(*cfg), full)
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        full / "checkpoints" / checkpoint_name(10), part / "checkpoints" / checkpoint_name(10)
    )
    (part / "checkpoints" / "latest").write_text(checkpoint_name(10) + "\n")
    lines = (full / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:11]) + "\n")
    train(debug(*cfg), part, resume="latest")

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]

    assert strip(read_metrics(full / "metrics.jsonl")) == strip(
        read_metrics(part / "metrics.jsonl")
    )


def test_cheap_scorers_in_the_loop_cost_less_and_still_select(tmp_path):
    runs = {}
    for name, ov in (
        ("live", ()),
        ("snap", ("selection.score_refresh=20",)),
        ("proxy", ("selection.scorer=proxy",)),
    ):
        train(debug(*ov, "train.eval_every=0"), tmp_path / name)
        runs[name] = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
    score = {n: rows[-1]["flops/learner_score"] for n, rows in runs.items()}
    # 40 steps of N=160 over a 1200-example pool: an example recurs every 7.5 steps, so a
    # 20-step window embeds only first sightings, about 7.5 / 20 of the draws.
    assert score["snap"] < 0.5 * score["live"]
    assert score["proxy"] < score["live"]  # a quarter-width proxy, training step included
    # Training FLOPs are the learner's own: unchanged.
    assert runs["snap"][-1]["flops/learner_train"] == runs["live"][-1]["flops/learner_train"]
    steps = runs["snap"]
    deltas = np.diff([0] + [r["flops/learner_score"] for r in steps])
    # Within a window, the first step after a refresh embeds the whole super-batch; once the
    # loader has gone round the pool (7.5 steps), almost every draw is a cache hit.
    assert deltas[0] == deltas[20] == max(deltas) > 0
    assert deltas[8:20].max() < 0.2 * deltas[0] and deltas[28:40].max() < 0.2 * deltas[0]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("selection.scorer=teacher", "selection.scorer: unknown 'teacher'"),
        ("selection.score_refresh=0", "selection.score_refresh must be >= 1, got 0"),
        ("selection.proxy_lr=-1", "selection.proxy_lr must be >= 0, got -1"),
    ],
)
def test_bad_scorer_config(override, match):
    with pytest.raises(JestkitError, match=match):
        debug(override)


def test_bad_scorer_combinations():
    with pytest.raises(JestkitError, match=r"score_refresh=3 .* selection\.scorer='proxy'"):
        debug("selection.scorer=proxy", "selection.score_refresh=3")
    with pytest.raises(JestkitError, match=r"selection\.proxy_model: unknown model 'nope'"):
        debug("selection.scorer=proxy", "selection.proxy_model=nope")
    cfg = debug("selection.scorer=proxy", 'selection.proxy_overrides={"image_width": -1}')
    with pytest.raises(JestkitError, match=r"selection\.proxy_overrides=.*image_width"):
        learner_source(cfg, _model(), _tokenize(), None)
    with pytest.raises(JestkitError, match="needs world_size 1, got 2"):
        learner_source(debug("selection.scorer=proxy"), _model(), _tokenize(), None, world_size=2)
