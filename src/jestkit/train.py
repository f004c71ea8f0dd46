"""The training loop: one loop for the reference and the learner, selectors plugged in.

Launch:

    jestkit train --config quick --out runs/quick                      # JEST on the embedded scenes
    jestkit train --config quick --out runs/quick --resume latest      # continue after a crash
    jestkit train --config reference --out runs/ref                    # uniform on the curated split
    jestkit train --config scenes --out runs/u selection.method=uniform train.steps=2000
    torchrun --standalone --nproc_per_node 2 -m jestkit.train --config quick --out runs/ddp

Each step: draw a super-batch of N = b / (1 - f); embed it with the learner (no grad, at the
scoring patch size) and look the reference up in its cache; select b examples; take one optimizer
step on them (a `train.multires_fraction` share at the low-resolution patch size); account FLOPs;
log one JSON line. The last line of `metrics.jsonl` holds the final evaluation and is identical
between an uninterrupted run and a resumed one (it carries no wall-clock fields).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jestkit import rng
from jestkit.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from jestkit.config import RunConfig, list_presets, load_config, validate
from jestkit.data import (
    ReferenceCache,
    SuperBatch,
    SuperBatchLoader,
    build_index,
    data_fingerprint,
    load_manifest,
    uid_to_int,
)
from jestkit.data.loader import read_captions
from jestkit.distributed import (
    World,
    all_sum,
    average_gradients,
    broadcast_parameters,
    check_same_config,
    init_from_env,
    main_first,
    resolve_device,
    shutdown,
)
from jestkit.distributed_selection import DistributedSelector
from jestkit.errors import JestkitError, check
from jestkit.evaluate import Evaluator
from jestkit.flops import FlopLedger, forward_flops
from jestkit.losses import SigLipLoss
from jestkit.metrics import MetricsWriter, ProgressBar
from jestkit.models import (
    DualEncoder,
    Tokenizer,
    create_model,
    load_pretrained,
    model_fingerprint,
)
from jestkit.models.factory import create_factory_model, is_factory
from jestkit.scorers import LiveScorer, make_learner_scorer
from jestkit.scoring import Embeddings
from jestkit.selection import Selector, make_selector
from jestkit.workspace import ensure_dataset, ensure_reference, ensure_reference_cache, split_dir

# train.nonfinite=skip stops anyway after this many consecutive skipped steps: the run is not
# recovering (e.g. a learning rate that blows up every step), and skipping forever trains nothing.
NONFINITE_MAX_STREAK = 10

# Keys of the config that may change on resume without changing the run (everything else must match).
RESUMABLE_KEYS = {
    ("train", "steps"),
    ("train", "progress"),
    ("train", "tensorboard"),
    ("train", "eval_every"),
    ("train", "checkpoint_every"),
    ("train", "keep_checkpoints"),
    ("train", "device"),
    ("data", "num_workers"),
    ("selection", "stats"),
}


@dataclass
class Scorer:
    """What the selector scores with: the learner at `patch_size` and the reference's source.

    `learner` produces the learner-side embeddings (jestkit.scorers: the live learner, a
    snapshot refreshed every `selection.score_refresh` steps, or an online proxy model).
    """

    patch_size: int | None
    reference_cache: ReferenceCache | None
    reference_model: DualEncoder | None
    reference_tokenizer: Tokenizer | None
    learner: LiveScorer | None = None


class CaptionTokens:
    """Every caption of a split tokenised once, looked up by uid (vectorised).

    Captions never change, so re-tokenising each super-batch (tens of ms for thousands of
    captions) is wasted work; this is the in-memory fast path, the tokenizer the fallback.
    """

    def __init__(self, split_dir: Path, tokenizer: Tokenizer):
        index = build_index(split_dir, progress=False)
        self.tokens = tokenizer(index.read_captions())
        self.order = np.argsort(index.uid, kind="stable")
        self.sorted_uids = index.uid[self.order]

    def __call__(self, uids: list[str]) -> torch.Tensor:
        ids = uid_to_int(uids)
        pos = np.searchsorted(self.sorted_uids, ids).clip(0, len(self.sorted_uids) - 1)
        check(
            bool((self.sorted_uids[pos] == ids).all()), "caption tokens: a uid is not in the split"
        )
        return self.tokens[torch.from_numpy(self.order[pos])]


# ----------------------------------------------------------------------------------------------
# Building blocks of the loop (small, so the loop itself reads top to bottom)


def build_selector(cfg: RunConfig, world: World | None = None) -> Selector:
    """The configured selector; across ranks, wrapped to select from the global super-batch."""
    s = cfg.selection
    if s.method == "uniform":
        selector = make_selector("uniform", stats=s.stats)
    elif s.method == "independent":
        selector = make_selector(
            "independent",
            criterion=s.criterion,
            temperature=s.temperature,
            method=s.independent_method,
            score_mode=s.score_mode,
            stats=s.stats,
        )
    else:
        selector = make_selector(
            "jest",
            criterion=s.criterion,
            n_chunks=s.n_chunks,
            temperature=s.temperature,
            stats=s.stats,
        )
    if world is not None and world.distributed:
        return DistributedSelector(selector, world.rank, world.world_size)
    return selector


def check_world(cfg: RunConfig, world: World) -> int:
    """The per-rank share of the super-batch; the global batch and super-batch must split evenly."""
    b, n = cfg.train.batch_size, cfg.super_batch_size
    p = world.world_size
    check(
        b % p == 0,
        f"train.batch_size={b} (the global batch) is not divisible by the {p} ranks",
    )
    check(
        n % p == 0,
        f"the super-batch of {n} (train.batch_size={b}, selection.filter_ratio="
        f"{cfg.selection.filter_ratio}) is not divisible by the {p} ranks; pick a batch size "
        f"whose super-batch is",
    )
    return n // p


def patch_sizes_for(cfg: RunConfig, model: DualEncoder) -> tuple[int | None, int | None]:
    """(scoring patch size, low-resolution training patch size); None = full resolution."""
    sizes = tuple(model.patch_sizes)
    low = sizes[-1] if sizes else None
    score = cfg.selection.score_patch_size or None
    if cfg.selection.method == "flexi-jest" and score is None:
        score = low
    if score is not None:
        check(
            score in sizes,
            f"selection.score_patch_size={score} is not one of the model's "
            f"patch sizes {list(sizes)}",
        )
    if cfg.train.multires_fraction > 0:
        check(
            low is not None and len(sizes) > 1,
            f"train.multires_fraction={cfg.train.multires_fraction} needs a FlexiViT with two or "
            f"more patch sizes; model {cfg.model.name!r} has {list(sizes)}",
        )
    if score == (sizes[0] if sizes else None):
        score = None
    return score, low


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, embeddings' scale/bias and 1-d parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_" in name else decay).append(p)
    o = cfg.optim
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        foreach=True,  # one fused kernel per parameter group, also on CPU
    )


def lr_at(cfg: RunConfig, step: int) -> float:
    """Linear warmup then cosine decay to `min_lr_ratio * lr`; `step` counts finished updates."""
    o, total = cfg.optim, cfg.train.steps
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def embed(
    model: DualEncoder,
    images: torch.Tensor,
    tokens: torch.Tensor,
    patch_size: int | None,
    device: torch.device,
    autocast,
    chunk: int = 0,
) -> Embeddings:
    """No-grad embeddings of a super-batch, in float32 whatever the autocast dtype.

    `chunk` > 0 embeds that many examples per call: on CPU, calls of a few hundred examples
    stay in cache and run ~1.5x faster per example than one call over thousands.
    """
    was_training = model.training
    model.eval()
    step = chunk if chunk > 0 else len(images)
    parts = []
    with torch.no_grad(), autocast():
        for i in range(0, len(images), step):
            e = model.embeddings(
                images[i : i + step].to(device, non_blocking=True),
                tokens[i : i + step].to(device, non_blocking=True),
                patch_size=patch_size,
            )
            parts.append((e.image.float(), e.text.float()))
    model.train(was_training)
    return Embeddings(
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        e.scale.float(),
        e.bias.float(),
    )


def nonfinite_inputs(learner: Embeddings | None, reference: Embeddings | None) -> str | None:
    """Which scoring input holds a NaN/inf (embeddings, t or c), if any: one device sync."""
    from jestkit.scoring import all_finite

    named = [(n, e) for n, e in (("learner", learner), ("reference", reference)) if e is not None]
    parts = [torch.as_tensor(x) for _, e in named for x in (e.image, e.text, e.scale, e.bias)]
    ok = all_finite(*parts) if parts else []
    for i, (name, _) in enumerate(named):
        if not all(ok[4 * i : 4 * i + 4]):
            return f"{name} embeddings (selection scores)"
    return None


def config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose value changed since the checkpoint; a key the checkpoint predates counts as
    its default (a checkpoint from an older jestkit resumes if the new option is left alone)."""
    defaults = RunConfig().to_dict()
    diffs = []
    for section, values in current.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (section, key) in RESUMABLE_KEYS:
                continue
            old = saved.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if old != value:
                diffs.append(f"{section}.{key}: checkpoint {old!r}, now {value!r}")
    return diffs


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and exit after the current step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread signals cannot be caught: then the default handlers stay.
            with contextlib.suppress(ValueError):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: RunConfig, out_dir: str | Path, resume: str | None = None, world: World | None = None
) -> dict[str, Any]:
    """Train per `cfg` into `out_dir`; returns the final record (the last line of metrics.jsonl)."""
    cfg = validate(cfg)
    world = world or init_from_env()
    n_local = check_world(cfg, world)  # this rank's slice of the super-batch
    check_same_config(world, cfg.to_dict())
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JestkitError(f"--out {str(out)!r}: cannot create the output folder ({e})") from e
    device = resolve_device(cfg.train.device, world)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if cfg.train.precision == "bf16" and device.type == "cuda"
        else nullcontext
    )
    b, n_super = cfg.train.batch_size, cfg.super_batch_size

    # Data: the embedded dataset is prepared on first use, in the cache folder.
    # Under torchrun rank 0 prepares shared files first; the others then find them ready.
    dataset_dir = main_first(
        world, lambda: ensure_dataset(cfg.data, verbose=world.is_main, model=cfg.model)
    )
    manifest = load_manifest(dataset_dir)
    train_dir = split_dir(dataset_dir, manifest, cfg.data.train_split)

    # Model and tokenizer: fresh, or from the checkpoint we resume.
    ckpt = _resume_path(out, resume)
    if ckpt is not None:
        model, tokenizer, state = load_checkpoint(ckpt, device=device)
        diffs = config_mismatch(state["config"], cfg.to_dict())
        check(
            not diffs, f"--resume {str(ckpt)!r} was written by another config: " + "; ".join(diffs)
        )
    elif is_factory(cfg.model.name):  # your own open_clip-style model: its tokenizer too (#14)
        model, tokenizer = create_factory_model(cfg.model.name)
        state = None
    else:
        tokenizer = Tokenizer.train(
            read_captions(train_dir),
            vocab_size=cfg.model.vocab_size,
            context_length=cfg.model.context_length,
        )
        model = create_model(
            cfg.model.name,
            image_size=manifest["image_size"],
            in_channels=manifest["in_channels"],
            vocab_size=tokenizer.vocab_size,
            context_length=tokenizer.context_length,
            **{"init_seed": rng.derive_seed(cfg.train.seed, "init") % 2**31, **cfg.model.overrides},
        )
        state = None
    model.to(device).train()
    broadcast_parameters(world, model)
    score_patch, low_patch = patch_sizes_for(cfg, model)

    # Selection and its reference: cached embeddings (default) or an online reference model.
    selector = build_selector(cfg, world)
    scorer = Scorer(score_patch, None, None, None)
    if selector.needs_learner:
        scorer.learner = make_learner_scorer(
            cfg, model, embed, score_patch, (state or {}).get("scorer"), world.world_size
        )
    ledger = FlopLedger()
    if selector.needs_reference:
        ref_dir = main_first(
            world, lambda: ensure_reference(cfg, dataset_dir, verbose=world.is_main)
        )
        if cfg.selection.reference_cache == "online":
            scorer.reference_model, scorer.reference_tokenizer = load_pretrained(
                ref_dir, device=device
            )
        else:
            cache_dir = main_first(
                world,
                lambda: ensure_reference_cache(cfg, ref_dir, dataset_dir, verbose=world.is_main),
            )
            # Refuse a cache built by another reference or over other data.
            scorer.reference_cache = ReferenceCache.open(
                cache_dir,
                model_fingerprint=model_fingerprint(load_pretrained(ref_dir)[0]),
            )
            check(
                scorer.reference_cache.covers(train_dir),
                f"selection.reference_cache={str(cache_dir)!r} was not built over the training "
                f"split {str(train_dir)!r} (data fingerprint {data_fingerprint(train_dir)})",
            )

    loader = SuperBatchLoader(
        train_dir,
        batch_size=n_local,
        seed=cfg.train.seed,
        rank=world.rank,
        world_size=world.world_size,
        num_workers=cfg.data.num_workers,
        in_memory=cfg.data.in_memory,
    )
    tokens_of = CaptionTokens(train_dir, tokenizer) if cfg.data.in_memory else None

    def tokenize(batch: SuperBatch) -> torch.Tensor:
        return tokens_of(batch.uids) if tokens_of is not None else tokenizer(batch.captions)

    optimizer = make_optimizer(cfg, model)
    start_step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        ledger.load_state_dict(state["ledger"])
        start_step = int(state["step"])
    elif scorer.reference_cache is not None:
        # Building the cache ran the reference over the whole pool once: charge it at step 0.
        ref_fwd = scorer.reference_cache.forward_flops_per_example
        ledger.add(0, reference=ref_fwd * scorer.reference_cache.count)

    evaluator = (
        Evaluator(dataset_dir, tokenizer, device, max_examples=cfg.train.eval_max_examples or None)
        if world.is_main and cfg.train.eval_every
        else None
    )
    metrics = (
        MetricsWriter(
            out / "metrics.jsonl",
            truncate_after_step=start_step if ckpt else -1,
            tensorboard_dir=(out / "tensorboard") if cfg.train.tensorboard else None,
        )
        if world.is_main
        else None
    )
    if world.is_main:
        try:
            (out / "config.json").write_text(cfg.to_json())
        except OSError as e:
            raise JestkitError(f"--out {str(out)!r}: cannot write config.json ({e})") from e

    fwd_full = forward_flops(model)
    fwd_low = forward_flops(model, patch_size=low_patch) if low_patch else fwd_full
    fwd_ref = forward_flops(scorer.reference_model) if scorer.reference_model is not None else None
    loss_fn = SigLipLoss(world.rank, world.world_size)

    def checkpoint(step: int) -> Path | None:
        if not world.is_main:
            return None
        if metrics is not None:  # the lines up to `step` reach the disk before the checkpoint
            metrics.flush()
        return save_checkpoint(
            out,
            step,
            model,
            tokenizer,
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "loader": loader.state_dict(),
                "ledger": ledger.state_dict(),
                "config": cfg.to_dict(),
                "scorer": scorer.learner.state_dict() if scorer.learner else None,
                "nonfinite_skipped": skipped,
            },
            keep_last=cfg.train.keep_checkpoints,
        )

    def evaluate(step: int) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in evaluator(model).items()} if evaluator else {}

    skipped = int(state.get("nonfinite_skipped", 0)) if state is not None else 0
    streak = 0  # consecutive skipped steps

    def nonfinite(step: int, what: str) -> None:
        """A non-finite loss, score or gradient at `step`: stop, keeping the last good checkpoint
        (default), or with train.nonfinite=skip drop the update and log the step as skipped (its
        eval still happens; a periodic checkpoint waits for a step that updates, so the latest
        checkpoint never comes from inside a run of skipped steps)."""
        nonlocal skipped, streak, last_eval
        done, streak = step + 1, streak + 1
        msg = f"non-finite {what} at step {done}"
        why = ""
        if cfg.train.nonfinite == "skip" and streak > NONFINITE_MAX_STREAK:
            why = f" after {streak} consecutive skipped steps: the run is not recovering"
        elif cfg.train.nonfinite == "skip" and not all(
            bool(torch.isfinite(p).all()) for p in model.parameters()
        ):
            why = " and the model's weights are non-finite: skipping cannot recover"
        if cfg.train.nonfinite != "skip" or why:
            raise JestkitError(
                f"{msg}{why}; stopped. Last good checkpoint: {latest_checkpoint(out)}"
            )
        skipped += 1
        optimizer.zero_grad(set_to_none=True)
        if world.is_main:
            print(f"warning: {msg}; step skipped ({skipped} so far)", file=sys.stderr)
        record = {"step": done, "lr": lr, "nonfinite": what, "nonfinite_skipped": skipped}
        record.update({f"flops/{k}": v for k, v in ledger.totals().items()})
        is_last = done == cfg.train.steps
        if evaluator is not None and (done % cfg.train.eval_every == 0 or is_last):
            last_eval = evaluate(done)
            record.update(last_eval)
        if metrics is not None:
            metrics.write({**record, "world_size": world.world_size})
        bar.update()
        if is_last:
            checkpoint(done)

    record: dict[str, Any] = {}
    if start_step == 0 and evaluator is not None:
        record = {"step": 0, **evaluate(0), "world_size": world.world_size}
        metrics.write(record)
    elif start_step >= cfg.train.steps and evaluator is not None:
        # Killed after the last checkpoint but before the final line: evaluation is
        # deterministic, so redoing it gives the line the uninterrupted run wrote.
        record = evaluate(start_step)
    last_eval = {k: v for k, v in record.items() if k.startswith("eval/")}

    bar = ProgressBar(
        total=cfg.train.steps,
        initial=start_step,
        desc=cfg.name,
        disable=not (cfg.train.progress and world.is_main),
    )
    batches = iter(loader)
    t_start = time.perf_counter()
    with _StopFlag() as stop:
        for step in range(start_step, cfg.train.steps):
            t0 = time.perf_counter()
            lr = lr_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # 1. Draw a super-batch and select b examples from it.
            batch = next(batches)
            learner_emb = reference_emb = None
            if selector.needs_learner:
                learner_emb, score_flops = scorer.learner.embeddings(
                    model, batch, tokenize, step, device, autocast
                )
                ledger.add(step + 1, learner_score=score_flops * world.world_size)
            if selector.needs_reference:
                if scorer.reference_cache is not None:
                    reference_emb = scorer.reference_cache.lookup(batch.uids, device=device)
                else:
                    reference_emb = embed(
                        scorer.reference_model,
                        batch.images,
                        scorer.reference_tokenizer(batch.captions),
                        None,
                        device,
                        autocast,
                        cfg.selection.score_batch_size,
                    )
                    ledger.add(step + 1, reference=n_super * (fwd_ref["image"] + fwd_ref["text"]))
            # Selection is one global decision: every rank draws the same noise (the rank key
            # stays 0, so a one-process run keeps the seeds it always had).
            generator = rng.generator(cfg.train.seed, "select", step, 0, device=device)
            bad = nonfinite_inputs(learner_emb, reference_emb)  # numerical guard (#7)
            if world.distributed and all_sum(world, [float(bad is not None)], device)[0]:
                bad = bad or "embeddings on another rank (selection scores)"
            if bad is not None:
                nonfinite(step, bad)
                continue
            idx, sel_stats = selector.select(learner_emb, reference_emb, b, generator, n=len(batch))
            if not all(math.isfinite(v) for v in sel_stats.values()):
                nonfinite(step, "selection scores")
                continue
            idx = idx.sort().values.cpu()  # position in the super-batch is already random
            # Global indices -> the selected examples this rank holds (ranks get uneven shares).
            counts = torch.bincount(idx // n_local, minlength=world.world_size).tolist()
            lo = world.rank * n_local
            chosen = batch.index(idx[(idx >= lo) & (idx < lo + n_local)] - lo)
            if scorer.learner is not None:  # e.g. the proxy scorer trains on the selection
                ledger.add(
                    step + 1, learner_score=scorer.learner.observe(chosen, tokenize, step, device)
                )
            m = len(chosen)

            # 2. One optimizer step on the selection (the first n_low at the low resolution).
            images = chosen.images.to(device, non_blocking=True)
            tokens = tokenize(chosen).to(device, non_blocking=True)
            n_low = round(m * cfg.train.multires_fraction)
            with autocast():
                parts = [model.encode_image(images[:n_low], patch_size=low_patch)] if n_low else []
                parts += [model.encode_image(images[n_low:])] if n_low < m or not parts else []
                img = torch.cat(parts) if len(parts) > 1 else parts[0]
                txt = model.encode_text(tokens)
                loss = loss_fn(
                    img.float(),
                    txt.float(),
                    model.logit_scale.exp(),
                    model.logit_bias,
                    counts=counts,
                )
            # One small collective: the global loss, counts for the logs and any stop request.
            noise = np.asarray(chosen.meta.get("noise", np.array([""] * m)))
            pool_noise = np.asarray(batch.meta.get("noise", np.array([""] * len(batch))))
            loss_sum, noisy_chosen, noisy_pool, n_low_all, stops = all_sum(
                world,
                [
                    loss.item(),
                    float((noise != "").sum()),
                    float((pool_noise != "").sum()),
                    float(n_low),
                    float(stop.requested is not None),
                ],
                device,
            )
            global_loss, n_low_all = loss_sum / world.world_size, round(n_low_all)
            stop_now = stops > 0
            if not math.isfinite(global_loss):
                nonfinite(step, f"loss ({global_loss})")
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(world, model.parameters())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            )
            if not math.isfinite(float(grad_norm)):  # the update would poison every weight
                nonfinite(step, f"gradient norm ({float(grad_norm)})")
                continue
            optimizer.step()
            streak = 0
            ledger.add(
                step + 1,
                learner_train=3
                * (
                    n_low_all * fwd_low["image"]
                    + (b - n_low_all) * fwd_full["image"]
                    + b * fwd_full["text"]
                ),
            )
            done = step + 1

            # 3. Log, evaluate, checkpoint.
            record = {
                "step": done,
                "loss": global_loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "logit_scale": model.logit_scale.exp().item(),
                "logit_bias": model.logit_bias.item(),
                "examples_seen": done * b,
                "super_batch_examples": done * n_super,
                "noisy_selected_frac": noisy_chosen / b,
                "noisy_pool_frac": noisy_pool / n_super,
                **{f"sel/{k}": v for k, v in sel_stats.items()},
                **{f"flops/{k}": v for k, v in ledger.totals().items()},
                "world_size": world.world_size,
                "step_time": time.perf_counter() - t0,
                "time": time.perf_counter() - t_start,
            }
            is_last = done == cfg.train.steps
            evaluated = evaluator is not None and (done % cfg.train.eval_every == 0 or is_last)
            if evaluated:
                last_eval = evaluate(done)
                record.update(last_eval)
            if metrics is not None and (done % cfg.train.log_every == 0 or is_last or evaluated):
                metrics.write(record)
            bar.update(
                loss=record["loss"],
                **{k: v for k, v in last_eval.items() if k.endswith("retrieval_r1")},
            )
            if (
                is_last
                or (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0)
                or stop_now
            ):
                checkpoint(done)
            if stop_now and not is_last:
                bar.close()
                why = stop.requested or "a signal on another rank"
                if world.is_main:
                    print(
                        f"{why}: checkpoint saved at step {done}; resume with --resume latest",
                        file=sys.stderr,
                    )
                return {"step": done, "interrupted": why}
    bar.close()

    # The final record: deterministic (no wall clock), identical for resumed and uninterrupted runs.
    final = {
        "step": cfg.train.steps,
        "final": True,
        **last_eval,
        "examples_seen": cfg.train.steps * b,
        **{f"flops/{k}": v for k, v in ledger.totals().items()},
        "world_size": world.world_size,
        **({"nonfinite_skipped": skipped} if cfg.train.nonfinite == "skip" else {}),
    }
    if metrics is not None:
        metrics.write(final)
        metrics.close()
    return final


def _resume_path(out: Path, resume: str | None) -> Path | None:
    if not resume:
        if latest_checkpoint(out) is not None:
            raise JestkitError(
                f"--out {str(out)!r} already holds checkpoints: pass --resume latest to "
                f"continue that run, or choose another --out"
            )
        return None
    if resume == "latest":
        return latest_checkpoint(out)  # None: nothing to resume yet, start fresh
    path = Path(resume)
    check(path.is_dir(), f"--resume {resume!r}: no such checkpoint folder")
    return path


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="quick", help=f"preset: {', '.join(list_presets())}")
    parser.add_argument("--out", required=True, help="run folder (metrics.jsonl, checkpoints/)")
    parser.add_argument(
        "--resume",
        default=None,
        help="'latest' to continue the run in --out (fresh start if none), or a checkpoint folder",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, e.g. selection.filter_ratio=0.9 train.steps=500",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    world = init_from_env()  # torchrun's environment: join the process group
    try:
        final = train(cfg, args.out, resume=args.resume, world=world)
    finally:
        shutdown(world)
    if not world.is_main:
        return 0
    if final.get("interrupted"):
        return 0
    evals = {k: round(v, 4) for k, v in final.items() if k.startswith("eval/")}
    print(f"done: {cfg.name} {final['step']} steps -> {args.out}  {evals}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jestkit.train", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except JestkitError as e:
        print(f"jestkit train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
