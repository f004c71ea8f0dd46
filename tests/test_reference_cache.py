"""ReferenceCache: cached embeddings equal an online forward pass; stale caches are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jestkit.cli import main as cli
from jestkit.data import ReferenceCache, data_fingerprint, load_split, prepare_dataset
from jestkit.data.uids import int_to_uid
from jestkit.errors import JestkitError
from jestkit.models import create_model, model_fingerprint, save_pretrained
from jestkit.models.tokenizer import Tokenizer
from jestkit.scoring import Embeddings


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcache")
    ds = root / "ds"
    prepare_dataset(
        "digits",
        ds,
        pool_size=300,
        eval_size=32,
        zeroshot_size=0,
        curated_fraction=0.1,
        progress=False,
    )
    tok = Tokenizer.train(load_split(ds / "pool").captions, vocab_size=128, context_length=16)
    model = create_model(
        "mlp-tiny-28", image_size=8, in_channels=1, vocab_size=tok.vocab_size, context_length=16
    )
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
        model.logit_bias.fill_(-3.0)
    model.eval()
    cache = ReferenceCache.build(
        model, tok, [ds / "pool", ds / "curated"], root / "cache", batch_size=64, progress=False
    )
    return root, ds, model, tok, cache


@torch.no_grad()
def _online(model, tok, sb):
    return model.encode_image(sb.images), model.encode_text(tok(sb.captions))


def test_cached_embeddings_equal_an_online_forward_pass(setup):
    _, ds, model, tok, cache = setup
    for split in ("pool", "curated"):
        sb = load_split(ds / split)
        rng = np.random.default_rng(0)
        idx = rng.permutation(len(sb))[:100]  # a random "super-batch", in random order
        sub = sb.index(idx)
        emb = cache.lookup(sub.uids)
        assert isinstance(emb, Embeddings) and emb.image.dtype == torch.float32
        img, txt = _online(model, tok, sub)
        torch.testing.assert_close(emb.image, img, atol=2e-3, rtol=0)  # float16 storage
        torch.testing.assert_close(emb.text, txt, atol=2e-3, rtol=0)
        torch.testing.assert_close(emb.image, img.half().float(), atol=1e-3, rtol=0)
        assert emb.scale == pytest.approx(float(np.exp(2.5))) and emb.bias == pytest.approx(-3.0)
    n = len(load_split(ds / "pool")) + len(load_split(ds / "curated"))
    assert len(cache) == n and cache.embed_dim == model.embed_dim
    assert np.all(np.diff(cache.uids.astype(np.float64)) > 0)  # sorted, unique
    assert cache.image.dtype == np.float16 and isinstance(cache.image, np.memmap)
    assert cache.model_fingerprint == model_fingerprint(model)
    assert cache.forward_flops_per_example > 0


def test_lookup_matches_a_naive_dict(setup):
    _, _, _, _, cache = setup
    uids = int_to_uid(cache.uids)
    table = {u: (cache.image[i], cache.text[i]) for i, u in enumerate(uids)}
    pick = [
        uids[i] for i in np.random.default_rng(1).integers(0, len(uids), size=64)
    ]  # repeats allowed
    emb = cache.lookup(pick, device="cpu")
    for k, u in enumerate(pick):
        np.testing.assert_array_equal(emb.image[k].numpy(), table[u][0].astype(np.float32))
        np.testing.assert_array_equal(emb.text[k].numpy(), table[u][1].astype(np.float32))
    assert pick[0] in cache and "0000000000000000" not in cache


def test_missing_uid_is_named(setup):
    _, ds, _, _, cache = setup
    ev = load_split(ds / "eval")  # not cached
    with pytest.raises(JestkitError, match=ev.uids[0]):
        cache.lookup([int_to_uid(cache.uids[:1])[0], ev.uids[0]])


def test_stale_or_mismatched_cache_is_refused(setup):
    root, ds, model, _, _ = setup
    path = root / "cache"
    fp = model_fingerprint(model)
    ReferenceCache.open(path, model_fingerprint=fp, data_fingerprint=data_fingerprint(ds / "pool"))
    ReferenceCache.open(path, data_fingerprint=data_fingerprint([ds / "pool", ds / "curated"]))
    other = create_model(
        "mlp-tiny-28", image_size=8, in_channels=1, vocab_size=model.vocab_size, context_length=16
    )
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.logit_bias.add_(1.0)  # one changed weight: another model
    with pytest.raises(JestkitError, match="built for model"):
        ReferenceCache.open(path, model_fingerprint=model_fingerprint(other))
    with pytest.raises(JestkitError, match="built over data"):
        ReferenceCache.open(path, data_fingerprint=data_fingerprint(ds / "eval"))
    assert ReferenceCache.open(path).covers(ds / "pool") and not ReferenceCache.open(path).covers(
        ds / "eval"
    )
    with pytest.raises(JestkitError, match="already exists"):
        ReferenceCache.build(model, setup[3], [ds / "pool"], path, progress=False)
    with pytest.raises(JestkitError, match=r"meta\.json is missing"):
        ReferenceCache.open(root)


def test_cli_cache_ref_matches_build(setup, capsys):
    root, ds, model, tok, cache = setup
    save_pretrained(root / "ref", model, tok)
    args = ["cache-ref", "--model", str(root / "ref"), "--shards", str(ds / "pool"), str(ds / "curated"),
            "--out", str(root / "cli-cache"), "--device", "cpu", "--batch-size", "100"]  # fmt: skip
    assert cli(args) == 0
    assert "cached" in capsys.readouterr().out
    c2 = ReferenceCache.open(root / "cli-cache", model_fingerprint=cache.model_fingerprint)
    np.testing.assert_array_equal(c2.uids, cache.uids)
    np.testing.assert_allclose(
        c2.image.astype(np.float32), cache.image.astype(np.float32), atol=1e-3
    )
    assert c2.data_fingerprint == cache.data_fingerprint
    assert cli([*args[:-4], "--out", str(root / "x"), "--model", str(root / "nope")]) == 2


def test_write_roundtrip_and_validation(tmp_path):
    rng = np.random.default_rng(2)
    uids = [f"{int(x):016x}" for x in rng.integers(0, 2**62, size=50)]
    img, txt = rng.standard_normal((50, 8)), rng.standard_normal((50, 8))
    cache = ReferenceCache.write(
        tmp_path / "c", uids, img, txt, scale=10.0, bias=-10.0, model_fingerprint="m"
    )
    emb = cache.lookup(uids[::-1])
    np.testing.assert_allclose(emb.image.numpy(), img[::-1], atol=2e-3 * np.abs(img).max())
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["scale"] == 10.0
    with pytest.raises(JestkitError, match="appears twice"):
        ReferenceCache.write(
            tmp_path / "d",
            [*uids, uids[0]],
            np.vstack([img, img[:1]]),
            np.vstack([txt, txt[:1]]),
            1.0,
            0.0,
            "m",
        )
    with pytest.raises(JestkitError, match="non-finite"):
        ReferenceCache.write(tmp_path / "e", uids, img * np.nan, txt, 1.0, 0.0, "m")
    with pytest.raises(JestkitError, match="already exists"):
        ReferenceCache.write(tmp_path / "c", uids, img, txt, 1.0, 0.0, "m")
    (tmp_path / "c" / "text.npy").write_bytes(b"garbage")
    with pytest.raises(JestkitError, match="cannot read"):
        ReferenceCache.open(tmp_path / "c")
