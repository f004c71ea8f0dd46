"""Paired seeds: for one seed, every method starts from the same weights and reads the same data.

The report compares methods by paired differences per seed; that is only a pairing if what a
method does not choose (its initial weights, the order it reads the training split in) is the
same across methods. Methods at one filtering ratio see identical super-batches; methods at other
ratios (and uniform, whose super-batch is its batch) cut the same stream into other sizes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from jestkit.config import apply_overrides, get_preset, validate
from jestkit.distributed import World
from jestkit.runstate import RunState
from jestkit.stages import prepare
from jestkit.train import train

METHODS = {
    "uniform": ["selection.method=uniform"],
    "jest-f0.8": ["selection.method=jest", "selection.filter_ratio=0.8"],
    "independent-f0.8": ["selection.method=independent", "selection.filter_ratio=0.8"],
    "hard-learner-f0.8": [
        "selection.method=jest",
        "selection.filter_ratio=0.8",
        "selection.criterion=hard_learner",
    ],
    "jest-f0.5": ["selection.method=jest", "selection.filter_ratio=0.5"],
}
STEPS = 6


def _start(method: str, seed: int, tmp_path) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
    """A run's initial weights and the uids of its first super-batches, as the loop gets them."""
    cfg = get_preset("debug")
    cfg = validate(apply_overrides(cfg, [*METHODS[method], f"train.seed={seed}"]))
    run = RunState.build(cfg, prepare(cfg, fit=train), tmp_path / f"{method}-{seed}", None, World())
    weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    uids = [np.asarray(b.uids) for b in itertools.islice(iter(run.loader), STEPS)]
    return weights, uids


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paired")
    return {(m, s): _start(m, s, tmp) for m in METHODS for s in (0, 1)}


def test_one_seed_gives_every_method_the_same_initial_weights(starts):
    for seed in (0, 1):
        ref, _ = starts["uniform", seed]
        for method in METHODS:
            weights, _ = starts[method, seed]
            assert weights.keys() == ref.keys()
            for k in ref:
                assert torch.equal(weights[k], ref[k]), (method, seed, k)
    # ... and another seed other weights (the pairing is by seed, not a constant).
    w0, w1 = starts["uniform", 0][0], starts["uniform", 1][0]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())


def test_one_filtering_ratio_gives_identical_super_batches(starts):
    for seed in (0, 1):
        _, ref = starts["jest-f0.8", seed]
        for method in ("independent-f0.8", "hard-learner-f0.8"):
            _, uids = starts[method, seed]
            assert len(uids) == len(ref) == STEPS
            for a, b in zip(uids, ref, strict=True):
                np.testing.assert_array_equal(a, b)


def test_every_method_reads_one_stream_per_seed(starts):
    """Uniform (N = b), f = 0.5 (N = 2b) and f = 0.8 (N = 5b) read prefixes of one sequence."""
    for seed in (0, 1):
        streams = {m: np.concatenate(starts[m, seed][1]) for m in METHODS}
        longest = max(streams.values(), key=len)
        assert len(np.unique(longest)) == len(longest)  # within the first epoch of the split
        for method, stream in streams.items():
            np.testing.assert_array_equal(stream, longest[: len(stream)], err_msg=method)
    assert not np.array_equal(
        np.concatenate(starts["uniform", 0][1]), np.concatenate(starts["uniform", 1][1])
    )
