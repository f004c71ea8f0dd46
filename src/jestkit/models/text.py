"""Text towers. Token id 0 is padding ([PAD]); captions are right-padded by the tokenizer.

- ``TextTransformer``: token + position embeddings, pre-LN transformer blocks with a key padding
  mask (padding never changes a caption's embedding), then masked-mean or [EOS] pooling.
- ``TextMlp``: the fast CPU tower. Token + position embeddings, padding zeroed, flattened over the
  sequence and fed to an MLP, so it sees word order (and which word sits next to which) at a
  fraction of a transformer's cost.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jestkit.models.mlp import ResidualMlp, mlp_tower_flops
from jestkit.models.vit import Block, init_weights, transformer_flops

PAD_ID = 0


def padding_keep(tokens: Tensor) -> Tensor:
    """``[B, L]`` bool, True for real tokens. Position 0 always counts (so no row is all padding)."""
    keep = tokens != PAD_ID
    keep[:, 0] = True
    return keep


def trim_padding(tokens: Tensor) -> Tensor:
    """Drop trailing columns that are padding in every row.

    Both towers give the same embeddings for the trimmed batch (they ignore padding), and the
    transformer runs on fewer tokens. Costs one host sync; use it once per batch, not per layer.
    """
    used = (tokens != PAD_ID).any(dim=0)
    n = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    return tokens[:, :n]


class TextTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        width: int,
        depth: int,
        heads: int,
        hidden: int,
        embed_dim: int,
        pooling: str = "mean",
    ):
        super().__init__()
        self.pooling = pooling
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, width))
        self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, embed_dim)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: Any) -> TextTransformer:
        """The tower a ``ModelConfig`` with ``text_kind="transformer"`` describes."""
        return cls(
            cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_depth, cfg.text_heads,
            cfg.text_hidden, cfg.embed_dim, cfg.text_pooling,
        )  # fmt: skip

    @staticmethod
    def flops(cfg: Any, length: int) -> int:
        """Forward FLOPs for one caption of ``length`` tokens (padding trimmed, so it costs less)."""
        d = cfg.text_width
        return transformer_flops(length, d, cfg.text_hidden, cfg.text_depth) + 2 * d * cfg.embed_dim

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        init_weights(self, generator)
        nn.init.normal_(self.pos_embed, std=0.01, generator=generator)

    def forward(self, tokens: Tensor) -> Tensor:
        keep = padding_keep(tokens)
        x = self.token_embedding(tokens) + self.pos_embed[:, : tokens.shape[1]]
        mask = keep[:, None, None, :]  # [B, 1, 1, L]: every query attends to the real tokens
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.pooling == "eos":
            # The last real token is [EOS] (right padding); argmax returns its index.
            last = (keep * torch.arange(1, keep.shape[1] + 1, device=keep.device)).argmax(dim=1)
            x = x[torch.arange(x.shape[0], device=x.device), last]
        else:
            w = keep.to(x.dtype).unsqueeze(-1)
            x = (x * w).sum(dim=1) / w.sum(dim=1)
        return self.head(x)


class TextMlp(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        width: int,
        depth: int,
        hidden: int,
        embed_dim: int,
    ):
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, width))
        self.stem = nn.Linear(context_length * width, width)
        self.blocks = nn.Sequential(*(ResidualMlp(width, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, embed_dim)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: Any) -> TextMlp:
        """The tower a ``ModelConfig`` with ``text_kind="mlp"`` describes."""
        return cls(
            cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_depth, cfg.text_hidden,
            cfg.embed_dim,
        )  # fmt: skip

    @staticmethod
    def flops(cfg: Any, length: int) -> int:
        """Forward FLOPs for one caption: shorter inputs are padded to ``context_length``."""
        return mlp_tower_flops(
            cfg.context_length * cfg.text_width, cfg.text_width, cfg.text_depth, cfg.text_hidden,
            cfg.embed_dim,
        )  # fmt: skip

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        init_weights(self, generator)
        nn.init.normal_(self.pos_embed, std=0.01, generator=generator)
        nn.init.trunc_normal_(
            self.stem.weight, std=self.stem.in_features**-0.5, generator=generator
        )

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.pos_embed[:, :length]
        x = x * padding_keep(tokens).to(x.dtype).unsqueeze(-1)
        if length < self.context_length:  # shorter batches: the missing positions are padding
            x = F.pad(x, (0, 0, 0, self.context_length - length))
        return self.head(self.norm(self.blocks(self.stem(x.flatten(1)))))
