"""Distributed pieces on CPU with gloo, 2 processes: the loss, selection with global context, config
checks. The single-process versions on the same global data are the oracle.

Workers run several checks each and save what they computed; the assertions run in the test
process (an assertion inside a spawned worker would surface only as a dead process).
"""

from __future__ import annotations

import datetime
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from jestkit.distributed_selection import proposals_per_rank
from jestkit.errors import JestkitError
from jestkit.losses import SigLipLoss, siglip_loss
from jestkit.scoring import Embeddings
from jestkit.selection import Shard, joint_sample_embeddings, make_selector

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo file:// rendezvous")

WORLD = 2
N, D, K, CHUNKS = 48, 8, 16, 4  # the global super-batch; each rank holds N / WORLD


def _emb(n: int, d: int, seed: int, scale: float, bias: float) -> Embeddings:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(x + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return Embeddings(x, y, scale, bias)


def _pools() -> tuple[Embeddings, Embeddings]:
    return _emb(N, D, 1, 10.0, -5.0), _emb(N, D, 2, 8.0, -4.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _recording_pick(log: list[torch.Tensor], pick):
    def wrapped(logits: torch.Tensor, c: int) -> torch.Tensor:
        log.append(logits.clone())
        return pick(logits, c)

    return wrapped


def _logits(case: str) -> torch.Tensor:
    """24 logits over two ranks (12 each), some taken (-inf)."""
    if case == "skewed":
        v = torch.cat([torch.arange(24.0, 12.0, -1), torch.arange(12.0, 0.0, -1)])
    elif case == "interleaved":
        v = torch.arange(24.0, 0.0, -1).view(12, 2).T.flatten()
    else:
        v = torch.randn(24, generator=_gen(3))
    v[[5, 17]] = float("-inf")
    return v


def _init(rank: int, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from jestkit.distributed import World, check_same_config, wrap_model
    from jestkit.distributed_selection import DistributedSelector, global_top

    _init(rank, init_file)
    out: dict = {}
    try:
        # 1. SigLIP on a global batch split unevenly (6 + 2, then 0 + 8): loss and gradients.
        x, y = _emb(8, 4, 20, 1.0, 0.0), _emb(8, 4, 21, 1.0, 0.0)
        for name, counts in (("uneven", (6, 2)), ("empty", (0, 8))):
            lo = sum(counts[:rank])
            xl = x.image[lo : lo + counts[rank]].clone().requires_grad_(True)
            yl = y.image[lo : lo + counts[rank]].clone().requires_grad_(True)
            t = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
            c = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
            loss = SigLipLoss(rank, WORLD)(xl, yl, t, c, counts=counts)
            loss.backward()
            out[name] = {"loss": loss.detach(), "gx": xl.grad, "gy": yl.grad, "gt": t.grad}

        # 2. Selection from the gathered super-batch: each rank passes its own slice.
        learner, reference = _pools()
        n = N // WORLD
        mine = (
            learner.index(torch.arange(rank * n, (rank + 1) * n)),
            reference.index(torch.arange(rank * n, (rank + 1) * n)),
        )
        for name, kw in (
            ("jest", {"n_chunks": CHUNKS}),
            ("jest-easy", {"n_chunks": CHUNKS, "criterion": "easy_reference"}),
            ("jest-lambda", {"n_chunks": CHUNKS, "joint_weight": 3.0}),
            ("independent", {}),
            ("uniform", {}),
        ):
            kind = name.split("-")[0]
            selector = DistributedSelector(make_selector(kind, **kw), rank, WORLD)
            idx, stats = selector.select(*mine, K, _gen(7), n=n)
            out[f"select/{name}"] = {"idx": idx, "stats": stats}

        # 3. The conditional scores each rank computes for its slice, chunk by chunk (T = 0:
        #    the logits *are* the conditional scores, selected ones masked).
        log: list[torch.Tensor] = []
        pick = _recording_pick(log, lambda logits, c: global_top(logits, c, rank * n, WORLD))
        idx = joint_sample_embeddings(
            learner, reference, K, CHUNKS, temperature=0.0, shard=Shard(rank * n, n, N, pick)
        )
        out["cond"] = {"idx": idx, "log": log}

        # 4. The global top-c from short proposals (m < c), with and without the fallback:
        #    "skewed" puts rank 0's values all above rank 1's, "interleaved" alternates them.
        tops = {}
        for case in ("skewed", "interleaved", "random"):
            vals = _logits(case)[rank * 12 : (rank + 1) * 12]
            for c, m in ((4, 3), (8, 3), (12, 12)):
                tops[case, c, m] = global_top(vals, c, rank * 12, WORLD, m=m)
        out["tops"] = tops

        # 5. Gradient averaging by the DDP-wrapped learner: rank r's gradient on row 0 is r + 1
        #    -> 1.5 on every rank (row 1: 0); the wrapper starts every rank from rank 0's weights.
        net = torch.nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            net.weight.fill_(float(rank))
        ddp = wrap_model(net, World(rank, WORLD), torch.device("cpu"))
        x = torch.full((1, 3), float(rank + 1))
        w0 = net.weight.detach().clone()
        ddp(x)[:, 0].sum().backward()
        out["grads"] = (net.weight.grad.clone(), w0)

        # 6. Different configs on the two ranks are refused by every rank.
        try:
            check_same_config(World(rank, WORLD), {"train": {"seed": rank, "steps": 10}})
            out["config"] = "no error"
        except JestkitError as e:
            out["config"] = str(e)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["uneven", "empty"])
def test_siglip_loss_across_ranks_equals_the_global_loss_with_uneven_counts(results, name):
    x, y = _emb(8, 4, 20, 1.0, 0.0).image.clone(), _emb(8, 4, 21, 1.0, 0.0).image.clone()
    x.requires_grad_(True)
    y.requires_grad_(True)
    t = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(-2.0, dtype=torch.float64)
    glob = siglip_loss(x, y, t, c)
    glob.backward()
    res = [r[name] for r in results]
    # the mean over ranks is the global loss; so is the mean of the gradients (DDP's averaging)
    torch.testing.assert_close(sum(r["loss"] for r in res) / WORLD, glob.detach())
    torch.testing.assert_close(torch.cat([r["gx"] for r in res]) / WORLD, x.grad)
    torch.testing.assert_close(torch.cat([r["gy"] for r in res]) / WORLD, y.grad)
    torch.testing.assert_close(sum(r["gt"] for r in res) / WORLD, t.grad)


@pytest.mark.parametrize("name", ["jest", "jest-easy", "jest-lambda", "independent", "uniform"])
def test_distributed_selection_equals_one_process_on_the_union(results, name):
    learner, reference = _pools()
    kind = name.split("-")[0]
    kw = {"n_chunks": CHUNKS} if kind == "jest" else {}
    if name == "jest-easy":
        kw["criterion"] = "easy_reference"
    if name == "jest-lambda":
        kw["joint_weight"] = 3.0
    expected, stats = make_selector(kind, **kw).select(learner, reference, K, _gen(7), n=N)
    for r in results:
        got = r[f"select/{name}"]
        assert torch.equal(got["idx"], expected)  # same indices, same order, on every rank
        assert got["idx"].numel() == K and got["idx"].unique().numel() == K
        assert got["stats"].keys() == stats.keys()
        for key, value in stats.items():
            assert got["stats"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_conditional_scores_of_the_shards_equal_the_one_process_scores(results):
    learner, reference = _pools()
    log: list[torch.Tensor] = []
    pick = _recording_pick(log, lambda logits, c: torch.topk(logits, c, sorted=True).indices)
    expected = joint_sample_embeddings(
        learner, reference, K, CHUNKS, temperature=0.0, shard=Shard(0, N, N, pick)
    )
    plain = joint_sample_embeddings(learner, reference, K, CHUNKS, temperature=0.0)
    assert torch.equal(expected, plain)  # a one-rank shard is the plain sampler
    assert len(log) == CHUNKS
    for r in results:
        assert torch.equal(r["cond"]["idx"], expected)
    for chunk in range(CHUNKS):
        got = torch.cat([r["cond"]["log"][chunk] for r in results])  # rank order = pool order
        torch.testing.assert_close(got, log[chunk], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["skewed", "interleaved", "random"])
def test_global_top_equals_topk_over_the_union_whatever_the_proposals(results, case):
    v = _logits(case)
    for c, m in ((4, 3), (8, 3), (12, 12)):
        expected = torch.topk(v, c, sorted=True).indices
        for r in results:
            assert torch.equal(r["tops"][case, c, m], expected), (c, m)


def test_proposals_per_rank_cover_a_binomial_share():
    assert proposals_per_rank(2048, 256) <= 4 * 2048 // 256  # paper scale: a few x the share
    assert proposals_per_rank(4, 2) == 4  # small chunks: everything
    for c, p in ((2048, 256), (256, 8), (64, 2)):
        assert c / p < proposals_per_rank(c, p) <= c


def test_gradients_are_averaged_over_ranks(results):
    for r in results:
        grad, start = r["grads"]
        assert torch.equal(grad[0], torch.full((3,), 1.5))
        assert torch.equal(grad[1], torch.zeros(3))
        assert torch.equal(start, torch.zeros(2, 3))  # rank 0's weights (rank 1 filled 1s)


def test_ranks_with_different_configs_are_refused_naming_the_key(results):
    for r in results:
        assert "train.seed: rank 0 has 0, rank 1 has 1" in r["config"]
        assert "steps" not in r["config"]  # only what differs
