"""Embedding sources: who produces the embeddings that selection scores, and at what cost.

Selection scores a super-batch with two sets of embeddings: the learner's and the reference's.
Every producer is an :class:`EmbeddingSource` with one method, ``embeddings(batch, step) ->
(Embeddings, FLOPs)``, charged to the ledger under its ``ledger_key``:

- learner side (``learner_score``): :class:`LearnerSource`, the live learner at the scoring patch
  size (the default; ``selection.score_patch_size`` / ``flexi-jest`` score at low resolution);
  :class:`SnapshotSource` (``selection.score_refresh=k``), a learner copy refreshed every k steps
  whose embeddings are cached by uid meanwhile, so an example drawn again before the next refresh
  is not re-embedded (it saves the share of draws that repeat within a window, about
  ``max(0, 1 - P / (N k))`` for a pool of P and super-batches of N; nothing on a pool that never
  repeats); :class:`ProxySource` (``selection.scorer=proxy``), a small dual encoder trained online,
  one AdamW step per training step on the learner's selected batch, standing in for the learner
  (Evans et al. 2023, "Bad students make great teachers"): it costs its forward over N plus its
  training over b whatever the learner's size.
- reference side (``reference``): :class:`CachedReference` (a lookup in the reference cache, no
  FLOPs: the cache build was charged once) and :class:`OnlineReference` (the reference model runs
  every step, ``selection.reference_cache=online``).

A source's state (snapshot weights and cache, proxy weights and optimizer) travels in the
checkpoint, so a resumed run selects what an uninterrupted run selects. ``observe(chosen, step)``
is called with the selected batch (the proxy trains on it) and returns the FLOPs it spent.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from jestkit import rng
from jestkit.data import ReferenceCache, SuperBatch, uid_to_int
from jestkit.devices import model_device
from jestkit.errors import JestkitError, check
from jestkit.flops import forward_flops
from jestkit.losses import siglip_loss
from jestkit.models import DualEncoder, Tokenizer, create_model
from jestkit.models.embed import Autocast, embed
from jestkit.scoring import Embeddings

Tokenize = Callable[[SuperBatch], Tensor]


class EmbeddingSource(Protocol):
    ledger_key: str  # the FlopLedger kind its FLOPs are charged to

    def embeddings(self, batch: SuperBatch, step: int) -> tuple[Embeddings, int]: ...

    def observe(self, chosen: SuperBatch, step: int) -> int: ...

    def state_dict(self) -> dict[str, Any]: ...


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel-style wrapper, or the model itself."""
    return getattr(model, "module", model)


def _fwd(model: torch.nn.Module, patch_size: int | None) -> int:
    f = forward_flops(_unwrap(model), patch_size=patch_size)
    return int(f["image"] + f["text"])


class LearnerSource:
    """The default: the current learner embeds the whole super-batch every step."""

    name = "learner"
    ledger_key = "learner_score"

    def __init__(
        self,
        model: DualEncoder,
        tokenize: Tokenize,
        patch_size: int | None = None,
        chunk: int = 0,
        autocast: Autocast = nullcontext,
    ) -> None:
        self.model, self.tokenize = _unwrap(model), tokenize
        self.patch_size, self.chunk, self.autocast = patch_size, chunk, autocast

    def _embed(self, model: torch.nn.Module, batch: SuperBatch) -> Embeddings:
        return embed(
            model,
            batch.images,
            self.tokenize(batch),
            patch_size=self.patch_size,
            device=model_device(model),
            chunk=self.chunk,
            autocast=self.autocast,
            validate=False,  # the run checked its data against the model once, at the start
        )

    def embeddings(self, batch: SuperBatch, step: int) -> tuple[Embeddings, int]:
        """(learner embeddings of the super-batch, FLOPs spent) for 0-based ``step``."""
        return self._embed(self.model, batch), len(batch) * _fwd(self.model, self.patch_size)

    def observe(self, chosen: SuperBatch, step: int) -> int:
        """Called with the selected batch after selection; returns the FLOPs spent (none here)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this source (restored by :meth:`load_state`)."""
        return {"name": self.name}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's :meth:`state_dict` (None: a fresh run)."""
        _check_state(self.name, state)


def _check_state(name: str, state: dict[str, Any] | None) -> None:
    if state is not None and state.get("name", name) != name:
        raise JestkitError(
            f"--resume: the checkpoint was scored by selection.scorer {state.get('name')!r}, "
            f"this run by {name!r}"
        )


class SnapshotSource(LearnerSource):
    """A learner copy refreshed every ``refresh`` steps; its embeddings cached by uid meanwhile."""

    name = "snapshot"

    def __init__(
        self,
        model: DualEncoder,
        tokenize: Tokenize,
        patch_size: int | None = None,
        chunk: int = 0,
        autocast: Autocast = nullcontext,
        refresh: int = 1,
    ) -> None:
        super().__init__(model, tokenize, patch_size, chunk, autocast)
        check(
            isinstance(refresh, int) and refresh >= 1,
            f"selection.score_refresh must be an int >= 1, got {refresh!r}",
        )
        self.refresh = refresh
        self.snapshot: DualEncoder | None = None
        self.refreshed_at = -1
        self._reset_cache()
        self.hits = self.misses = 0  # since the start of this process (diagnostics)

    def _reset_cache(self) -> None:
        self.keys: dict[int, int] = {}
        self.image: Tensor | None = None
        self.text: Tensor | None = None
        self.size = 0
        self.scale: Tensor | None = None
        self.bias: Tensor | None = None

    def _take_snapshot(self, step: int) -> None:
        self.snapshot = copy.deepcopy(self.model).eval()
        for p in self.snapshot.parameters():
            p.requires_grad_(False)
        self.refreshed_at = step
        self._reset_cache()

    def _append(self, uids: np.ndarray, image: Tensor, text: Tensor) -> None:
        need = self.size + len(uids)
        if self.image is None or need > len(self.image):
            cap = max(need, 2 * (0 if self.image is None else len(self.image)), 1024)
            grown_i = image.new_empty((cap, image.shape[1]))
            grown_t = text.new_empty((cap, text.shape[1]))
            if self.image is not None and self.size:
                grown_i[: self.size] = self.image[: self.size]
                grown_t[: self.size] = self.text[: self.size]
            self.image, self.text = grown_i, grown_t
        self.image[self.size : need] = image
        self.text[self.size : need] = text
        for j, u in enumerate(uids.tolist()):
            self.keys[u] = self.size + j
        self.size = need

    def embeddings(self, batch: SuperBatch, step: int) -> tuple[Embeddings, int]:
        if self.snapshot is None or step - self.refreshed_at >= self.refresh:
            self._take_snapshot(step)
        ids = uid_to_int(batch.uids)
        rows = np.array([self.keys.get(u, -1) for u in ids.tolist()], dtype=np.int64)
        miss = np.flatnonzero(rows < 0)
        # A uid drawn twice in one super-batch is embedded once.
        miss_ids, first = np.unique(ids[miss], return_index=True)
        miss = miss[first]
        flops = 0
        if len(miss):
            emb = self._embed(self.snapshot, batch.index(miss))
            self._append(miss_ids, emb.image, emb.text)
            self.scale, self.bias = emb.scale, emb.bias
            flops = len(miss) * _fwd(self.snapshot, self.patch_size)
            rows = np.array([self.keys[u] for u in ids.tolist()], dtype=np.int64)
        self.hits += len(ids) - len(miss)
        self.misses += len(miss)
        at = torch.from_numpy(rows).to(self.image.device)
        return Embeddings(self.image[at], self.text[at], self.scale, self.bias), flops

    def state_dict(self) -> dict[str, Any]:
        if self.snapshot is None:
            return {"name": self.name, "refresh": self.refresh, "refreshed_at": -1}
        keys = np.fromiter(self.keys.keys(), dtype=np.uint64, count=len(self.keys))
        rows = np.fromiter(self.keys.values(), dtype=np.int64, count=len(self.keys))
        return {
            "name": self.name,
            "refresh": self.refresh,
            "refreshed_at": self.refreshed_at,
            "snapshot": {k: v.detach().cpu() for k, v in self.snapshot.state_dict().items()},
            # uids as int64 bit patterns (torch has no uint64 tensors everywhere)
            "uids": torch.from_numpy(keys.view(np.int64).copy()),
            "image": self.image[torch.from_numpy(rows)].cpu(),
            "text": self.text[torch.from_numpy(rows)].cpu(),
            "scale": None if self.scale is None else self.scale.detach().cpu(),
            "bias": None if self.bias is None else self.bias.detach().cpu(),
        }

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore the snapshot (built on a copy of the learner's architecture) and its cache."""
        _check_state(self.name, state)
        if state is None or state.get("refreshed_at", -1) < 0:
            return
        check(
            state["refresh"] == self.refresh,
            f"--resume: the checkpoint refreshed its scoring snapshot every {state['refresh']} "
            f"steps, selection.score_refresh is now {self.refresh}",
        )
        self._take_snapshot(int(state["refreshed_at"]))
        device = model_device(self.model)
        self.snapshot.load_state_dict({k: v.to(device) for k, v in state["snapshot"].items()})
        if len(state["uids"]):
            uids = state["uids"].numpy().view(np.uint64)
            self._append(uids, state["image"].to(device), state["text"].to(device))
            self.scale = state["scale"].to(device)
            self.bias = state["bias"].to(device)


class ProxySource(LearnerSource):
    """A small dual encoder trained online on the learner's selected batches, scoring for it."""

    name = "proxy"

    def __init__(
        self,
        proxy: DualEncoder,
        tokenize: Tokenize,
        chunk: int,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        grad_clip: float,
        autocast: Autocast = nullcontext,
    ) -> None:
        super().__init__(proxy, tokenize, None, chunk, autocast)
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(
            proxy.parameters(), lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.last_loss = math.nan

    @property
    def proxy(self) -> DualEncoder:
        return self.model

    def observe(self, chosen: SuperBatch, step: int) -> int:
        """One AdamW step of the proxy on the batch the learner is about to train on."""
        p = self.proxy.train()
        device = model_device(p)
        images = chosen.images.to(device, non_blocking=True)
        tokens = self.tokenize(chosen).to(device, non_blocking=True)
        loss = siglip_loss(
            p.encode_image(images), p.encode_text(tokens), p.logit_scale.exp(), p.logit_bias
        )
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(p.parameters(), self.grad_clip)
            self.optimizer.step()
        self.last_loss = float(loss.detach())
        return 3 * len(chosen) * _fwd(p, None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": {k: v.detach().cpu() for k, v in self.proxy.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state(self, state: dict[str, Any] | None) -> None:
        _check_state(self.name, state)
        if state is None:
            return
        device = model_device(self.proxy)
        self.proxy.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        self.optimizer.load_state_dict(state["optimizer"])


def learner_source(
    cfg: Any,
    model: DualEncoder,
    tokenize: Tokenize,
    patch_size: int | None,
    state: dict[str, Any] | None = None,
    world_size: int = 1,
    autocast: Autocast = nullcontext,
) -> LearnerSource:
    """The learner-side source ``cfg.selection`` asks for, restored from a checkpoint's ``state``.

    ``cfg`` is a :class:`jestkit.config.RunConfig`; ``patch_size`` the learner's scoring patch size.
    """
    s = cfg.selection
    chunk = s.score_batch_size
    base = _unwrap(model)
    if s.scorer == "proxy":
        check(
            world_size == 1,
            f"selection.scorer='proxy' trains its proxy per process; it needs world_size 1, "
            f"got {world_size}",
        )
        c = base.config
        overrides = {
            "image_size": c.image_size,
            "in_channels": c.in_channels,
            "vocab_size": c.vocab_size,
            "context_length": c.context_length,
            "init_seed": rng.derive_seed(cfg.train.seed, "proxy") % 2**31,
            **s.proxy_overrides,
        }
        try:
            proxy = create_model(s.proxy_model, **overrides)
        except JestkitError as e:
            raise JestkitError(
                f"selection.proxy_model={s.proxy_model!r} / selection.proxy_overrides="
                f"{s.proxy_overrides!r}: {e}"
            ) from None
        proxy.to(model_device(base)).train()
        o = cfg.optim
        source: LearnerSource = ProxySource(
            proxy,
            tokenize,
            chunk,
            lr=s.proxy_lr or o.lr,
            betas=(o.beta1, o.beta2),
            weight_decay=o.weight_decay,
            grad_clip=o.grad_clip,
            autocast=autocast,
        )
    elif s.score_refresh > 1:
        source = SnapshotSource(model, tokenize, patch_size, chunk, autocast, s.score_refresh)
    else:
        source = LearnerSource(model, tokenize, patch_size, chunk, autocast)
    source.load_state(state)
    return source


class CachedReference:
    """The reference's embeddings looked up in its cache by uid: no forward pass, no FLOPs."""

    ledger_key = "reference"

    def __init__(self, cache: ReferenceCache, device: torch.device) -> None:
        self.cache, self.device = cache, device

    def embeddings(self, batch: SuperBatch, step: int) -> tuple[Embeddings, int]:
        return self.cache.lookup(batch.uids, device=self.device), 0

    def observe(self, chosen: SuperBatch, step: int) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {"name": "cached-reference"}


class OnlineReference:
    """The reference model run over every super-batch (``selection.reference_cache=online``)."""

    ledger_key = "reference"

    def __init__(
        self,
        model: DualEncoder,
        tokenizer: Tokenizer,
        chunk: int = 0,
        autocast: Autocast = nullcontext,
    ) -> None:
        self.model, self.tokenizer, self.chunk, self.autocast = model, tokenizer, chunk, autocast

    def embeddings(self, batch: SuperBatch, step: int) -> tuple[Embeddings, int]:
        emb = embed(
            self.model,
            batch.images,
            self.tokenizer(batch.captions),
            device=model_device(self.model),
            chunk=self.chunk,
            autocast=self.autocast,
            validate=False,
        )
        return emb, len(batch) * _fwd(self.model, None)

    def observe(self, chosen: SuperBatch, step: int) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {"name": "online-reference"}
