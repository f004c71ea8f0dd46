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
