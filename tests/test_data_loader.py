"""SuperBatchLoader: exact sizes, deterministic order, backends and workers agree, ranks are
disjoint, resume equals an uninterrupted run, streaming memory is bounded, bad records are counted."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from jestkit.data import SuperBatchLoader, epoch_order, iter_split, load_split, read_captions
from jestkit.data.shards import BadRecordWarning, SplitWriter
from jestkit.data.transforms import encode_png
from jestkit.errors import JestkitError
from jestkit.rng import np_generator


def _write_split(d: Path, n: int, shape=(1, 8, 8), shard_size=50, seed=0, noise=True) -> Path:
    rng = np.random.default_rng(seed)
    w = SplitWriter(d, shape, shard_size=shard_size)
    for i in range(n):
        img = (
            rng.integers(0, 256, size=shape, dtype=np.uint8)
            if noise
            else np.full(shape, i % 256, np.uint8)
        )
        w.write(
            encode_png(img),
            f"caption number {i}",
            {"label": i % 10, "noise": "" if i % 3 else "junk_caption"},
        )
    w.close()
    return d


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return _write_split(tmp_path_factory.mktemp("loader") / "pool", 1000)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(a, b) -> bool:
    return (
        a.uids == b.uids
        and a.captions == b.captions
        and torch.equal(a.images, b.images)
        and a.meta.keys() == b.meta.keys()
        and all(np.array_equal(a.meta[k], b.meta[k]) for k in a.meta)
    )


def _naive_order(shard_of, n_shards, seed, epoch, window):
    n = len(shard_of)
    perm = np_generator(seed, "shard-order", epoch).permutation(n_shards)
    stream = [i for s in perm for i in range(n) if shard_of[i] == s]
    keys = np_generator(seed, "window", epoch).random(n)
    out = []
    for start in range(0, n, window):
        positions = sorted(range(start, min(start + window, n)), key=lambda p: keys[p])
        out += [stream[p] for p in positions]
    return np.array(out)


@pytest.mark.parametrize("window", [1, 7, 64, 10_000])
def test_epoch_order_equals_naive_loops(window):
    shard_of = np.repeat(np.arange(9), np.random.default_rng(0).integers(1, 30, size=9)).astype(
        np.int32
    )
    for epoch in (0, 3):
        fast = epoch_order(shard_of, 9, seed=5, epoch=epoch, window=window)
        np.testing.assert_array_equal(fast, _naive_order(shard_of, 9, 5, epoch, window))
        assert sorted(fast.tolist()) == list(range(len(shard_of)))
    assert not np.array_equal(
        epoch_order(shard_of, 9, 5, 0, 64), epoch_order(shard_of, 9, 5, 1, 64)
    )
    np.testing.assert_array_equal(
        epoch_order(shard_of, 9, 5, 0, 64, shuffle=False), np.arange(len(shard_of))
    )


def test_super_batches_have_exactly_n_and_an_epoch_has_no_repeats(split):
    loader = SuperBatchLoader(split, batch_size=64, seed=1, progress=False)
    assert loader.batches_per_epoch == 1000 // 64 and loader.num_examples == 1000
    epoch = _take(iter(loader), loader.batches_per_epoch)
    uids = [u for sb in epoch for u in sb.uids]
    assert all(
        len(sb) == 64 and sb.images.shape == (64, 1, 8, 8) and sb.images.dtype == torch.uint8
        for sb in epoch
    )
    assert len(set(uids)) == len(uids) == 64 * 15
    sb = epoch[0]
    for i in (0, 17, 63):  # captions, images and metadata belong together
        k = int(sb.captions[i].split()[-1])
        assert sb.meta["label"][i] == k % 10
    assert loader.epoch == 1
    other_seed = SuperBatchLoader(split, batch_size=64, seed=2, progress=False)
    assert next(iter(other_seed)).uids != epoch[0].uids


def test_streaming_equals_in_memory_and_workers_equal_sequential(split):
    kw = {"batch_size": 96, "seed": 7, "window": 100, "progress": False}
    mem = iter(SuperBatchLoader(split, in_memory=True, **kw))
    cached = iter(SuperBatchLoader(split, in_memory=True, **kw))  # maps what `mem` decoded
    assert len(list(split.glob(".decoded-*"))) == 1
    stream = iter(SuperBatchLoader(split, in_memory=False, **kw))
    workers = iter(SuperBatchLoader(split, in_memory=False, num_workers=2, **kw))
    for _ in range(23):  # more than two epochs of 10
        a, b, c, d = next(mem), next(stream), next(workers), next(cached)
        assert _same(a, b) and _same(a, c) and _same(a, d)


def test_ranks_never_share_an_example_within_an_epoch(split):
    world, n = 3, 50
    per_rank = []
    for rank in range(world):
        loader = SuperBatchLoader(
            split, batch_size=n, seed=3, rank=rank, world_size=world, progress=False
        )
        assert loader.batches_per_epoch == 1000 // (world * n)
        per_rank.append(
            [u for sb in _take(iter(loader), loader.batches_per_epoch) for u in sb.uids]
        )
    sets = [set(u) for u in per_rank]
    assert all(len(s) == len(u) for s, u in zip(sets, per_rank, strict=True))
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    single = SuperBatchLoader(split, batch_size=n * world, seed=3, progress=False)
    union = {u for sb in _take(iter(single), single.batches_per_epoch) for u in sb.uids}
    assert sets[0] | sets[1] | sets[2] == union  # the same examples as one rank with world * N


@pytest.mark.parametrize(("in_memory", "workers"), [(True, 0), (False, 0), (False, 2)])
def test_resume_equals_uninterrupted(split, in_memory, workers):
    kw = {
        "batch_size": 64,
        "seed": 11,
        "in_memory": in_memory,
        "num_workers": workers,
        "progress": False,
    }
    first = SuperBatchLoader(split, **kw)
    it = iter(first)
    _take(it, 13)  # into the second epoch
    state = json.loads(json.dumps(first.state_dict()))  # a small, JSON-able cursor
    assert state["epoch"] == 0 and state["examples"] == 13 * 64
    _take(it, 2)
    state2 = first.state_dict()
    assert state2["epoch"] == 1 and state2["examples"] == 0
    expected = _take(it, 6)
    resumed = SuperBatchLoader(split, **{**kw, "num_workers": 2 - workers})  # other worker count
    resumed.load_state_dict(state2)
    got = _take(iter(resumed), 6)
    assert all(_same(a, b) for a, b in zip(expected, got, strict=True))
    with pytest.raises(JestkitError, match="seed"):
        SuperBatchLoader(split, **{**kw, "seed": 12}).load_state_dict(state)
    with pytest.raises(JestkitError, match="boundary"):
        resumed.load_state_dict({**state, "examples": 5})


def test_streaming_memory_is_bounded(tmp_path):
    shape = (1, 64, 64)
    d = _write_split(
        tmp_path / "big", 4000, shape=shape, shard_size=500
    )  # random pixels: no compression
    decoded = 4000 * int(np.prod(shape))  # 16 MB of pixels
    loader = SuperBatchLoader(
        d, batch_size=32, seed=0, max_memory_bytes=decoded // 8, progress=False
    )
    assert not loader.in_memory  # chosen automatically: the split does not fit the allowance
    it = iter(loader)
    next(it)
    tracemalloc.start()
    seen = 0
    try:
        for _ in range(loader.batches_per_epoch):
            seen += len(next(it))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen * int(np.prod(shape)) > 0.95 * decoded
    assert peak < decoded / 8, (
        f"peak {peak / 2**20:.1f} MiB while streaming {decoded / 2**20:.0f} MiB"
    )


def test_superbatch_index_and_whole_split_readers(split):
    sb = next(iter(SuperBatchLoader(split, batch_size=40, seed=0, progress=False)))
    idx = torch.tensor([5, 0, 39, 5])
    sub = sb.index(idx)
    assert sub.uids == [sb.uids[i] for i in (5, 0, 39, 5)]
    assert torch.equal(sub.images, sb.images[idx]) and sub.captions[2] == sb.captions[39]
    assert sub.meta["label"].tolist() == sb.meta["label"][[5, 0, 39, 5]].tolist()
    assert sb.index(np.array([1, 2])).uids == sb.uids[1:3]
    whole = load_split(split)
    streamed = list(iter_split(split, batch_size=300))
    assert [len(b) for b in streamed] == [300, 300, 300, 100]
    assert whole.uids == [u for b in streamed for u in b.uids]
    assert torch.equal(whole.images, torch.cat([b.images for b in streamed]))
    ordered = SuperBatchLoader(split, batch_size=100, shuffle=False, progress=False)
    assert next(iter(ordered)).uids == whole.uids[:100]
    assert ordered.captions() == whole.captions == read_captions(split)
    assert (
        SuperBatchLoader(split, batch_size=100, in_memory=False, progress=False).captions()
        == whole.captions
    )


def test_bad_records_are_skipped_by_the_loader(tmp_path):
    d = _write_split(tmp_path / "s", 200, shard_size=100, noise=False)
    shard = d / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[512 + 45] ^= 0xFF  # corrupt the first PNG of the second shard
    shard.write_bytes(bytes(data))
    with pytest.warns(BadRecordWarning, match="corrupt image: 1"):
        loader = SuperBatchLoader(d, batch_size=33, seed=0, in_memory=False, progress=False)
    assert loader.skipped == {"corrupt image": 1} and loader.num_examples == 199
    uids = {u for sb in _take(iter(loader), loader.batches_per_epoch) for u in sb.uids}
    assert len(uids) == 33 * 6
    with pytest.raises(
        JestkitError, match=r"shard-000001\.tar: record [0-9a-f]{16}: corrupt image"
    ):
        SuperBatchLoader(d, batch_size=33, strict=True, progress=False)


def test_bad_arguments(split, tmp_path):
    with pytest.raises(JestkitError, match="batch_size=600"):
        SuperBatchLoader(split, batch_size=600, world_size=2, progress=False)
    with pytest.raises(JestkitError, match="rank"):
        SuperBatchLoader(split, batch_size=8, rank=2, world_size=2, progress=False)
    with pytest.raises(JestkitError, match="batch_size"):
        SuperBatchLoader(split, batch_size=0, progress=False)
    with pytest.raises(JestkitError, match="not found"):
        SuperBatchLoader(tmp_path / "nope", batch_size=8, progress=False)


def test_global_super_batch_is_the_same_for_any_world_size_and_resumes_across_them(split):
    """Step j on W ranks is the single-process super-batch j cut into W slices, in rank order."""
    n_global = 120
    single = iter(SuperBatchLoader(split, batch_size=n_global, seed=5, progress=False))
    expected = [sb.uids for sb in _take(single, 11)]  # into the second epoch (8 per epoch)
    for world in (2, 3, 4):
        ranks = [
            SuperBatchLoader(
                split,
                batch_size=n_global // world,
                seed=5,
                rank=r,
                world_size=world,
                progress=False,
            )
            for r in range(world)
        ]
        its = [iter(loader) for loader in ranks]
        got = [[u for it in its for u in next(it).uids] for _ in range(11)]
        assert got == expected
    # A cursor saved on 2 ranks resumes on 3 (and on 1) at the same global step.
    two = SuperBatchLoader(split, batch_size=60, seed=5, rank=1, world_size=2, progress=False)
    _take(iter(two), 9)
    state = json.loads(json.dumps(two.state_dict()))
    for world in (1, 3):
        parts = []
        for r in range(world):
            loader = SuperBatchLoader(
                split,
                batch_size=n_global // world,
                seed=5,
                rank=r,
                world_size=world,
                progress=False,
            )
            loader.load_state_dict(state)
            parts += list(next(iter(loader)).uids)
        assert parts == list(expected[9])
    other = SuperBatchLoader(split, batch_size=50, seed=5, rank=0, world_size=2, progress=False)
    with pytest.raises(JestkitError, match="global super-batch of 120"):
        other.load_state_dict(state)


def test_data_benchmark_runs_every_row(tmp_path, capsys):
    """`jestkit bench data` end to end on a tiny digits pool: every row measured and reported."""
    from jestkit.benchmarks import data as bench

    out = tmp_path / "r.json"
    argv = ["--quick", "--dataset", "digits", "--pool-size", "600", "--batch-size", "64"]
    argv += ["--batches", "2", "--cache-size", "2000", "--json", str(out)]
    assert bench.main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results["loader"]) == {"streaming, 0 workers", "streaming, 2 workers", "in-memory"}
    assert all(v["examples_per_s"] > 0 for v in results["loader"].values())
    assert results["run_setup_s"]["first"] > 0 and results["run_setup_s"]["later"] > 0
    assert results["cache_lookup"]["entries"] == 2000
    text = capsys.readouterr().out
    assert "first run (decode, train)" in text and "later runs (derived files)" in text
