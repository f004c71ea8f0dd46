"""The BPE tokenizer: special ids, padding/truncation, normalisation, scripts, JSON round trip."""

import itertools
import json

import pytest
import torch

from jestkit.errors import JestkitError
from jestkit.models import Tokenizer

ITEMS = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
PLACES = ["top left", "top right", "bottom left", "bottom right"]
CAPTIONS = [
    f"a {tone} {item} in the {place}"
    for tone, item, place in itertools.product(["dark", "light"], ITEMS, PLACES)
] + ["a dark sneaker in the top left and a light bag at the bottom right"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CAPTIONS, vocab_size=200, context_length=12)


def test_shape_dtype_special_ids(tok):
    ids = tok(CAPTIONS[:5])
    assert ids.shape == (5, 12) and ids.dtype == torch.int64
    assert tok.tokenizer.token_to_id("[PAD]") == 0 == tok.pad_id
    assert tok.tokenizer.token_to_id("[UNK]") == 1
    assert tok.tokenizer.token_to_id("[EOS]") == 2 == tok.eos_id
    assert 3 < tok.vocab_size <= 200
    assert int(ids.max()) < tok.vocab_size and int(ids.min()) >= 0
    assert tok(["a"]).shape == (1, 12) and tok([]).shape == (0, 12)


def test_eos_then_padding_and_truncation(tok):
    ids = tok(CAPTIONS)
    for row, caption in zip(ids.tolist(), CAPTIONS, strict=True):
        n = row.index(2)  # exactly one [EOS], after the text, then only padding
        assert row.count(2) == 1 and n >= 1
        assert all(t == 0 for t in row[n + 1 :]) and 0 not in row[:n]
        pieces = [i for i in tok.tokenizer.encode(caption, add_special_tokens=False).ids if i != 0]
        assert row[:n] == pieces[: tok.context_length - 1]  # truncated captions keep [EOS] last
    long = tok([CAPTIONS[-1]])[0].tolist()
    assert long[-1] == 2 and 0 not in long


def test_lowercase_normalisation_and_decode(tok):
    assert torch.equal(
        tok(["A DARK Sneaker In The TOP LEFT"]), tok(["a dark sneaker in the top left"])
    )
    assert tok.decode(tok(["A  Dark\tSneaker "])[0]) == "a dark sneaker"
    assert tok.decode(tok(["A Dark T-Shirt"])[0]) == "a dark t - shirt"  # punctuation split off
    assert tok.decode([2, 0, 0]) == ""


def test_unknown_characters_map_to_unk(tok):
    ids = tok(["a ☃ bag"])[0].tolist()
    assert 1 in ids


def test_non_latin_scripts():
    greek = [
        "ένα σκούρο παπούτσι πάνω αριστερά",
        "μια ανοιχτή τσάντα κάτω δεξιά",
        "ΈΝΑ ΣΚΟΥΡΟ ΦΟΡΕΜΑ",
    ]
    japanese = ["左上に暗いスニーカー", "右下に明るいバッグ", "左下に暗いドレス"]
    tok = Tokenizer.train((greek + japanese) * 3, vocab_size=300, context_length=16)
    ids = tok(greek + japanese)
    assert (
        1 not in ids.tolist()[0] and 1 not in ids.tolist()[3]
    )  # every seen character is in the vocab
    assert tok.decode(ids[0]) == greek[0]
    assert tok.decode(ids[3]) == japanese[0]  # no spaces inserted into scripts without them
    assert torch.equal(tok(["ΈΝΑ ΣΚΟΎΡΟ"])[:, :3], tok(["ένα σκούρο"])[:, :3])  # Greek lowercasing
    # Unseen combinations of seen characters are still encoded without [UNK].
    assert 1 not in tok(["左下に明るいスニーカー"]).tolist()[0]


def test_json_round_trip(tok):
    s = tok.to_json()
    again = Tokenizer.from_json(s)
    assert again == tok and again.vocab_size == tok.vocab_size and again.context_length == 12
    assert torch.equal(again(CAPTIONS), tok(CAPTIONS))
    assert json.loads(s)["context_length"] == 12


def test_training_is_deterministic():
    # Many vocab-count ties: WordPiece training would differ between runs (tokenizers#1794).
    words = ["".join(w) for w in itertools.product("abcd", repeat=3)]
    corpus = [" ".join(words[i : i + 5]) for i in range(0, len(words), 3)] + CAPTIONS
    runs = {Tokenizer.train(corpus, vocab_size=150, context_length=8).to_json() for _ in range(8)}
    assert len(runs) == 1
    a = Tokenizer.train(CAPTIONS, vocab_size=150, context_length=8)
    assert Tokenizer.train(iter(CAPTIONS), vocab_size=150, context_length=8) == a


def test_bad_input(tok):
    with pytest.raises(
        JestkitError, match="captions: expected a list of strings, got str 'a dark bag'"
    ):
        tok("a dark bag")
    with pytest.raises(JestkitError, match=r"captions\[1\]: expected a string, got int 3"):
        tok(["a bag", 3])
    with pytest.raises(JestkitError, match="vocab_size=2"):
        Tokenizer.train(CAPTIONS, vocab_size=2, context_length=8)
    with pytest.raises(JestkitError, match="context_length=1"):
        Tokenizer.train(CAPTIONS, vocab_size=100, context_length=1)
    with pytest.raises(JestkitError, match="no captions"):
        Tokenizer.train([], vocab_size=100, context_length=8)
    with pytest.raises(JestkitError, match=r"captions\[1\]: expected a string, got NoneType"):
        Tokenizer.train(["a", None], vocab_size=100, context_length=8)
    with pytest.raises(JestkitError, match="not valid JSON"):
        Tokenizer.from_json("{nope")
    with pytest.raises(JestkitError, match="context_length"):
        Tokenizer.from_json('{"tokenizer": {}}')


def _caption_split(d, captions):
    import numpy as np

    from jestkit.data.shards import SplitWriter
    from jestkit.data.transforms import encode_png

    w = SplitWriter(d, (1, 4, 4), shard_size=16)
    for i, c in enumerate(captions):
        w.write(encode_png(np.full((1, 4, 4), i % 256, np.uint8)), c, {"label": i % 10})
    w.close()
    return d


def test_split_tokenizer_and_tokens_are_cached_beside_the_split_and_equal_fresh(
    tmp_path, monkeypatch
):
    """Training a run's tokenizer and tokenising the whole split are done once per split: the
    cached tokenizer and tokens equal fresh ones, other settings or data miss the cache, and a
    split that cannot be written computes them every time."""
    from jestkit import runstate
    from jestkit.data import shards

    d = _caption_split(tmp_path / "s", CAPTIONS)
    fresh = Tokenizer.train(CAPTIONS, vocab_size=150, context_length=12)
    first = runstate.split_tokenizer(d, 150, 12)
    assert first == fresh and len(list(d.glob(".tokenizer-*"))) == 1
    tokens = runstate.CaptionTokens(d, first)
    assert torch.equal(tokens.tokens, fresh(CAPTIONS)) and len(list(d.glob(".tokens-*"))) == 1

    def no_work(*a, **k):
        raise AssertionError("trained or tokenised although it is cached")

    with monkeypatch.context() as m:
        m.setattr(Tokenizer, "train", no_work)
        m.setattr(Tokenizer, "__call__", no_work)
        cached = runstate.split_tokenizer(d, 150, 12)
        assert cached == fresh
        again = runstate.CaptionTokens(d, cached)
        assert torch.equal(again.tokens, tokens.tokens) and again.tokens.dtype == torch.int64
        uids = shards.build_index(d, progress=False).uids()[::7]
        assert torch.equal(again(uids), tokens(uids))

    # Other settings are other entries; a different tokenizer does not reuse the tokens.
    assert Tokenizer.recipe(150, 12) != Tokenizer.recipe(151, 12) != Tokenizer.recipe(151, 13)
    small = runstate.split_tokenizer(d, 60, 12)
    assert small == Tokenizer.train(CAPTIONS, vocab_size=60, context_length=12) != fresh
    assert torch.equal(runstate.CaptionTokens(d, small).tokens, small(CAPTIONS))
    assert len(list(d.glob(".tokenizer-*"))) == len(list(d.glob(".tokens-*"))) == 2

    # New captions under the same file names: a new key, and the old entries are dropped.
    other = [c.replace("dark", "deep") for c in CAPTIONS]
    e = _caption_split(tmp_path / "t", other)
    for f in e.iterdir():
        f.replace(d / f.name)
    retrained = runstate.split_tokenizer(d, 150, 12)
    assert retrained == Tokenizer.train(other, vocab_size=150, context_length=12) != fresh
    assert torch.equal(runstate.CaptionTokens(d, retrained).tokens, retrained(other))
    assert len(list(d.glob(".tokenizer-*"))) == len(list(d.glob(".tokens-*"))) == 1

    # A torn tokens file is recomputed; an unwritable split computes every time.
    torn = next(d.glob(".tokens-*"))
    torn.write_bytes(torn.read_bytes()[:100])
    assert torch.equal(runstate.CaptionTokens(d, retrained).tokens, retrained(other))

    def read_only(path, data):
        raise OSError(30, "Read-only file system", str(path))

    ro = _caption_split(tmp_path / "ro", CAPTIONS)
    shards.build_index(ro, progress=False)  # its index is cached while writable
    monkeypatch.setattr(shards, "atomic_write", read_only)
    for _ in range(2):
        assert runstate.split_tokenizer(ro, 150, 12) == fresh
        assert torch.equal(runstate.CaptionTokens(ro, fresh).tokens, fresh(CAPTIONS))
    assert not [p for p in ro.iterdir() if p.name.startswith((".tokenizer", ".tokens"))]
