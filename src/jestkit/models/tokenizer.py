"""A small BPE tokenizer trained on the captions (Hugging Face ``tokenizers``).

Normalisation: NFKC, lowercase, runs of whitespace collapsed. Pre-tokenisation: punctuation split
off, then SentencePiece-style word-start markers ("\u2581"), so decoding restores the spaces and
scripts without spaces (Japanese) need no special casing. Ids: ``[PAD]=0``, ``[UNK]=1``,
``[EOS]=2``. Every caption ends in ``[EOS]`` (kept when truncating) and is right-padded with
``[PAD]`` to ``context_length``, the layout the text towers expect.

Why BPE without a continuing-subword prefix rather than WordPiece: ``tokenizers``' WordPiece (and
"##"-prefixed BPE) training assigns ids in hash-map order and breaks merge ties by id, so the same
captions give a different vocabulary on every run (huggingface/tokenizers#1794). Plain BPE starts
from the sorted alphabet and is deterministic; a test checks it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import __version__ as tokenizers_version
from torch import Tensor

from jestkit.errors import JestkitError

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, EOS)  # ids 0, 1, 2


def _check_captions(captions: object, name: str = "captions") -> list[str]:
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise JestkitError(
            f"{name}: expected a list of strings, got {type(captions).__name__} {captions!r:.60}"
        )
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise JestkitError(f"{name}[{i}]: expected a string, got {type(c).__name__} {c!r:.60}")
    return list(captions)


def _untrained(vocab_size: int, min_frequency: int) -> tuple[HFTokenizer, trainers.BpeTrainer]:
    """The default BPE pipeline and its trainer, before training."""
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, int)
        or vocab_size < len(SPECIAL_TOKENS) + 1
    ):
        raise JestkitError(f"vocab_size={vocab_size!r} must be an int >= {len(SPECIAL_TOKENS) + 1}")
    tok = HFTokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace()]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    return tok, trainer


class Tokenizer:
    """Wraps a trained ``tokenizers.Tokenizer``; ``__call__`` gives ``[B, context_length]`` int64.

    ``Tokenizer.train`` builds the default BPE tokenizer; any ``tokenizers.Tokenizer`` whose
    special tokens are [PAD]=0, [UNK]=1, [EOS]=2 can be wrapped directly.
    """

    def __init__(self, tokenizer: HFTokenizer, context_length: int):
        if not isinstance(context_length, int) or context_length < 2:
            raise JestkitError(
                f"context_length={context_length!r} must be an int >= 2 (text + [EOS])"
            )
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise JestkitError(
                    f"tokenizer: special token {tok} must have id {i}, has {tokenizer.token_to_id(tok)}"
                )
        self.tokenizer = tokenizer
        self.context_length = context_length
        eos = SPECIAL_TOKENS.index(EOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS}", special_tokens=[(EOS, eos)]
        )
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(pad_id=0, pad_token=PAD, length=context_length)

    @classmethod
    def train(
        cls, captions: Iterable[str], vocab_size: int, context_length: int, min_frequency: int = 1
    ) -> Tokenizer:
        """Learn a BPE vocabulary of at most ~``vocab_size`` tokens from ``captions``.

        The trained vocabulary may be smaller (small corpora) or slightly larger (every character
        seen is kept); ``vocab_size`` on the result is the real size.
        """
        if isinstance(captions, str):
            raise JestkitError(
                f"captions: expected an iterable of strings, got the string {captions!r:.60}"
            )
        tok, trainer = _untrained(vocab_size, min_frequency)
        n = 0

        def count(it: Iterable[str]) -> Iterable[str]:
            nonlocal n
            for i, c in enumerate(it):
                if not isinstance(c, str):
                    raise JestkitError(
                        f"captions[{i}]: expected a string, got {type(c).__name__} {c!r:.60}"
                    )
                n += 1
                yield c

        tok.train_from_iterator(count(captions), trainer)
        if n == 0:
            raise JestkitError("captions: no captions to train the tokenizer on")
        return cls(tok, context_length)

    @staticmethod
    def recipe(vocab_size: int, context_length: int, min_frequency: int = 1) -> str:
        """Everything `train` depends on besides the captions (the pipeline, the trainer's
        settings, the `tokenizers` version): with the captions, a key for a trained tokenizer."""
        tok, trainer = _untrained(vocab_size, min_frequency)
        return json.dumps([tok.to_str(), repr(trainer), context_length, tokenizers_version])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return SPECIAL_TOKENS.index(EOS)

    def __call__(self, captions: Sequence[str]) -> Tensor:
        """Token ids ``[B, context_length]`` (int64, CPU), truncated with ``[EOS]`` kept, pad id 0."""
        captions = _check_captions(captions)
        if not captions:
            return torch.zeros(0, self.context_length, dtype=torch.int64)
        ids = [e.ids for e in self.tokenizer.encode_batch(captions)]
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of one row of ids (special tokens dropped)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def tokens(self, caption: str) -> list[str]:
        """The word pieces of one caption (with [EOS] and padding), for inspection."""
        return self.tokenizer.encode(caption).tokens

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def to_dict(self) -> dict:
        return {
            "context_length": self.context_length,
            "tokenizer": json.loads(self.tokenizer.to_str()),
        }

    @classmethod
    def from_json(cls, s: str) -> Tokenizer:
        try:
            d = json.loads(s)
        except (TypeError, json.JSONDecodeError) as e:
            raise JestkitError(f"tokenizer JSON: not valid JSON ({e}): {str(s)[:60]!r}") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        if not isinstance(d, dict) or "tokenizer" not in d or "context_length" not in d:
            raise JestkitError(
                f"tokenizer JSON: expected keys 'context_length' and 'tokenizer', got {str(d)[:80]!r}"
            )
        try:
            tok = HFTokenizer.from_str(json.dumps(d["tokenizer"]))
        except Exception as e:
            raise JestkitError(f"tokenizer JSON: cannot be loaded by `tokenizers` ({e})") from None
        return cls(tok, d["context_length"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
