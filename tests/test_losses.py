"""jestkit.losses against naive loops, gradcheck and the distributed gather path."""

from __future__ import annotations

import datetime
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from jestkit.errors import JestkitError
from jestkit.losses import (
    SigLipLoss,
    clip_example_losses,
    clip_loss,
    siglip_loss,
    sigmoid_pair_losses,
    sigmoid_positive_losses,
)


def _emb(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def _naive_pair_losses(x, y, t, c, positive) -> list[list[float]]:
    """``-log sigmoid(z * (t <x, y> + c))`` one pair at a time, in Python floats."""
    out = []
    for i in range(x.shape[0]):
        row = []
        for j in range(y.shape[0]):
            logit = t * sum(float(a) * float(b) for a, b in zip(x[i], y[j], strict=True)) + c
            z = 1.0 if positive(i, j) else -1.0
            m = z * logit  # -log sigmoid(m) = log(1 + exp(-m)), written stably
            row.append(max(-m, 0.0) + math.log1p(math.exp(-abs(m))))
        out.append(row)
    return out


@pytest.mark.parametrize(("n", "m"), [(5, 5), (4, 6), (6, 3)])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_pair_losses_match_double_loop(n, m, as_tensor):
    x, y = _emb(n, 8, 0), _emb(m, 8, 1)
    t, c = 7.5, -3.25
    scale, bias = (torch.tensor(t), torch.tensor(c)) if as_tensor else (t, c)
    got = sigmoid_pair_losses(x, y, scale, bias)
    want = torch.tensor(_naive_pair_losses(x, y, t, c, lambda i, j: i == j), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_pair_losses_with_a_positives_mask():
    x, y = _emb(5, 4, 2), _emb(7, 4, 3)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) < 0.3
    got = sigmoid_pair_losses(x, y, 4.0, -1.0, positives=mask)
    want = torch.tensor(
        _naive_pair_losses(x, y, 4.0, -1.0, lambda i, j: bool(mask[i, j])), dtype=torch.float64
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_positive_losses_are_the_diagonal():
    x, y = _emb(9, 5, 4), _emb(9, 5, 5)
    full = sigmoid_pair_losses(x, y, 10.0, -10.0)
    torch.testing.assert_close(sigmoid_positive_losses(x, y, 10.0, -10.0), full.diagonal())


def test_pair_losses_are_stable_at_extreme_logits():
    # |logit| up to 1e4: the naive log(1 + exp(.)) overflows; softplus must not.
    x, y = _emb(6, 4, 6, torch.float32), _emb(6, 4, 7, torch.float32)
    got = sigmoid_pair_losses(x, y, 1e4, 0.0)
    want = sigmoid_pair_losses(x.double(), y.double(), 1e4, 0.0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)


def test_siglip_loss_is_the_mean_of_row_sums():
    x, y = _emb(7, 6, 8), _emb(7, 6, 9)
    t, c = 10.0, -10.0
    naive = _naive_pair_losses(x, y, t, c, lambda i, j: i == j)
    want = sum(sum(row) for row in naive) / len(naive)
    assert siglip_loss(x, y, t, c).item() == pytest.approx(want, rel=1e-12)
    # and open_clip's formulation with an explicit label matrix
    labels = 2 * torch.eye(7, dtype=torch.float64) - 1
    logits = t * x @ y.T + c
    assert siglip_loss(x, y, t, c).item() == pytest.approx(
        (-F.logsigmoid(labels * logits).sum() / 7).item(), rel=1e-12
    )


def test_clip_example_losses_match_naive_softmax():
    x, y = _emb(6, 5, 10), _emb(6, 5, 11)
    t = 3.0
    got = clip_example_losses(x, y, t)
    for i in range(6):
        li = [t * float(x[i] @ y[j]) for j in range(6)]
        lt = [t * float(x[j] @ y[i]) for j in range(6)]
        i2t = -li[i] + math.log(sum(math.exp(v) for v in li))
        t2i = -lt[i] + math.log(sum(math.exp(v) for v in lt))
        assert got[i].item() == pytest.approx((i2t + t2i) / 2, rel=1e-12)
    assert clip_loss(x, y, t).item() == pytest.approx(got.mean().item(), rel=1e-12)
    # against torch's cross-entropy
    logits = t * x @ y.T
    ce = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert clip_loss(x, y, t).item() == pytest.approx(ce.item(), rel=1e-12)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def test_gradcheck_float64():
    x, y = _leaf(_emb(4, 3, 12)), _leaf(_emb(4, 3, 13))
    t, c = (
        _leaf(torch.tensor(2.5, dtype=torch.float64)),
        _leaf(torch.tensor(-1.5, dtype=torch.float64)),
    )
    assert torch.autograd.gradcheck(
        lambda a, b, s, o: sigmoid_pair_losses(a, b, s, o), (x, y, t, c)
    )
    assert torch.autograd.gradcheck(lambda a, b, s, o: siglip_loss(a, b, s, o), (x, y, t, c))
    assert torch.autograd.gradcheck(lambda a, b, s: clip_example_losses(a, b, s), (x, y, t))
    mask = torch.tensor(
        [[True, False, False], [False, False, True], [True, True, False], [False] * 3]
    )
    y3 = _leaf(_emb(3, 3, 14))
    assert torch.autograd.gradcheck(
        lambda a, b, s, o: sigmoid_pair_losses(a, b, s, o, mask), (x, y3, t, c)
    )
    loss = SigLipLoss()
    assert torch.autograd.gradcheck(lambda a, b, s, o: loss(a, b, s, o), (x, y, t, c))


def test_siglip_module_single_process_equals_function():
    x, y = _emb(8, 4, 15, torch.float32), _emb(8, 4, 16, torch.float32)
    assert (
        SigLipLoss(rank=0, world_size=1)(x, y, 10.0, -10.0).item()
        == siglip_loss(x, y, 10.0, -10.0).item()
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"world_size": 0}, "world_size.*0"),
        ({"rank": 2, "world_size": 2}, "rank.*2"),
        ({"rank": -1}, "rank.*-1"),
    ],
)
def test_siglip_module_bad_arguments(kwargs, match):
    with pytest.raises(JestkitError, match=match):
        SigLipLoss(**kwargs)


def test_siglip_module_needs_a_process_group():
    x = _emb(4, 3, 17)
    with pytest.raises(JestkitError, match=r"process group"):
        SigLipLoss(rank=0, world_size=2)(x, x, 1.0, 0.0)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.zeros(3, 4), torch.zeros(3, 5), r"same width.*\(3, 4\).*\(3, 5\)"),
        (torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64), "same dtype.*float32.*float64"),
        (torch.zeros(3, 4), torch.zeros(3, 4, device="meta"), "same device.*cpu.*meta"),
        (torch.zeros(3), torch.zeros(3, 4), r"image_emb must be 2-D.*\(3,\)"),
        (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4), "floating point.*int64"),
    ],
)
def test_pair_losses_bad_input(a, b, match):
    with pytest.raises(JestkitError, match=match):
        sigmoid_pair_losses(a, b, 1.0, 0.0)


def test_square_losses_reject_unpaired_batches():
    with pytest.raises(JestkitError, match=r"same number of rows.*\(3, 4\).*\(5, 4\)"):
        siglip_loss(torch.zeros(3, 4), torch.zeros(5, 4), 1.0, 0.0)
    with pytest.raises(JestkitError, match=r"positives must have shape"):
        sigmoid_pair_losses(
            torch.zeros(3, 4),
            torch.zeros(5, 4),
            1.0,
            0.0,
            positives=torch.ones(3, 3, dtype=torch.bool),
        )
    with pytest.raises(JestkitError, match=r"positives must be a bool tensor.*float32"):
        sigmoid_pair_losses(
            torch.zeros(3, 4), torch.zeros(5, 4), 1.0, 0.0, positives=torch.ones(3, 5)
        )


# ----------------------------------------------------------------------------- two ranks (gloo)


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        x, y = _emb(6, 4, 20), _emb(6, 4, 21)
        t = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
        c = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        xl, yl = _leaf(x[rank * 3 : rank * 3 + 3]), _leaf(y[rank * 3 : rank * 3 + 3])
        loss = SigLipLoss(rank=rank, world_size=world)(xl, yl, t, c)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "gx": xl.grad, "gy": yl.grad, "gt": t.grad, "gc": c.grad},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo file:// rendezvous")
def test_siglip_module_two_ranks_equals_global_loss(tmp_path):
    """Each rank's local loss scaled by n_local/N sums to the global loss; so do the gradients."""
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x, y = _leaf(_emb(6, 4, 20)), _leaf(_emb(6, 4, 21))
    t = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    glob = siglip_loss(x, y, t, c)
    glob.backward()
    # DDP averages gradients over ranks: (1/2) * sum_r d(loss_r) = d(global loss)
    torch.testing.assert_close(sum(r["loss"] for r in res) / 2, glob.detach())
    torch.testing.assert_close(torch.cat([r["gx"] for r in res]) / 2, x.grad)
    # text gradients come back to the rank that owns each text through all_gather's backward
    torch.testing.assert_close(torch.cat([r["gy"] for r in res]) / 2, y.grad)
    torch.testing.assert_close(sum(r["gt"] for r in res) / 2, t.grad)
    torch.testing.assert_close(sum(r["gc"] for r in res) / 2, c.grad)
