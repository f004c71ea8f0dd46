"""Cheaper learner-side scoring: who produces the "learner" embeddings that selection scores.

JEST's learner scoring pass (embed all N = b / (1 - f) examples of the super-batch, no grad)
costs about N / (3 b) of a training step: 1.67x a step at f = 0.8. Besides low-resolution
FlexiViT scoring (``selection.score_patch_size``, ``flexi-jest``), two cheaper scorers:

- ``selection.score_refresh=k`` (:class:`SnapshotScorer`): score with a copy of the learner
  taken every k steps. While the copy is unchanged, an example's learner embeddings are a pure
  function of its uid, so they are cached by uid and an example drawn again before the next
  refresh is not re-embedded. What it saves is exactly the share of draws that repeat within a
  refresh window: with a pool of P examples and super-batches of N, the loader revisits an
  example every P / N steps, so scoring FLOPs fall by about ``max(0, 1 - P / (N k))``. On the
  embedded 60k pool at b = 256, f = 0.8 (an epoch every 47 steps) k = 100 saves about half, and
  k = 200 about three quarters. On a web-scale pool (no repeats) it saves no FLOPs; there a fixed
  snapshot only lets scoring run ahead of training (e.g. on other devices), which this
  single-process loop does not do.
- ``selection.scorer=proxy`` (:class:`ProxyScorer`): a small dual encoder (default: an MLP
  dual encoder a quarter of ``mlp-tiny``'s width) trained online, one AdamW step per training
  step on the very batch the learner trains on, stands in for the learner in the criterion
  (Evans et al. 2023, "Bad students make great teachers"). Scoring costs the proxy's forward
  over N plus its training step over b, whatever the learner's size: the saving is large when
  the learner is much larger than the proxy (a ViT learner), small for the tiny MLP learner.

All FLOPs a scorer spends (proxy training included) are charged to ``learner_score``. A scorer's
state (snapshot weights and cache, or proxy weights and optimizer) travels in the checkpoint, so
a resumed run continues with the same snapshot and cache and selects what an uninterrupted run
selects. The train loop uses a scorer in step 1 only: ``embeddings`` before selection and
``observe`` after it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jestkit.data import SuperBatch, uid_to_int
from jestkit.errors import JestkitError, check
from jestkit.flops import forward_flops
from jestkit.losses import siglip_loss
from jestkit.models import DualEncoder, create_model
from jestkit.scoring import Embeddings

# embed(model, images, tokens, patch_size, device, autocast, chunk) -> Embeddings (train.embed)
EmbedFn = Callable[..., Embeddings]
Tokenize = Callable[[SuperBatch], Tensor]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel-style wrapper, or the model itself."""
    return getattr(model, "module", model)


def _fwd(model: torch.nn.Module, patch_size: int | None) -> int:
    f = forward_flops(_unwrap(model), patch_size=patch_size)
    return int(f["image"] + f["text"])


class LiveScorer:
    """The default: the current learner embeds the whole super-batch every step."""

    name = "learner"

    def __init__(self, embed: EmbedFn, patch_size: int | None, chunk: int) -> None:
        self.embed, self.patch_size, self.chunk = embed, patch_size, chunk

    def embeddings(
        self,
        model: DualEncoder,
        batch: SuperBatch,
        tokenize: Tokenize,
        step: int,
        device: torch.device,
        autocast: Callable[[], Any],
    ) -> tuple[Embeddings, int]:
        """(learner embeddings of the super-batch, FLOPs spent) for 0-based ``step``."""
        emb = self.embed(
            model, batch.images, tokenize(batch), self.patch_size, device, autocast, self.chunk
        )
        return emb, len(batch) * _fwd(model, self.patch_size)

    def observe(
        self, chosen: SuperBatch, tokenize: Tokenize, step: int, device: torch.device
    ) -> int:
        """Called with the selected batch after selection; returns the FLOPs spent (none here)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this scorer (restored by :meth:`load_state`)."""
        return {"name": self.name}

    def load_state(self, state: dict[str, Any] | None, model: torch.nn.Module) -> None:
        """Continue from a checkpoint's :meth:`state_dict` (None: a fresh run)."""
        _check_state(self.name, state)


def _check_state(name: str, state: dict[str, Any] | None) -> None:
    if state is not None and state.get("name", name) != name:
        raise JestkitError(
            f"--resume: the checkpoint was scored by selection.scorer {state.get('name')!r}, "
            f"this run by {name!r}"
        )


class SnapshotScorer(LiveScorer):
    """A learner copy refreshed every ``refresh`` steps; its embeddings cached by uid meanwhile."""

    name = "snapshot"

    def __init__(self, embed: EmbedFn, patch_size: int | None, chunk: int, refresh: int) -> None:
        super().__init__(embed, patch_size, chunk)
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

    def _take_snapshot(self, model: torch.nn.Module, step: int) -> None:
        self.snapshot = copy.deepcopy(_unwrap(model)).eval()
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

    def embeddings(self, model, batch, tokenize, step, device, autocast):
        if self.snapshot is None or step - self.refreshed_at >= self.refresh:
            self._take_snapshot(model, step)
        ids = uid_to_int(batch.uids)
        rows = np.array([self.keys.get(u, -1) for u in ids.tolist()], dtype=np.int64)
        miss = np.flatnonzero(rows < 0)
        # A uid drawn twice in one super-batch is embedded once.
        miss_ids, first = np.unique(ids[miss], return_index=True)
        miss = miss[first]
        flops = 0
        if len(miss):
            sub = batch.index(miss)
            emb = self.embed(
                self.snapshot,
                sub.images,
                tokenize(sub),
                self.patch_size,
                device,
                autocast,
                self.chunk,
            )
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

    def load_state(self, state: dict[str, Any] | None, model: torch.nn.Module) -> None:
        """Restore the snapshot (built on a copy of ``model``'s architecture) and its cache."""
        _check_state(self.name, state)
        if state is None or state.get("refreshed_at", -1) < 0:
            return
        check(
            state["refresh"] == self.refresh,
            f"--resume: the checkpoint refreshed its scoring snapshot every {state['refresh']} "
            f"steps, selection.score_refresh is now {self.refresh}",
        )
        self._take_snapshot(model, int(state["refreshed_at"]))
        device = next(_unwrap(model).parameters()).device
        self.snapshot.load_state_dict({k: v.to(device) for k, v in state["snapshot"].items()})
        if len(state["uids"]):
            uids = state["uids"].numpy().view(np.uint64)
            self._append(uids, state["image"].to(device), state["text"].to(device))
            self.scale = state["scale"].to(device)
            self.bias = state["bias"].to(device)


class ProxyScorer(LiveScorer):
    """A small dual encoder trained online on the learner's selected batches, scoring for it."""

    name = "proxy"

    def __init__(
        self,
        embed: EmbedFn,
        chunk: int,
        proxy: DualEncoder,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        grad_clip: float,
    ) -> None:
        super().__init__(embed, None, chunk)
        self.proxy = proxy
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(
            proxy.parameters(), lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.last_loss = math.nan

    def embeddings(self, model, batch, tokenize, step, device, autocast):
        emb = self.embed(
            self.proxy, batch.images, tokenize(batch), None, device, autocast, self.chunk
        )
        return emb, len(batch) * _fwd(self.proxy, None)

    def observe(self, chosen, tokenize, step, device):
        """One AdamW step of the proxy on the batch the learner is about to train on."""
        p = self.proxy.train()
        images = chosen.images.to(device, non_blocking=True)
        tokens = tokenize(chosen).to(device, non_blocking=True)
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

    def load_state(self, state: dict[str, Any] | None, model: torch.nn.Module) -> None:
        _check_state(self.name, state)
        if state is None:
            return
        device = next(self.proxy.parameters()).device
        self.proxy.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        self.optimizer.load_state_dict(state["optimizer"])


def make_learner_scorer(
    cfg: Any,
    model: DualEncoder,
    embed: EmbedFn,
    patch_size: int | None,
    state: dict[str, Any] | None = None,
    world_size: int = 1,
) -> LiveScorer:
    """The scorer ``cfg.selection`` asks for, restored from a checkpoint's ``state`` if given.

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
        from jestkit import rng

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
        proxy.to(next(base.parameters()).device).train()
        o = cfg.optim
        scorer: LiveScorer = ProxyScorer(
            embed,
            chunk,
            proxy,
            lr=s.proxy_lr or o.lr,
            betas=(o.beta1, o.beta2),
            weight_decay=o.weight_decay,
            grad_clip=o.grad_clip,
        )
    elif s.score_refresh > 1:
        scorer = SnapshotScorer(embed, patch_size, chunk, s.score_refresh)
    else:
        scorer = LiveScorer(embed, patch_size, chunk)
    scorer.load_state(state, model)
    return scorer
