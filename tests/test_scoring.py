"""jestkit.scoring: criteria, blocks and per-example scores against dense definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jestkit.errors import JestkitError
from jestkit.losses import sigmoid_pair_losses
from jestkit.scoring import (
    CRITERIA,
    BlockScorer,
    Embeddings,
    all_finite,
    example_scores,
    normalize_criterion,
    score_block,
    score_matrix,
)


def _emb(n: int, d: int, seed: int, dtype=torch.float64, scale=10.0, bias=-10.0) -> Embeddings:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    y = F.normalize(x + 0.8 * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return Embeddings(x, y, scale, bias)


@pytest.fixture
def pair():
    learner = _emb(23, 8, 0, scale=torch.tensor(7.0, dtype=torch.float64), bias=-4.0)
    reference = _emb(23, 5, 1, scale=12.0, bias=torch.tensor(-9.0))  # own d, t, c
    return learner, reference


def _dense(learner, reference, criterion):
    ll = sigmoid_pair_losses(learner.image, learner.text, learner.scale, learner.bias)
    lr = sigmoid_pair_losses(reference.image, reference.text, reference.scale, reference.bias)
    return {"learnability": ll - lr, "hard_learner": ll, "easy_reference": -lr}[criterion]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_score_matrix_matches_the_criterion_definition(pair, criterion):
    torch.testing.assert_close(score_matrix(*pair, criterion), _dense(*pair, criterion))


def test_criteria_need_only_their_models(pair):
    learner, reference = pair
    torch.testing.assert_close(
        score_matrix(learner, None, "hard-learner"), _dense(*pair, "hard_learner")
    )
    torch.testing.assert_close(
        score_matrix(None, reference, "easy-reference"), _dense(*pair, "easy_reference")
    )
    with pytest.raises(
        JestkitError, match=r"'learnability' needs reference embeddings, got reference=None"
    ):
        score_matrix(learner, None, "learnability")
    with pytest.raises(JestkitError, match=r"needs learner embeddings"):
        example_scores(None, reference, "hard_learner")


def test_unknown_criterion_lists_the_known_ones(pair):
    with pytest.raises(
        JestkitError, match=r"learnability, hard_learner, easy_reference, got 'loss'"
    ):
        score_matrix(*pair, "loss")
    assert normalize_criterion("Easy-Reference") == "easy_reference"


@pytest.mark.parametrize("criterion", CRITERIA)
def test_score_block_equals_the_dense_block(pair, criterion):
    dense = _dense(*pair, criterion)
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 23, (9,), generator=g)  # repeats and overlaps with cols on purpose
    cols = torch.cat([rows[:4], torch.randint(0, 23, (6,), generator=g)])
    torch.testing.assert_close(score_block(*pair, criterion, rows, cols), dense[rows][:, cols])
    torch.testing.assert_close(
        score_block(*pair, criterion, [1, 2], [2, 1]), dense[[1, 2]][:, [2, 1]]
    )


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("block_elems", [1, 7 * 23, None])
def test_rowcol_scores_are_row_plus_column_sums(pair, criterion, block_elems):
    dense = _dense(*pair, criterion)
    want = dense.sum(1) + dense.sum(0) - dense.diagonal()
    got = example_scores(*pair, criterion, mode="rowcol", block_elems=block_elems)
    torch.testing.assert_close(got, want)
    # ... which is the conditional score of k given the rest of the pool, s(k | P \\ {k})
    k = 5
    rest = [i for i in range(23) if i != k]
    cond = dense[k, k] + dense[rest, k].sum() + dense[k, rest].sum()
    torch.testing.assert_close(got[k], cond)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_diagonal_scores(pair, criterion):
    torch.testing.assert_close(
        example_scores(*pair, criterion), _dense(*pair, criterion).diagonal()
    )


@pytest.mark.parametrize("block_elems", [1, 2 * 23 * 3, None])
def test_chunk_sums_equal_dense_sums_outside_the_chunk(pair, block_elems):
    dense = _dense(*pair, "learnability")
    idx = torch.tensor([4, 17, 0, 9, 22, 11, 3])
    got = BlockScorer(*pair, "learnability", block_elems=block_elems).chunk_sums(idx)
    want = dense[idx].sum(0) + dense[:, idx].sum(1)
    outside = torch.ones(23, dtype=torch.bool)
    outside[idx] = False
    torch.testing.assert_close(got[outside], want[outside])


def test_restricted_columns_equal_dense_sums(pair):
    """Joint selection drops selected columns; the remaining sums must not change."""
    dense = _dense(*pair, "learnability")
    idx = torch.tensor([4, 17, 0])
    cols = torch.tensor([1, 2, 3, 5, 8, 13, 21, 22, 9, 11])  # unsorted, not a multiple of 16
    want = dense[idx].sum(0) + dense[:, idx].sum(1)
    scorer = BlockScorer(*pair, "learnability", block_elems=2 * 4 * 23)  # sub-blocks of 2 rows
    scorer.restrict_columns(cols)
    torch.testing.assert_close(scorer.chunk_sums(idx), want[cols])
    scorer.restrict_columns(cols[:3])  # shrinking again reuses the buffer
    torch.testing.assert_close(scorer.chunk_sums(idx), want[cols[:3]])
    scorer.restrict_columns(None)
    outside = torch.ones(23, dtype=torch.bool)
    outside[idx] = False
    torch.testing.assert_close(scorer.chunk_sums(idx)[outside], want[outside])


def test_mixed_dtypes_compute_in_the_wider_one(pair):
    learner, reference = pair
    got = score_matrix(learner.to(dtype=torch.float32), reference, "learnability")
    assert got.dtype == torch.float64
    half = score_matrix(learner.to(dtype=torch.bfloat16), None, "hard_learner")
    assert half.dtype == torch.float32  # half precision is upcast: sums of N terms need float32
    want = score_matrix(
        learner.to(dtype=torch.bfloat16).to(dtype=torch.float32), None, "hard_learner"
    )
    torch.testing.assert_close(half, want)


def test_embeddings_record(pair):
    learner, _ = pair
    assert len(learner) == 23
    sub = learner.index(torch.tensor([3, 1]))
    assert len(sub) == 2 and torch.equal(sub.image[1], learner.image[1])
    assert torch.equal(learner.index([3, 1]).text, sub.text)
    f32 = learner.to(dtype=torch.float32)
    assert f32.image.dtype == f32.text.dtype == torch.float32 and f32.scale.dtype == torch.float32
    assert learner.validate("learner") is learner


def _bad(**kw) -> Embeddings:
    base = {"image": torch.zeros(4, 3), "text": torch.zeros(4, 3), "scale": 1.0, "bias": 0.0}
    base.update(kw)
    return Embeddings(**base)


@pytest.mark.parametrize(
    ("emb", "match"),
    [
        (
            _bad(text=torch.zeros(5, 3)),
            r"learner.image and learner.text must have the same shape.*\(4, 3\).*\(5, 3\)",
        ),
        (_bad(text=torch.zeros(4, 3, dtype=torch.float64)), "same dtype.*float32.*float64"),
        (_bad(text=torch.zeros(4, 3, device="meta")), "same device.*cpu.*meta"),
        (_bad(image=torch.zeros(4)), r"learner.image must be 2-D.*\(4,\)"),
        (_bad(image=torch.zeros(4, 3, dtype=torch.int64)), "floating point.*int64"),
        (_bad(image=[[0.0]]), "learner.image must be a torch.Tensor, got list"),
        (_bad(scale=torch.ones(2)), r"learner.scale must be a scalar.*\(2,\)"),
        (_bad(bias="x"), "learner.bias must be a float or a 0-d tensor, got 'x'"),
        (_bad(scale=float("inf")), "scale and learner.bias must be finite, got scale=inf"),
        (_bad(image=torch.zeros(0, 3), text=torch.zeros(0, 3)), r"learner is empty"),
    ],
)
def test_bad_embeddings(emb, match):
    with pytest.raises(JestkitError, match=match):
        emb.validate("learner")


def test_nan_embeddings_name_the_position(pair):
    learner, reference = pair
    bad = learner.index(slice(None))
    bad.text = bad.text.clone()
    bad.text[7, 2] = float("nan")
    with pytest.raises(
        JestkitError, match=r"learner.text has 1 non-finite values .*\[7, 2\] = nan"
    ):
        score_matrix(bad, reference, "learnability")
    bad.text[7, 2] = float("inf")
    with pytest.raises(JestkitError, match=r"\[7, 2\] = inf"):
        example_scores(bad, reference, "learnability")


def test_learner_and_reference_must_match(pair):
    learner, reference = pair
    with pytest.raises(JestkitError, match=r"same N examples, got N=23 and N=10"):
        score_matrix(learner, reference.index(slice(0, 10)), "learnability")
    with pytest.raises(JestkitError, match=r"must be a jestkit.scoring.Embeddings, got tuple"):
        score_matrix(learner, (reference.image, reference.text), "learnability")


def test_bad_block_indices_and_modes(pair):
    with pytest.raises(JestkitError, match=r"rows must index \[0, 23\), got values in \[0, 23\]"):
        score_block(*pair, "learnability", [0, 23], [1])
    with pytest.raises(JestkitError, match=r"cols must be a 1-D integer index, got torch.float32"):
        score_block(*pair, "learnability", [0], torch.tensor([1.0]))
    with pytest.raises(JestkitError, match=r"mode must be one of diagonal, rowcol, got 'row'"):
        example_scores(*pair, "learnability", mode="row")
    with pytest.raises(JestkitError, match=r"block_elems must be an int >= 1, got 0"):
        BlockScorer(*pair, "learnability", block_elems=0)


def test_all_finite_is_exact_even_when_the_sum_overflows():
    big = torch.full((4, 3), 1e308, dtype=torch.float64)  # finite entries, infinite sum
    assert all_finite(big) == [True]
    assert all_finite(torch.full((2,), 3e38, dtype=torch.float32)) == [True]  # summed in float64
    bad = big.clone()
    bad[1, 1] = float("nan")
    neg = torch.zeros(3)
    neg[0] = float("-inf")
    assert all_finite(bad, neg, torch.ones(2)) == [False, False, True]
    # validate() accepts the finite-but-huge record and rejects the NaN one
    assert Embeddings(big, big, 1.0, 0.0).validate("x") is not None
    with pytest.raises(JestkitError, match=r"x.image has 1 non-finite values .*\[1, 1\] = nan"):
        Embeddings(bad, big, 1.0, 0.0).validate("x")


def test_reference_nan_is_reported_even_when_learner_is_fine(pair):
    learner, reference = pair
    bad = Embeddings(reference.image.clone(), reference.text, reference.scale, reference.bias)
    bad.image[0, 0] = float("inf")
    with pytest.raises(JestkitError, match=r"reference.image has 1 non-finite .*\[0, 0\] = inf"):
        BlockScorer(learner, bad, "learnability")
    with pytest.raises(JestkitError, match=r"reference.scale and reference.bias must be finite"):
        BlockScorer(
            learner, Embeddings(reference.image, reference.text, float("nan"), 0.0), "learnability"
        )
