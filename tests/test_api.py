"""jestkit.api from a plain PyTorch loop: a tiny open_clip-style model defined here, nothing else.

The loop test imports nothing from jestkit but ``jestkit.api``; the parity tests compare the API
with the pure functions of ``jestkit.selection`` on the same embeddings and generator state.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jestkit.api import (
    BatchSelector,
    Embeddings,
    JestkitError,
    model_embeddings,
    multires_image_embeddings,
)

N_CLASSES, VOCAB, CONTEXT, SIDE = 10, 16, 4, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: a second intra-op thread only adds sync overhead (10x on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyCLIP(nn.Module):
    """open_clip's SigLIP interface in a few lines: two linear towers, logit_scale, logit_bias.

    ``encode_image(images, patch_size)`` mimics a FlexiViT: patch size 2 average-pools 2x2 blocks
    (a coarser view of the same image), patch size 1 is full resolution.
    """

    patch_sizes = (1, 2)

    def __init__(self, seed: int, dim: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.visual = nn.Linear(SIDE * SIDE, dim)
        self.text = nn.Linear(VOCAB, dim)  # over bag-of-token counts
        for p in (*self.visual.parameters(), *self.text.parameters()):
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))

    def encode_image(self, images: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        if patch_size not in (None, 1):
            images = F.avg_pool2d(images, patch_size).repeat_interleave(patch_size, -1)
            images = images.repeat_interleave(patch_size, -2)
        return F.normalize(self.visual(images.flatten(1)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        bag = F.one_hot(tokens, VOCAB).float().sum(1)
        return F.normalize(self.text(bag), dim=-1)


class NoPatchModel(TinyCLIP):
    """A model whose encode_image knows no patch sizes (a plain open_clip ViT)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return super().encode_image(images)


def make_data(n: int, noise: float, seed: int):
    """Paired images/tokens of 10 classes; a ``noise`` share get the caption of another class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(N_CLASSES, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    images = protos[labels] + 0.5 * torch.randn(n, 1, SIDE, SIDE, generator=g)
    noisy = torch.rand(n, generator=g) < noise
    shifted = (labels + torch.randint(1, N_CLASSES, (n,), generator=g)) % N_CLASSES
    words = torch.where(noisy, shifted, labels) + 1  # token 0 is padding
    filler = torch.randint(N_CLASSES + 1, VOCAB, (n, CONTEXT - 1), generator=g)
    tokens = torch.cat([words[:, None], filler], dim=1)
    return images, tokens, noisy


def siglip(img: torch.Tensor, txt: torch.Tensor, model: TinyCLIP) -> torch.Tensor:
    logits = model.logit_scale.exp() * img @ txt.T + model.logit_bias
    z = 2 * torch.eye(len(img)) - 1
    return F.softplus(-z * logits).sum() / len(img)


def train_steps(model, images, tokens, steps, b, seed, jest=None, reference=None):
    """A plain loop; with ``jest`` it trains on the selected part of each super-batch."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(seed)
    n = jest.super_batch_size(b) if jest else b
    selected_noise, chosen_all = [], []
    for _ in range(steps):
        sb = torch.randperm(len(images), generator=g)[:n]
        x, t = images[sb], tokens[sb]
        if jest is not None:
            idx, stats = jest.select(model, reference, x, t, b, g, patch_size=2)
            chosen_all.append((idx, stats))
            x, t = x[idx], t[idx]
            selected_noise.append(sb[idx])
        img = multires_image_embeddings(model, x, low_patch_size=2) if jest else None
        img = model.encode_image(x) if img is None else img
        loss = siglip(img, model.encode_text(t), model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return chosen_all, selected_noise


@torch.no_grad()
def eval_loss(model, images, tokens) -> float:
    return float(siglip(model.encode_image(images), model.encode_text(tokens), model))


def test_plain_loop_trains_with_jest():
    curated = make_data(400, noise=0.0, seed=1)
    pool_images, pool_tokens, pool_noisy = make_data(2000, noise=0.5, seed=2)
    held_out = make_data(300, noise=0.0, seed=3)

    reference = TinyCLIP(seed=10)
    train_steps(reference, curated[0], curated[1], steps=60, b=64, seed=4)
    reference.eval()

    learner = TinyCLIP(seed=11)
    jest = BatchSelector(criterion="learnability", filter_ratio=0.8, n_chunks=4)
    before = eval_loss(learner, *held_out[:2])
    chosen, rows = train_steps(learner, pool_images, pool_tokens, 40, 32, 5, jest, reference)
    after = eval_loss(learner, *held_out[:2])

    assert learner.training and not reference.training  # modes restored
    for idx, stats in chosen:
        assert idx.shape == (32,) and idx.unique().numel() == 32
        assert int(idx.min()) >= 0 and int(idx.max()) < jest.super_batch_size(32)
        for key in ("score_selected_mean", "score_pool_mean", "learner_loss_selected"):
            assert math.isfinite(stats[key])
        assert stats["pool_size"] == jest.super_batch_size(32) and stats["batch_size"] == 32
    assert after < before
    # A clean-data reference steers selection away from mismatched captions.
    selected_noise = pool_noisy[torch.cat(rows)].float().mean()
    assert selected_noise < pool_noisy.float().mean()


def _embed_by_hand(model, images, tokens, patch_size=None):
    with torch.no_grad():
        img = model.encode_image(images, patch_size) if patch_size else model.encode_image(images)
        txt = model.encode_text(tokens)
    return Embeddings(
        F.normalize(img.float(), dim=-1),
        F.normalize(txt.float(), dim=-1),
        model.logit_scale.detach().exp(),
        model.logit_bias.detach(),
    )


@pytest.mark.parametrize("patch_size", [None, 2])
def test_select_equals_joint_sample_embeddings(patch_size):
    from jestkit.selection import joint_sample_embeddings

    images, tokens, _ = make_data(160, noise=0.3, seed=6)
    learner, reference = TinyCLIP(seed=1), TinyCLIP(seed=2)
    lrn = _embed_by_hand(learner, images, tokens, patch_size)
    ref = _embed_by_hand(reference, images, tokens)
    slow = joint_sample_embeddings(
        lrn, ref, 32, n_chunks=4, criterion="learnability",
        generator=torch.Generator().manual_seed(7), temperature=0.5,
    )  # fmt: skip

    def gen():
        return torch.Generator().manual_seed(7)

    ordered = BatchSelector(n_chunks=4, temperature=0.5, sort_indices=False)
    idx, stats = ordered.select(
        learner, reference, images, tokens, 32, gen(), patch_size=patch_size
    )
    assert torch.equal(idx, slow)  # selection order, exactly
    assert torch.equal(ordered.select_embeddings(lrn, ref, 32, gen())[0], slow)
    # The reference may come precomputed (e.g. a ReferenceCache lookup): same selection.
    cached, _ = ordered.select(learner, ref, images, tokens, 32, gen(), patch_size=patch_size)
    assert torch.equal(cached, slow)
    assert stats["batch_size"] == 32 and "batch_score_selected" in stats
    # Default: the same set, ascending.
    jest = BatchSelector(n_chunks=4, temperature=0.5)
    idx, _ = jest.select(learner, reference, images, tokens, 32, gen(), patch_size=patch_size)
    assert torch.equal(idx, slow.sort().values)


def test_independent_and_uniform_match_selection():
    from jestkit.scoring import example_scores
    from jestkit.selection import independent_sample, uniform_sample

    images, tokens, _ = make_data(100, noise=0.3, seed=8)
    learner, reference = TinyCLIP(seed=1), TinyCLIP(seed=2)
    lrn, ref = _embed_by_hand(learner, images, tokens), _embed_by_hand(reference, images, tokens)

    ind = BatchSelector(
        method="independent", criterion="easy_reference", temperature=0.0, sort_indices=False
    )
    assert not ind.needs_learner and ind.needs_reference
    idx, _ = ind.select(None, reference, images, tokens, 20, torch.Generator().manual_seed(0))
    want = torch.topk(example_scores(None, ref, "easy_reference"), 20).indices
    assert torch.equal(idx, want)

    ind = BatchSelector(method="independent", score_mode="rowcol", sort_indices=False)
    idx, _ = ind.select(learner, reference, images, tokens, 20, torch.Generator().manual_seed(1))
    scores = example_scores(lrn, ref, "learnability", mode="rowcol")
    assert torch.equal(idx, independent_sample(scores, 20, torch.Generator().manual_seed(1)))

    uni = BatchSelector(method="uniform", sort_indices=False)
    assert not uni.needs_learner and not uni.needs_reference
    idx, stats = uni.select(None, None, images, tokens, 20, torch.Generator().manual_seed(2))
    assert torch.equal(idx, uniform_sample(100, 20, torch.Generator().manual_seed(2)))
    assert stats == {"pool_size": 100.0, "batch_size": 20.0}


def test_select_runs_without_grad_and_restores_modes():
    images, tokens, _ = make_data(64, noise=0.3, seed=9)
    learner, reference = TinyCLIP(seed=1), TinyCLIP(seed=2).eval()
    learner.train()
    jest = BatchSelector(n_chunks=2, score_batch_size=10)
    jest.select(learner, reference, images, tokens, 16, torch.Generator().manual_seed(0))
    assert learner.training and not reference.training
    assert all(p.grad is None for p in learner.parameters())
    # Chunked embedding (score_batch_size) equals one call.
    whole = model_embeddings(learner, images, tokens)
    chunked = model_embeddings(learner, images, tokens, batch_size=10)
    torch.testing.assert_close(chunked.image, whole.image)
    torch.testing.assert_close(chunked.text, whole.text)
    assert not whole.image.requires_grad
    assert float(whole.scale) == pytest.approx(10.0) and float(whole.bias) == -5.0
    # A plain-float logit_scale is the log of the multiplier too.
    del learner.logit_scale
    learner.logit_scale = math.log(20.0)
    assert model_embeddings(learner, images, tokens).scale == pytest.approx(20.0)


def test_multires_equals_encode_image_twice():
    images, _, _ = make_data(7, noise=0.0, seed=10)
    model = TinyCLIP(seed=3)
    out = multires_image_embeddings(model, images, low_patch_size=2, fraction=0.5)
    n_low = round(0.5 * 7)  # Python's round: 4
    by_hand = torch.cat([model.encode_image(images[:n_low], 2), model.encode_image(images[n_low:])])
    torch.testing.assert_close(out, by_hand, rtol=0, atol=0)
    assert out.requires_grad  # for training: gradients flow
    out.sum().backward()
    assert model.visual.weight.grad is not None
    torch.testing.assert_close(
        multires_image_embeddings(model, images, 2, fraction=0.0), model.encode_image(images)
    )
    torch.testing.assert_close(
        multires_image_embeddings(model, images, 2, fraction=1.0), model.encode_image(images, 2)
    )


def test_multires_errors():
    images, _, _ = make_data(4, noise=0.0, seed=11)
    with pytest.raises(JestkitError, match=r"low_patch_size=2.*NoPatchModel.*patch_size"):
        multires_image_embeddings(NoPatchModel(seed=0), images, low_patch_size=2)
    with pytest.raises(JestkitError, match=r"low_patch_size=3 is not one of .*\(1, 2\)"):
        multires_image_embeddings(TinyCLIP(seed=0), images, low_patch_size=3)
    with pytest.raises(JestkitError, match=r"fraction.*1\.5"):
        multires_image_embeddings(TinyCLIP(seed=0), images, low_patch_size=2, fraction=1.5)
    # fraction=0 never asks for a patch size: a plain model works.
    out = multires_image_embeddings(NoPatchModel(seed=0), images, low_patch_size=2, fraction=0)
    assert out.shape == (4, 16)


def test_selector_errors():
    images, tokens, _ = make_data(40, noise=0.0, seed=12)
    model = TinyCLIP(seed=0)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(JestkitError, match=r"method.*'gibbs'"):
        BatchSelector(method="gibbs")
    with pytest.raises(JestkitError, match=r"criterion.*'easiest'"):
        BatchSelector(criterion="easiest")
    with pytest.raises(JestkitError, match=r"filter_ratio.*1\.0"):
        BatchSelector(filter_ratio=1.0)
    with pytest.raises(JestkitError, match="batch_size=30 is not divisible by n_chunks=16"):
        BatchSelector().super_batch_size(30)
    assert BatchSelector(filter_ratio=0.5).super_batch_size(32) == 64
    with pytest.raises(JestkitError, match="needs the reference"):
        BatchSelector(n_chunks=2).select(model, None, images, tokens, 8, g)
    with pytest.raises(JestkitError, match="cover 39 examples but the super-batch has 40"):
        ref = _embed_by_hand(model, images[:39], tokens[:39])
        BatchSelector(n_chunks=2).select(model, ref, images, tokens, 8, g)
    with pytest.raises(JestkitError, match=r"same first dimension.*\(40, 1, 8, 8\).*\(39, 4\)"):
        BatchSelector(n_chunks=2).select(model, model, images, tokens[:39], 8, g)
    no_bias = TinyCLIP(seed=0)
    no_bias.logit_bias = None
    with pytest.raises(JestkitError, match="logit_bias is None"):
        BatchSelector(n_chunks=2).select(no_bias, model, images, tokens, 8, g)
    with pytest.raises(JestkitError, match="k=9 is not divisible by n_chunks=2"):
        BatchSelector(n_chunks=2).select(model, model, images, tokens, 9, g)


def test_docs_example_runs():
    """The "Use it in your loop" example of docs/your-loop.md runs as written."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "your-loop.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, f"no python example in {doc}"
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(blocks[0], str(doc), "exec"), namespace)
    assert namespace["after"] < namespace["before"]
