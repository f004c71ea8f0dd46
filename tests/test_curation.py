"""Offline curation: `jestkit score` against a direct loss computation, `jestkit filter` against a
brute-force sort, both uid formats, and the CLI's errors."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jestkit import curation
from jestkit.data import int_to_uid, load_split, prepare_dataset, uid_to_int
from jestkit.errors import JestkitError
from jestkit.losses import sigmoid_pair_losses
from jestkit.models import Tokenizer, create_model, load_pretrained, save_pretrained


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny MLPs: a second intra-op thread only adds sync overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A digits dataset (200-example pool in 4 shards) and two small exported models."""
    root = tmp_path_factory.mktemp("curation")
    prepare_dataset(
        "digits", root / "data", pool_size=200, eval_size=0, zeroshot_size=0, shard_size=64,
        progress=False,
    )  # fmt: skip
    pool = load_split(root / "data" / "pool")
    curated = load_split(root / "data" / "curated")
    for name, seed, captions in (("ref", 1, curated.captions), ("learner", 2, pool.captions)):
        model = create_model("mlp-tiny-28", image_size=8, init_seed=seed)
        # Each model has its own tokenizer (different vocabularies): scoring must use each's own.
        tok = Tokenizer.train(captions, vocab_size=96 + 32 * seed, context_length=32)
        save_pretrained(root / name, model, tok)
    return root, pool


# The lines jestkit.cli.COMMANDS needs (added here when the dispatcher lacks them).
CLI_ENTRIES = {
    "score": ("jestkit.curation", "per-example reference/learnability scores as a parquet sidecar"),
    "filter": ("jestkit.curation", "keep the top fraction of a scores file: sorted uid array"),
}


def cli(argv: list[str]) -> int:
    """`jestkit score|filter ...` through the CLI dispatcher."""
    from jestkit import cli as jcli

    commands = {**CLI_ENTRIES, **jcli.COMMANDS}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jcli, "COMMANDS", commands)
        return jcli.main(argv)


@torch.no_grad()
def direct_diagonal(model_dir, batch) -> np.ndarray:
    """The diagonal of the full N×N pair-loss matrix, computed in one go."""
    model, tok = load_pretrained(model_dir)
    img = model.encode_image(batch.images)
    txt = model.encode_text(tok(batch.captions))
    losses = sigmoid_pair_losses(img, txt, model.logit_scale.exp(), model.logit_bias)
    return losses.diagonal().numpy()


def test_scores_equal_direct_computation(setup, tmp_path):
    root, pool = setup
    out = tmp_path / "scores.parquet"
    argv = ["score", "--model", str(root / "ref"), "--learner", str(root / "learner")]
    argv += ["--shards", str(root / "data" / "pool"), "--out", str(out)]
    assert cli([*argv, "--batch-size", "48", "--quiet"]) == 0
    table = pq.read_table(out)
    assert table.column_names == [
        "uid", "reference_loss", "easy_reference", "learner_loss", "learnability"
    ]  # fmt: skip
    uids = table.column("uid").to_pylist()
    assert uids == sorted(pool.uids)  # one row per example, sorted by uid

    order = np.argsort(uid_to_int(pool.uids), kind="stable")
    ref = direct_diagonal(root / "ref", pool)[order]
    lrn = direct_diagonal(root / "learner", pool)[order]
    col = {c: table.column(c).to_numpy() for c in table.column_names[1:]}
    np.testing.assert_allclose(col["reference_loss"], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(col["learner_loss"], lrn, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(col["easy_reference"], -col["reference_loss"])
    np.testing.assert_allclose(col["learnability"], col["learner_loss"] - col["reference_loss"])
    assert b"jestkit" in table.schema.metadata

    # Without a learner: the reference columns only, identical values; re-run refused, then forced.
    assert cli([*argv, "--quiet"]) == 2
    argv_ref = ["score", "--model", str(root / "ref"), "--shards", str(root / "data" / "pool")]
    assert cli([*argv_ref, "--out", str(out), "--overwrite", "--quiet"]) == 0
    only_ref = pq.read_table(out)
    assert only_ref.column_names == ["uid", "reference_loss", "easy_reference"]
    np.testing.assert_allclose(  # other batch size: equal up to rounding
        only_ref.column("reference_loss").to_numpy(), col["reference_loss"], rtol=1e-5
    )


def test_score_splits_deduplicates_and_restores_mode(setup):
    root, pool = setup
    model, tok = load_pretrained(root / "ref")
    model.train()
    pool_dir, curated_dir = root / "data" / "pool", root / "data" / "curated"
    table = curation.score_splits(model, tok, [pool_dir, curated_dir, pool_dir], progress=False)
    curated = load_split(curated_dir)
    assert table.column("uid").to_pylist() == sorted(set(pool.uids) | set(curated.uids))
    assert model.training


def brute_force_keep(uids: list[str], scores: list[float], p: float) -> list[str]:
    k = math.ceil(round(p * len(uids), 9))
    ranked = sorted(zip(uids, scores, strict=True), key=lambda us: (-us[1], us[0]))
    return sorted(u for u, _ in ranked[:k])


@pytest.mark.parametrize("score", ["easy_reference", "learnability"])
def test_filter_keeps_top_fraction(setup, tmp_path, score):
    root, _ = setup
    scores = tmp_path / "scores.parquet"
    argv = ["score", "--model", str(root / "ref"), "--learner", str(root / "learner")]
    assert (
        cli([*argv, "--shards", str(root / "data" / "pool"), "--out", str(scores), "--quiet"]) == 0
    )
    table = pq.read_table(scores)
    uids, values = table.column("uid").to_pylist(), table.column(score).to_pylist()
    for p in (0.01, 0.3, 0.5, 0.999, 1.0):
        want = brute_force_keep(uids, values, p)
        assert len(want) == math.ceil(round(p * 200, 9))
        for fmt in ("uint64", "hex"):  # datacomp: 32-hex source uids only (test_your_data)
            out = tmp_path / f"keep-{p}-{fmt}.npy"
            argv = ["filter", str(scores), "--keep-fraction", str(p), "--out", str(out)]
            assert cli([*argv, "--score", score, "--format", fmt, "--quiet"]) == 0
            raw = np.load(out)
            assert raw.dtype == (np.uint64 if fmt == "uint64" else np.dtype("<U16"))
            assert (np.sort(raw) == raw).all()  # sorted on disk
            kept = curation.load_uids(out)
            assert int_to_uid(kept) == want


def test_filter_ties_and_counts():
    uids = int_to_uid(np.arange(10, dtype=np.uint64)[::-1] * 7919)
    table = pa.table({"uid": uids, "easy_reference": [1.0] * 5 + [2.0] * 5})
    kept, summary = curation.filter_scores(table, 0.3)
    assert summary == {
        "score": "easy_reference", "kept": 3, "total": 10, "keep_fraction": 0.3, "threshold": 2.0
    }  # fmt: skip
    # Ties (all five 2.0s) are broken by uid: the three smallest of them.
    assert int_to_uid(kept) == sorted(uids[5:])[:3]
    assert curation.keep_count(10, 0.3) == 3 and curation.keep_count(10, 0.31) == 4
    assert curation.keep_count(200, 1e-9) == 1 and curation.keep_count(7, 1.0) == 7


def test_cli_errors(setup, tmp_path, capsys):
    root, _ = setup
    pool = str(root / "data" / "pool")
    scores = tmp_path / "scores.parquet"
    missing = tmp_path / "no-such-model"

    def error(argv: list[str]) -> str:
        capsys.readouterr()
        assert cli(argv) == 2
        return capsys.readouterr().err

    err = error(["score", "--model", str(missing), "--shards", pool, "--out", str(scores)])
    assert f"--model {missing}: model folder not found" in err
    err = error(
        ["score", "--model", str(root / "ref"), "--shards", str(missing), "--out", str(scores)]
    )
    assert f"--shards {missing}: split folder not found" in err
    big = create_model("mlp-tiny-28", init_seed=0)  # 28x28 images, the shards hold 8x8
    save_pretrained(tmp_path / "big", big, load_pretrained(root / "ref")[1])
    err = error(["score", "--model", str(tmp_path / "big"), "--shards", pool, "--out", str(scores)])
    assert "images are 1x8x8, the reference model takes 1x28x28" in err

    assert cli(["score", "--model", str(root / "ref"), "--shards", pool, "--out", str(scores), "--quiet"]) == 0  # fmt: skip
    keep = str(tmp_path / "keep.npy")
    for bad in ("0", "1.5", "-0.2", "nan"):
        err = error(["filter", str(scores), "--keep-fraction", bad, "--out", keep])
        assert "--keep-fraction" in err and bad in err
    err = error(["filter", str(scores), "--keep-fraction", "0.5", "--score", "learnability", "--out", keep])  # fmt: skip
    assert "no column 'learnability'" in err and "--learner" in err and str(scores) in err
    err = error(["filter", str(scores), "--keep-fraction", "0.5", "--score", "loss", "--out", keep])
    assert "--score" in err and "'loss'" in err
    err = error(["filter", str(missing), "--keep-fraction", "0.5", "--out", keep])
    assert f"{missing}: scores file not found" in err
    assert cli(["filter", str(scores), "--keep-fraction", "0.5", "--out", keep, "--quiet"]) == 0
    err = error(["filter", str(scores), "--keep-fraction", "0.5", "--out", keep])
    assert f"--out {keep}: already exists" in err


def test_load_uids_rejects_other_arrays(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.arange(4, dtype=np.int32))
    with pytest.raises(JestkitError, match="dtype int32"):
        curation.load_uids(path)
    np.save(path, np.array(["abc"]))
    with pytest.raises(JestkitError, match="'abc' is not a uid"):
        curation.load_uids(path)
