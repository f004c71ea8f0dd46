"""jestkit.selection: exact distributions by enumeration, dense == streaming, planted data, bad input."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jestkit.errors import JestkitError
from jestkit.losses import sigmoid_pair_losses
from jestkit.scoring import CRITERIA, Embeddings, example_scores, score_matrix
from jestkit.selection import (
    independent_sample,
    joint_sample,
    joint_sample_embeddings,
    make_selector,
    selection_stats,
    super_batch_size,
    uniform_sample,
)

CUDA = torch.cuda.is_available()


def _gen(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _emb(
    n: int, d: int, seed: int, dtype=torch.float64, scale=10.0, bias=-10.0, noise=0.8, device="cpu"
):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    y = F.normalize(x + noise * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return Embeddings(x.to(device), y.to(device), scale, bias)


def _problem(n: int, seed: int, device="cpu", dtype=torch.float64):
    """A learner/reference pair with different widths, scales and biases."""
    learner = _emb(n, 12, seed, dtype, scale=8.0, bias=-6.0, noise=1.5, device=device)
    reference = _emb(
        n, 7, seed + 1000, dtype, scale=torch.tensor(12.0), bias=-9.0, noise=0.5, device=device
    )
    return learner, reference


# ----------------------------------------------------------------------------- exact distributions


def _cond_full(a: np.ndarray, s: list[int]) -> np.ndarray:
    """s(j | S) = A[j, j] + sum_{i in S} A[i, j] + sum_{i in S} A[j, i]."""
    return np.diag(a) + a[s, :].sum(0) + a[:, s].sum(1)


def _cond_diag_only(a, s):  # wrong on purpose: ignores the conditional terms
    return np.diag(a).copy()


def _cond_rows_only(a, s):  # wrong on purpose: forgets the column terms
    return np.diag(a) + a[:, s].sum(1)


def _exact_set_probs(a: np.ndarray, k: int, n_chunks: int, temperature=1.0, cond=_cond_full):
    """P(set) of blocked sampling, by enumerating every ordered sequence of k distinct indices.

    Within a chunk the logits are fixed at the chunk start and the chunk is drawn without
    replacement from their softmax (Plackett-Luce), position by position.
    """
    n, c = a.shape[0], k // n_chunks
    probs: dict[frozenset, float] = defaultdict(float)

    def rec(seq, p, logits, avail):
        if len(seq) == k:
            probs[frozenset(seq)] += p
            return
        if len(seq) % c == 0:
            logits = cond(a, list(seq)) / temperature
        w = np.where(avail, np.exp(logits - logits[avail].max()), 0.0)
        w /= w.sum()
        for j in np.flatnonzero(avail):
            nxt = avail.copy()
            nxt[j] = False
            rec((*seq, int(j)), p * w[j], logits, nxt)

    rec((), 1.0, None, np.ones(n, dtype=bool))
    return probs


def _tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(s, 0.0) - q.get(s, 0.0)) for s in set(p) | set(q))


def _expected_tv(p: dict, m: int) -> float:
    """E[TV(empirical of m draws, p)] under the normal approximation (an over-estimate for rare sets)."""
    return 0.5 * math.sqrt(2 / math.pi) * sum(math.sqrt(v * (1 - v) / m) for v in p.values())


def _empirical(a: torch.Tensor, k: int, n_chunks: int, m: int, seed: int, temperature=1.0) -> dict:
    g = _gen(seed)
    counts = Counter(
        frozenset(joint_sample(a, k, n_chunks, g, temperature).tolist()) for _ in range(m)
    )
    return {s: v / m for s, v in counts.items()}


def _s(a: np.ndarray, subset) -> float:
    idx = list(subset)
    return float(a[np.ix_(idx, idx)].sum())


N_SMALL, K_SMALL, M_DRAWS = 12, 4, 10_000


@pytest.fixture(scope="module")
def small_problem():
    a = np.random.default_rng(0).normal(0.0, 1.0, (N_SMALL, N_SMALL))
    return a, torch.from_numpy(a)


@pytest.mark.parametrize(("n_chunks", "temperature"), [(1, 1.0), (2, 1.0), (4, 1.0), (4, 0.7)])
def test_sampler_matches_the_exact_sequential_conditional_distribution(
    small_problem, n_chunks, temperature
):
    a, at = small_problem
    exact = _exact_set_probs(a, K_SMALL, n_chunks, temperature)
    assert len(exact) == math.comb(N_SMALL, K_SMALL) and sum(exact.values()) == pytest.approx(1.0)
    bound = 2 * _expected_tv(exact, M_DRAWS)
    emp = _empirical(at, K_SMALL, n_chunks, M_DRAWS, seed=n_chunks, temperature=temperature)
    assert _tv(emp, exact) < bound
    if n_chunks > 1:
        # The test has power: samplers that get the conditional terms wrong are far away.
        for wrong in (_cond_diag_only, _cond_rows_only):
            assert (
                _tv(_exact_set_probs(a, K_SMALL, n_chunks, temperature, cond=wrong), exact)
                > 2 * bound
            )
        # ... and the same harness rejects an actual wrong sampler (diagonal only).
        wrong_emp = _empirical(
            torch.diag(torch.diagonal(at)), K_SMALL, n_chunks, M_DRAWS, 99, temperature
        )
        assert _tv(wrong_emp, exact) > bound


def test_n_chunks_one_is_exactly_independent_softmax_sampling(small_problem):
    a, _ = small_problem
    exact_joint = _exact_set_probs(a, K_SMALL, 1)
    diag = np.diag(a)
    exact_indep = _exact_set_probs(np.diag(diag), K_SMALL, 1)  # no off-diagonal terms at all
    assert _tv(exact_joint, exact_indep) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_joint_samples_score_higher_than_independent_ones(seed):
    """Enumerating every sub-batch: E[s(S)] grows with the number of chunks, for the exact
    distributions and for the sampler's own draws."""
    a = np.random.default_rng(100 + seed).normal(0.0, 1.0, (N_SMALL, N_SMALL))
    at = torch.from_numpy(a)
    scores = {S: _s(a, S) for S in itertools.combinations(range(N_SMALL), K_SMALL)}
    best = max(scores.values())
    exact_mean = {
        nc: sum(p * scores[tuple(sorted(S))] for S, p in _exact_set_probs(a, K_SMALL, nc).items())
        for nc in (1, 4)
    }
    assert exact_mean[4] > exact_mean[1]
    g = _gen(seed)
    draws = 3000
    emp = {
        nc: sum(_s(a, joint_sample(at, K_SMALL, nc, g).tolist()) for _ in range(draws)) / draws
        for nc in (1, 4)
    }
    assert emp[4] > emp[1]
    assert best - emp[4] < best - emp[1]


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize(
    ("n", "k", "n_chunks"), [(50, 10, 5), (50, 50, 10), (37, 1, 1), (64, 32, 16)]
)
@pytest.mark.parametrize("temperature", [0.0, 1.0, 3.0])
def test_exact_size_no_duplicates_in_range(n, k, n_chunks, temperature):
    learner, reference = _problem(n, seed=n + k)
    a = score_matrix(learner, reference, "learnability")
    outs = [
        joint_sample(a, k, n_chunks, _gen(1), temperature),
        joint_sample_embeddings(
            learner, reference, k, n_chunks, "learnability", _gen(1), temperature
        ),
        independent_sample(a.diagonal(), k, _gen(1), temperature),
        independent_sample(a.diagonal(), k, method="topk"),
        uniform_sample(n, k, _gen(1)),
    ]
    for idx in outs:
        assert idx.dtype == torch.long and idx.shape == (k,)
        assert len(set(idx.tolist())) == k
        assert int(idx.min()) >= 0 and int(idx.max()) < n


@pytest.mark.parametrize("magnitude", [1e30, 1e300])
def test_no_duplicates_with_extreme_scores_or_temperatures(magnitude):
    """Overflowing logits must never let an already-selected item back in."""
    g = _gen(0)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64) * magnitude
    for temperature in (1e-300, 1.0):
        idx = joint_sample(a, 40, 8, g, temperature)
        assert sorted(idx.tolist()) == list(range(40))
    idx = independent_sample(torch.full((40,), magnitude, dtype=torch.float64), 40, g, 1e-300)
    assert sorted(idx.tolist()) == list(range(40))


def test_determinism_under_a_seeded_generator():
    learner, reference = _problem(80, seed=5)
    a = score_matrix(learner, reference, "learnability")
    first = joint_sample(a, 16, 4, _gen(7))
    assert torch.equal(first, joint_sample(a, 16, 4, _gen(7)))
    assert not torch.equal(first, joint_sample(a, 16, 4, _gen(8)))
    s1 = joint_sample_embeddings(learner, reference, 16, 4, generator=_gen(7))
    assert torch.equal(s1, joint_sample_embeddings(learner, reference, 16, 4, generator=_gen(7)))
    assert torch.equal(uniform_sample(80, 16, _gen(3)), uniform_sample(80, 16, _gen(3)))


@pytest.mark.parametrize("n_chunks", [1, 2, 8])
def test_generator_consumption_is_one_rand_per_chunk(n_chunks):
    """Dense, streaming and independent draw exactly torch.rand(N) per chunk, nothing else."""
    learner, reference = _problem(30, seed=6)
    a = score_matrix(learner, reference, "learnability")
    want = _gen(11)
    for _ in range(n_chunks):
        torch.rand(30, generator=want, dtype=torch.float64)
    for sample in (
        lambda g: joint_sample(a, 8, n_chunks, g),
        lambda g: joint_sample_embeddings(learner, reference, 8, n_chunks, generator=g),
    ):
        g = _gen(11)
        sample(g)
        assert torch.equal(g.get_state(), want.get_state())
    g = _gen(11)
    joint_sample(a, 8, n_chunks, g, temperature=0.0)  # greedy: the generator is untouched
    assert torch.equal(g.get_state(), _gen(11).get_state())


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0])
def test_n_chunks_one_equals_independent_on_the_diagonal(temperature):
    learner, reference = _problem(64, seed=7)
    a = score_matrix(learner, reference, "learnability")
    diag = example_scores(learner, reference, "learnability")
    want = independent_sample(diag, 16, _gen(2), temperature)
    assert torch.equal(joint_sample(a, 16, 1, _gen(2), temperature), want)
    assert torch.equal(
        joint_sample_embeddings(
            learner, reference, 16, 1, generator=_gen(2), temperature=temperature
        ),
        want,
    )


def test_greedy_equals_a_naive_recompute_from_scratch_loop():
    learner, reference = _problem(45, seed=8)
    a = score_matrix(learner, reference, "learnability")
    an = a.numpy()
    chosen: list[int] = []
    for _ in range(5):  # 5 chunks of 3
        cond = _cond_full(an, chosen)
        cond[chosen] = -np.inf
        chosen += [int(j) for j in np.argsort(-cond, kind="stable")[:3]]
    assert joint_sample(a, 15, 5, temperature=0.0).tolist() == chosen
    assert joint_sample_embeddings(learner, reference, 15, 5, temperature=0.0).tolist() == chosen
    # independent greedy == top-k
    assert torch.equal(
        independent_sample(a.diagonal(), 9, temperature=0.0),
        independent_sample(a.diagonal(), 9, method="topk"),
    )


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize(
    ("k", "n_chunks", "temperature"), [(40, 8, 1.0), (24, 24, 0.3), (60, 4, 0.0)]
)
def test_streaming_equals_dense(criterion, k, n_chunks, temperature):
    for seed in range(3):
        learner, reference = _problem(151, seed=20 + seed)
        a = score_matrix(learner, reference, criterion)
        dense = joint_sample(a, k, n_chunks, _gen(seed), temperature)
        for block_elems in (None, 151 * 5):  # whole chunks, and chunks split into sub-blocks
            stream = joint_sample_embeddings(
                learner,
                reference,
                k,
                n_chunks,
                criterion,
                _gen(seed),
                temperature,
                block_elems=block_elems,
            )
            assert torch.equal(stream, dense)


@pytest.mark.parametrize("joint_weight", [0.0, 0.5, 3.0, 128.0])
def test_joint_weight_is_joint_selection_on_a_matrix_with_scaled_joint_terms(joint_weight):
    """s(j | S) = A[j, j] + lambda * (row and column sums over S): the same draws as the plain
    sampler on A' = diag(A) + lambda * offdiag(A), dense and streaming."""
    for seed in range(3):
        learner, reference = _problem(97, seed=40 + seed)
        a = score_matrix(learner, reference, "learnability")
        diag = torch.diag(a.diagonal())
        scaled = diag + joint_weight * (a - diag)
        expected = joint_sample(scaled, 32, 8, _gen(seed))
        assert torch.equal(joint_sample(a, 32, 8, _gen(seed), joint_weight=joint_weight), expected)
        stream = joint_sample_embeddings(
            learner, reference, 32, 8, generator=_gen(seed), joint_weight=joint_weight
        )
        assert torch.equal(stream, expected)
        selector = make_selector("jest", n_chunks=8, joint_weight=joint_weight)
        assert torch.equal(selector.select(learner, reference, 32, _gen(seed))[0], expected)
    # The weight matters: the sets differ from lambda = 1 on this problem.
    if joint_weight != 1.0:
        assert not torch.equal(expected, joint_sample(a, 32, 8, _gen(2)))


def test_streaming_equals_dense_in_float32_up_to_ties():
    learner, reference = _problem(300, seed=30, dtype=torch.float32)
    a = score_matrix(learner, reference, "learnability")
    dense = joint_sample(a, 64, 16, _gen(0))
    stream = joint_sample_embeddings(learner, reference, 64, 16, generator=_gen(0))
    overlap = len(set(dense.tolist()) & set(stream.tolist())) / 64
    assert overlap > 0.9  # float32 rounding may flip a near-tie, which then changes later chunks


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_streaming_equals_dense_on_cuda():
    learner, reference = _problem(500, seed=40, device="cuda")
    a = score_matrix(learner, reference, "learnability")
    assert a.device.type == "cuda"
    dense = joint_sample(a, 80, 16, _gen(0, "cuda"))
    stream = joint_sample_embeddings(learner, reference, 80, 16, generator=_gen(0, "cuda"))
    assert dense.device.type == stream.device.type == "cuda"
    assert torch.equal(dense, stream)
    cpu = joint_sample(a.cpu(), 80, 16, temperature=0.0)
    assert torch.equal(joint_sample(a, 80, 16, temperature=0.0).cpu(), cpu)
    idx, stats = make_selector("jest").select(learner, reference, 80, _gen(1, "cuda"))
    assert (
        idx.device.type == "cuda" and len(set(idx.tolist())) == 80 and "joint_term_spread" in stats
    )


# ----------------------------------------------------------------------------- planted data


def _planted(n: int, planted: int, noisy: int, seed: int, d: int = 16):
    """Planted pairs: learner loss high (unaligned), reference loss low (aligned). Noisy pairs:
    both models unaligned (high learner *and* reference loss). The rest: both aligned."""
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)

    x_l, x_r = unit(n, d), unit(n, d)
    y_l = F.normalize(x_l + 0.2 * unit(n, d), dim=-1)
    y_r = F.normalize(x_r + 0.2 * unit(n, d), dim=-1)
    perm = torch.randperm(n, generator=g)
    plant, noise = perm[:planted], perm[planted : planted + noisy]
    y_l[plant], y_l[noise], y_r[noise] = unit(planted, d), unit(noisy, d), unit(noisy, d)
    return Embeddings(x_l, y_l, 10.0, -10.0), Embeddings(x_r, y_r, 10.0, -10.0), set(plant.tolist())


def test_planted_learnable_pairs_are_recovered_far_more_often_than_uniform():
    n, k, planted = 96, 24, 6
    recall = {"jest": [], "uniform": [], "hard_learner": []}
    for seed in range(20):
        learner, reference, plant = _planted(n, planted, noisy=30, seed=seed)
        g = _gen(seed)
        picks = {
            "jest": make_selector("jest", n_chunks=4, stats=False).select(learner, reference, k, g)[
                0
            ],
            "uniform": make_selector("uniform", stats=False).select(learner, reference, k, g)[0],
            "hard_learner": joint_sample_embeddings(learner, None, k, 4, "hard_learner", g),
        }
        for name, idx in picks.items():
            recall[name].append(len(plant & set(idx.tolist())) / planted)
    mean = {name: sum(v) / len(v) for name, v in recall.items()}
    assert mean["jest"] > 0.9
    assert mean["uniform"] < 0.45  # k / n = 0.25 expected
    assert mean["jest"] > 2 * mean["uniform"]
    # hard-learner cannot tell planted pairs from noisy ones; learnability can.
    assert mean["jest"] > mean["hard_learner"] + 0.2


# ----------------------------------------------------------------------------- selectors and stats


def test_selector_needs():
    assert (make_selector("uniform").needs_learner, make_selector("uniform").needs_reference) == (
        False,
        False,
    )
    for name in ("independent", "jest"):
        for crit, needs in [
            ("learnability", (True, True)),
            ("hard_learner", (True, False)),
            ("easy-reference", (False, True)),
        ]:
            sel = make_selector(name, criterion=crit)
            assert (sel.needs_learner, sel.needs_reference) == needs


def test_selectors_return_indices_and_stats():
    learner, reference = _problem(120, seed=50)
    keys = {
        "score_pool_mean",
        "score_selected_mean",
        "learner_loss_selected",
        "reference_loss_selected",
        "learner_neg_loss_selected",
        "reference_neg_loss_selected",
        "joint_term_spread",
        "example_score_spread",
    }
    for name in ("uniform", "independent", "jest"):
        idx, stats = make_selector(name).select(learner, reference, 32, _gen(0))
        assert idx.shape == (32,) and len(set(idx.tolist())) == 32
        assert keys <= set(stats) and all(
            isinstance(v, float) and math.isfinite(v) for v in stats.values()
        )
        assert stats == selection_stats(learner, reference, idx, "learnability")
    idx, stats = make_selector("uniform").select(None, None, 5, _gen(0), n=10)
    assert len(set(idx.tolist())) == 5 and stats == {"pool_size": 10.0, "batch_size": 5.0}
    # only the reference: reference stats and the easy_reference score, nothing about the learner
    stats = selection_stats(None, reference, idx, "easy_reference")
    assert "reference_loss_selected" in stats and "score_selected_mean" in stats
    assert not any(key.startswith("learner") for key in stats)


def test_dense_and_streaming_selectors_agree():
    learner, reference = _problem(120, seed=51)
    a = make_selector("jest", streaming=True).select(learner, reference, 32, _gen(4))
    b = make_selector("jest", streaming=False).select(learner, reference, 32, _gen(4))
    assert torch.equal(a[0], b[0])


def test_independent_selector_score_modes():
    learner, reference = _problem(90, seed=52)
    for mode in ("diagonal", "rowcol"):
        for method in ("softmax", "topk"):
            sel = make_selector("independent", score_mode=mode, method=method, temperature=0.5)
            idx, _ = sel.select(learner, reference, 18, _gen(3))
            want = independent_sample(
                example_scores(learner, reference, "learnability", mode), 18, _gen(3), 0.5, method
            )
            assert torch.equal(idx, want)


def test_selection_stats_match_naive_loops():
    learner, reference = _problem(25, seed=53)
    idx = torch.tensor([3, 17, 8, 0, 21, 12])
    stats = selection_stats(learner, reference, idx, "learnability")
    ll = sigmoid_pair_losses(learner.image, learner.text, learner.scale, learner.bias).numpy()
    lr = sigmoid_pair_losses(
        reference.image, reference.text, reference.scale, reference.bias
    ).numpy()
    a = ll - lr
    s = idx.tolist()
    k = len(s)
    off = [(i, j) for i in s for j in s if i != j]
    joint = [sum(a[i, j] + a[j, i] for j in s if j != i) for i in s]
    want = {
        "learner_loss_pool": np.mean(np.diag(ll)),
        "learner_loss_selected": np.mean([ll[i, i] for i in s]),
        "learner_neg_loss_selected": np.mean([ll[i, j] for i, j in off]),
        "reference_loss_pool": np.mean(np.diag(lr)),
        "reference_loss_selected": np.mean([lr[i, i] for i in s]),
        "reference_neg_loss_selected": np.mean([lr[i, j] for i, j in off]),
        "score_pool_mean": np.mean(np.diag(a)),
        "score_selected_mean": np.mean([a[i, i] for i in s]),
        "example_score_spread": np.std([a[i, i] for i in s]),
        "joint_term_spread": np.std(joint),
        "batch_score_selected": sum(a[i, j] for i in s for j in s) / k,
        "neg_score_selected": np.mean([a[i, j] for i, j in off]),
        "pool_example_score_spread": np.std(np.diag(a)),
        # every unselected candidate (25 - 6 < POOL_PROBE): its joint term given the whole S
        "pool_joint_term_spread": np.std(
            [sum(a[i, p] + a[p, i] for i in s) for p in range(25) if p not in s]
        ),
        "pool_size": 25.0,
        "batch_size": float(k),
    }
    assert set(stats) == set(want)
    for key, value in want.items():
        assert stats[key] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key


def test_selection_stats_probe_is_the_first_unselected(monkeypatch):
    import jestkit.selection as sel

    learner, reference = _problem(30, seed=54)
    idx = torch.tensor([4, 0, 9, 13])
    monkeypatch.setattr(sel, "POOL_PROBE", 5)
    stats = selection_stats(learner, reference, idx, "learnability")
    a = (
        sigmoid_pair_losses(learner.image, learner.text, learner.scale, learner.bias)
        - sigmoid_pair_losses(reference.image, reference.text, reference.scale, reference.bias)
    ).numpy()
    probe = [p for p in range(30) if p not in idx.tolist()][:5]
    joint = [sum(a[i, p] + a[p, i] for i in idx.tolist()) for p in probe]
    assert stats["pool_joint_term_spread"] == pytest.approx(float(np.std(joint)), rel=1e-9)


# ----------------------------------------------------------------------------- bad input


def test_super_batch_size():
    assert super_batch_size(6560, 0.8) == 32800
    assert [super_batch_size(32768, f) for f in (0.5, 0.8, 0.9)] == [65536, 163840, 327680]
    assert super_batch_size(10, 0.001) == 11  # always filters something
    for f in (0, 1, 1.5, -0.2, float("nan"), True, "x"):
        with pytest.raises(JestkitError, match=f"filter_ratio must be .*got {f!r}"):
            super_batch_size(32, f)
    for b in (0, -3, 2.5):
        with pytest.raises(JestkitError, match=f"batch_size must be .*{b}"):
            super_batch_size(b, 0.5)


@pytest.fixture(scope="module")
def scores():
    learner, reference = _problem(20, seed=60)
    return learner, reference, score_matrix(learner, reference, "learnability")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 21}, "k must be <= the pool size N=20, got k=21"),
        ({"k": 0}, "k must be >= 1, got 0"),
        ({"k": -4}, "k must be >= 1, got -4"),
        ({"k": 2.5}, "k must be an integer, got 2.5"),
        ({"k": True}, "k must be an integer, got True"),
        ({"k": 10, "n_chunks": 4}, "k=10 is not divisible by n_chunks=4"),
        ({"k": 4, "n_chunks": 0}, "n_chunks must be >= 1, got 0"),
        ({"k": 4, "temperature": -1.0}, "temperature must be a finite number >= 0.*-1.0"),
        ({"k": 4, "temperature": float("nan")}, "temperature .*nan"),
        ({"k": 4, "joint_weight": -1.0}, "joint_weight must be a finite number >= 0, got -1.0"),
        ({"k": 4, "joint_weight": float("inf")}, "joint_weight .*inf"),
        ({"k": 4, "joint_weight": "big"}, "joint_weight must be a number >= 0, got 'big'"),
        ({"k": 4, "generator": 3}, "generator must be a torch.Generator or None, got int"),
    ],
)
def test_joint_sample_bad_arguments(scores, kwargs, match):
    learner, reference, a = scores
    kwargs = {"n_chunks": 1, **kwargs}
    with pytest.raises(JestkitError, match=match):
        joint_sample(a, **kwargs)
    with pytest.raises(JestkitError, match=match):
        joint_sample_embeddings(learner, reference, **kwargs)


def test_bad_score_matrices(scores):
    _, _, a = scores
    with pytest.raises(
        JestkitError, match=r"scores must be a square \[N, N\] matrix, got shape \(20, 19\)"
    ):
        joint_sample(a[:, :19], 4, 1)
    with pytest.raises(JestkitError, match=r"got shape \(20,\)"):
        joint_sample(a.diagonal(), 4, 1)
    bad = a.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(JestkitError, match=r"scores has 1 non-finite values .*\[3, 5\] = nan"):
        joint_sample(bad, 4, 1)
    bad[3, 5] = float("-inf")
    with pytest.raises(JestkitError, match=r"-inf"):
        joint_sample(bad, 4, 1)
    with pytest.raises(JestkitError, match=r"floating point, got dtype torch.int64"):
        joint_sample(torch.zeros(4, 4, dtype=torch.long), 2, 1)
    with pytest.raises(
        JestkitError, match=r"scores must be a 1-D \[N\] vector, got shape \(20, 20\)"
    ):
        independent_sample(a, 4)
    with pytest.raises(JestkitError, match=r"scores has 1 non-finite .*\[2\] = inf"):
        independent_sample(torch.tensor([0.0, 1.0, float("inf")]), 1)
    with pytest.raises(JestkitError, match=r"method must be one of softmax, topk, got 'top'"):
        independent_sample(a.diagonal(), 4, method="top")
    with pytest.raises(JestkitError, match=r"scores must be a torch.Tensor, got list"):
        joint_sample([[0.0]], 1, 1)


def test_bad_embeddings_for_streaming(scores):
    learner, reference, _ = scores
    nan = Embeddings(learner.image.clone(), learner.text, learner.scale, learner.bias)
    nan.image[4, 0] = float("nan")
    with pytest.raises(
        JestkitError, match=r"learner.image has 1 non-finite values .*\[4, 0\] = nan"
    ):
        joint_sample_embeddings(nan, reference, 4, 1)
    with pytest.raises(JestkitError, match=r"same N examples, got N=20 and N=19"):
        joint_sample_embeddings(learner, reference.index(slice(0, 19)), 4, 1)
    wrong = Embeddings(learner.image, learner.text.float(), learner.scale, learner.bias)
    with pytest.raises(
        JestkitError, match=r"learner.image and learner.text must have the same dtype"
    ):
        joint_sample_embeddings(wrong, reference, 4, 1)
    with pytest.raises(JestkitError, match=r"reference.image must be 2-D"):
        joint_sample_embeddings(
            learner, Embeddings(reference.image[0], reference.text, 1.0, 0.0), 4, 1
        )
    with pytest.raises(
        JestkitError,
        match=r"criterion must be one of learnability, hard_learner, easy_reference, got 'hard'",
    ):
        joint_sample_embeddings(learner, reference, 4, 1, criterion="hard")


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_generator_on_the_wrong_device(scores):
    _, _, a = scores
    with pytest.raises(JestkitError, match=r"generator is on cuda.* but the scores are on cpu"):
        joint_sample(a, 4, 1, torch.Generator(device="cuda"))


def test_bad_selectors(scores):
    learner, reference, _ = scores
    with pytest.raises(
        JestkitError,
        match=r"selector must be one of uniform, independent, jest, flexi-jest, got 'joint'",
    ):
        make_selector("joint")
    with pytest.raises(
        JestkitError,
        match=r"unknown option.*n_chunks for selector 'independent'; it accepts criterion",
    ):
        make_selector("independent", n_chunks=4)
    with pytest.raises(
        JestkitError, match=r"score_mode must be one of diagonal, rowcol, got 'row'"
    ):
        make_selector("independent", score_mode="row")
    with pytest.raises(JestkitError, match=r"n_chunks must be >= 1, got 0"):
        make_selector("jest", n_chunks=0)
    with pytest.raises(JestkitError, match=r"temperature must be .*-2"):
        make_selector("jest", temperature=-2)
    with pytest.raises(JestkitError, match=r"streaming must be True or False, got 'yes'"):
        make_selector("jest", streaming="yes")
    with pytest.raises(
        JestkitError, match=r"'learnability' needs reference embeddings, got reference=None"
    ):
        make_selector("jest").select(learner, None, 4, None)
    with pytest.raises(JestkitError, match=r"pass n=... when learner and reference are None"):
        make_selector("uniform").select(None, None, 4, None)
    with pytest.raises(JestkitError, match=r"disagree on the pool size: \[20, 30\]"):
        make_selector("uniform").select(learner, None, 4, None, n=30)
    with pytest.raises(JestkitError, match=r"k must be <= the pool size N=20, got k=30"):
        make_selector("jest", n_chunks=1).select(learner, reference, 30, None)
    with pytest.raises(JestkitError, match=r"indices must be a non-empty 1-D integer tensor"):
        selection_stats(learner, reference, torch.tensor([]), "learnability")
    with pytest.raises(JestkitError, match=r"n must be >= 1, got 0"):
        uniform_sample(0, 1)


# ----------------------------------------------------------------------------- benchmark smoke


def test_benchmark_runs_and_reports_ratios(capsys):
    from jestkit.benchmarks.selection import main

    assert (
        main(
            [
                "--sizes",
                "256",
                "--filter-ratios",
                "0.5",
                "--dim",
                "16",
                "--repeats",
                "1",
                "--no-target",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    header, row = out.strip().splitlines()[-2:]
    assert "stream ms" in header and "dense ms" in header
    assert row.split()[:4] == ["256", "0.50", "128", "16"] and row.count("x") == 2
