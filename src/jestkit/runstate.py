"""A training run's state: everything the loop touches, built once, saved and restored whole.

:class:`RunState` owns the model (and its DistributedDataParallel wrapper under torchrun), the
tokenizer, the optimizer, the loader, the FLOP ledger, the selector and its embedding sources,
the evaluator and the metrics writer. It knows how to checkpoint itself, evaluate, log, and what
a non-finite step means for the run; :func:`jestkit.train.train` only sequences the step.
Nothing here prepares data or trains another model: the stages did (:mod:`jestkit.stages`).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jestkit import rng
from jestkit.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from jestkit.config import RunConfig, config_mismatch
from jestkit.data import (
    ReferenceCache,
    SuperBatch,
    SuperBatchLoader,
    build_index,
    data_fingerprint,
    load_manifest,
    uid_to_int,
)
from jestkit.data.shards import load_npy
from jestkit.distributed import World, rank_device, wrap_model
from jestkit.distributed_selection import DistributedSelector
from jestkit.errors import JestkitError, check
from jestkit.evaluate import Evaluator
from jestkit.flops import FlopLedger
from jestkit.losses import SigLipLoss
from jestkit.metrics import MetricsWriter, ProgressBar
from jestkit.models import DualEncoder, Tokenizer, create_model, load_pretrained
from jestkit.models import model_fingerprint as fingerprint_of
from jestkit.models.factory import create_factory_model, is_factory
from jestkit.selection import Selector, make_selector, super_batch_size
from jestkit.sources import (
    CachedReference,
    EmbeddingSource,
    LearnerSource,
    OnlineReference,
    learner_source,
)
from jestkit.stages import Inputs
from jestkit.step import Plan, make_optimizer, plan

# train.nonfinite=skip stops anyway after this many consecutive skipped steps: the run is not
# recovering (e.g. a learning rate that blows up every step), and skipping forever trains nothing.
NONFINITE_MAX_STREAK = 10


def batch_sizes(cfg: RunConfig) -> tuple[int, int]:
    """(b, N): the global batch and the super-batch it is selected from (N = b for uniform)."""
    b = cfg.train.batch_size
    if cfg.selection.method == "uniform":
        return b, b
    return b, super_batch_size(b, cfg.selection.filter_ratio)


def split_tokenizer(split_dir: Path, vocab_size: int, context_length: int) -> Tokenizer:
    """The BPE tokenizer trained on a split's captions, cached beside the split: training is
    deterministic, so every run on the same data and settings would train this same one."""
    index = build_index(split_dir, progress=False)
    path = index.derived("tokenizer", Tokenizer.recipe(vocab_size, context_length), ".json")
    if path is not None and path.exists():
        with suppress(OSError, JestkitError):
            return Tokenizer.from_json(path.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.train(index.read_captions(), vocab_size, context_length)
    index.save_derived(path, tokenizer.to_json())
    return tokenizer


class CaptionTokens:
    """Every caption of a split tokenised once, looked up by uid (vectorised).

    Captions never change, so re-tokenising each super-batch (tens of ms for thousands of
    captions) is wasted work; this is the in-memory fast path, the tokenizer the fallback.
    """

    def __init__(self, split_dir: Path, tokenizer: Tokenizer):
        index = build_index(split_dir, progress=False)
        # Cached beside the split for jestkit's tokenizer, whose JSON is all it depends on (a
        # factory's tokenizer is the user's code: tokenised afresh).
        mine = isinstance(tokenizer, Tokenizer)
        path = index.derived("tokens", tokenizer.to_json(), ".npy") if mine else None
        cached = load_npy(path, (len(index), tokenizer.context_length), np.int32)
        if cached is not None:
            self.tokens = torch.from_numpy(cached.astype(np.int64))
        else:
            self.tokens = tokenizer(index.read_captions())
            if mine:
                index.save_derived(path, self.tokens.numpy().astype(np.int32))
        self.order = np.argsort(index.uid, kind="stable")
        self.sorted_uids = index.uid[self.order]

    def __call__(self, uids: list[str]) -> torch.Tensor:
        ids = uid_to_int(uids)
        pos = np.searchsorted(self.sorted_uids, ids).clip(0, len(self.sorted_uids) - 1)
        check(
            bool((self.sorted_uids[pos] == ids).all()), "caption tokens: a uid is not in the split"
        )
        return self.tokens[torch.from_numpy(self.order[pos])]


def check_world(cfg: RunConfig, world: World) -> int:
    """The per-rank share of the super-batch; the global batch and super-batch must split evenly."""
    (b, n), p = batch_sizes(cfg), world.world_size
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


def build_selector(cfg: RunConfig, world: World | None = None) -> Selector:
    """The configured selector; across ranks, wrapped to select from the global super-batch."""
    selector = make_selector(cfg.selection)
    if world is not None and world.distributed:
        return DistributedSelector(selector, world.rank, world.world_size)
    return selector


def resume_path(out: Path, resume: str | None) -> Path | None:
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


def reference_source(
    cfg: RunConfig, inputs: Inputs, device: torch.device, autocast: Any
) -> EmbeddingSource:
    """The reference side of scoring: its cache (refused if built by another model or over
    other data), or the model itself every step (`selection.reference_cache=online`)."""
    check(
        inputs.reference_dir is not None,
        f"selection.criterion={cfg.selection.criterion!r} needs a reference model: "
        "prepare the run's inputs with jestkit.stages.prepare",
    )
    if inputs.reference_cache is None:
        model, tokenizer = load_pretrained(inputs.reference_dir, device=device)
        return OnlineReference(model, tokenizer, cfg.selection.score_batch_size, autocast)
    cache = ReferenceCache.open(
        inputs.reference_cache,
        model_fingerprint=fingerprint_of(load_pretrained(inputs.reference_dir)[0]),
    )
    check(
        cache.covers(inputs.train_dir),
        f"selection.reference_cache={str(inputs.reference_cache)!r} was not built over the "
        f"training split {str(inputs.train_dir)!r} "
        f"(data fingerprint {data_fingerprint(inputs.train_dir)})",
    )
    return CachedReference(cache, device)


def _autocast(cfg: RunConfig, device: torch.device) -> Any:
    if cfg.train.precision == "bf16" and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


@dataclass
class RunState:
    cfg: RunConfig
    world: World
    out: Path
    dataset_dir: Path
    device: torch.device
    autocast: Any  # () -> context manager: bf16 autocast on CUDA when asked, else a no-op
    model: DualEncoder  # the learner itself
    trained: torch.nn.Module  # what the step calls: the learner, or its DDP wrapper
    tokenizer: Tokenizer
    tokenize: Any  # SuperBatch -> token ids (looked up by uid when the split is in memory)
    optimizer: torch.optim.Optimizer
    loader: SuperBatchLoader
    selector: Selector
    learner_source: LearnerSource | None
    reference_source: EmbeddingSource | None
    plan: Plan
    loss_fn: SigLipLoss
    n_local: int  # this rank's slice of the super-batch
    evaluator: Evaluator | None = None
    metrics: MetricsWriter | None = None
    ledger: FlopLedger = field(default_factory=FlopLedger)
    start_step: int = 0
    skipped: int = 0  # non-finite steps skipped so far (train.nonfinite=skip)
    streak: int = 0  # consecutive skipped steps
    last_eval: dict[str, float] = field(default_factory=dict)
    bar: ProgressBar | None = None

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, cfg: RunConfig, inputs: Inputs, out: Path, resume: str | None, world: World
    ) -> RunState:
        """Model, optimizer, loader, selector and sources for `cfg`, fresh or from a checkpoint."""
        n_local = check_world(cfg, world)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JestkitError(f"--out {str(out)!r}: cannot create the output folder ({e})") from e
        device = rank_device(cfg.train.device, world)
        manifest = load_manifest(inputs.dataset_dir)

        ckpt = resume_path(out, resume)
        state: dict[str, Any] = {}
        if ckpt is not None:
            model, tokenizer, state = load_checkpoint(ckpt, device=device)
            diffs = config_mismatch(state["config"], cfg.to_dict())
            check(
                not diffs,
                f"--resume {str(ckpt)!r} was written by another config: " + "; ".join(diffs),
            )
        elif is_factory(cfg.model.name):  # your own open_clip-style model, with its tokenizer
            model, tokenizer = create_factory_model(cfg.model.name)
        else:
            tokenizer = split_tokenizer(
                inputs.train_dir, cfg.model.vocab_size, cfg.model.context_length
            )
            model = create_model(
                cfg.model.name,
                image_size=manifest["image_size"],
                in_channels=manifest["in_channels"],
                vocab_size=tokenizer.vocab_size,
                context_length=tokenizer.context_length,
                **{
                    "init_seed": rng.derive_seed(cfg.train.seed, "init") % 2**31,
                    **cfg.model.overrides,
                },
            )
        model.to(device).train()
        tokens_of = CaptionTokens(inputs.train_dir, tokenizer) if cfg.data.in_memory else None
        if tokens_of is not None and isinstance(model, DualEncoder):
            model.check_tokens(tokens_of.tokens)  # the step skips per-batch checks: once here

        autocast = _autocast(cfg, device)

        def tokenize(batch: SuperBatch) -> torch.Tensor:
            return tokens_of(batch.uids) if tokens_of is not None else tokenizer(batch.captions)

        selector = build_selector(cfg, world)
        run_plan = plan(cfg, model)
        run = cls(
            cfg=cfg,
            world=world,
            out=out,
            dataset_dir=inputs.dataset_dir,
            device=device,
            autocast=autocast,
            model=model,
            trained=wrap_model(model, world, device),
            tokenizer=tokenizer,
            tokenize=tokenize,
            optimizer=make_optimizer(cfg, model),
            loader=SuperBatchLoader(
                inputs.train_dir,
                batch_size=n_local,
                seed=cfg.train.seed,
                rank=world.rank,
                world_size=world.world_size,
                num_workers=cfg.data.num_workers,
                in_memory=cfg.data.in_memory,
            ),
            selector=selector,
            learner_source=learner_source(
                cfg,
                model,
                tokenize,
                run_plan.score_patch,
                state.get("scorer"),
                world.world_size,
                autocast,
            )
            if selector.needs_learner
            else None,
            reference_source=(
                reference_source(cfg, inputs, device, autocast)
                if selector.needs_reference
                else None
            ),
            plan=run_plan,
            loss_fn=SigLipLoss(world.rank, world.world_size),
            n_local=n_local,
        )
        if state:
            run.optimizer.load_state_dict(state["optimizer"])
            run.loader.load_state_dict(state["loader"])
            run.ledger.load_state_dict(state["ledger"])
            run.start_step = int(state["step"])
            run.skipped = int(state.get("nonfinite_skipped", 0))
        elif isinstance(run.reference_source, CachedReference):
            # Building the cache ran the reference over the whole pool once: charge it at step 0.
            cache = run.reference_source.cache
            run.ledger.add(0, reference=cache.forward_flops_per_example * cache.count)
        run._open_outputs(resumed=ckpt is not None)
        return run

    def _open_outputs(self, resumed: bool) -> None:
        cfg, out = self.cfg, self.out
        if not self.world.is_main:
            return
        if cfg.train.eval_every:
            self.evaluator = Evaluator(
                self.dataset_dir,
                self.tokenizer,
                self.device,
                max_examples=cfg.train.eval_max_examples or None,
            )
        self.metrics = MetricsWriter(
            out / "metrics.jsonl",
            truncate_after_step=self.start_step if resumed else -1,
            tensorboard_dir=(out / "tensorboard") if cfg.train.tensorboard else None,
        )
        try:
            (out / "config.json").write_text(cfg.to_json())
        except OSError as e:
            raise JestkitError(f"--out {str(out)!r}: cannot write config.json ({e})") from e

    # -- the run's protocols ---------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """The step-0 evaluation line of a fresh run; after a kill past the last checkpoint, the
        deterministic re-evaluation that gives the line the uninterrupted run wrote."""
        record: dict[str, Any] = {}
        if self.evaluator is not None:
            if self.start_step == 0:
                record = {"step": 0, **self.evaluate(0), "world_size": self.world.world_size}
                self.metrics.write(record)
            elif self.start_step >= self.cfg.train.steps:
                record = self.evaluate(self.start_step)
        self.last_eval = {k: v for k, v in record.items() if k.startswith("eval/")}
        self.bar = ProgressBar(
            total=self.cfg.train.steps,
            initial=self.start_step,
            desc=self.cfg.name,
            disable=not (self.cfg.train.progress and self.world.is_main),
        )
        return record

    def evaluate(self, step: int) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        return {f"eval/{k}": v for k, v in self.evaluator(self.model).items()}

    def state_dict(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "ledger": self.ledger.state_dict(),
            "config": self.cfg.to_dict(),
            "scorer": self.learner_source.state_dict() if self.learner_source else None,
            "nonfinite_skipped": self.skipped,
        }

    def checkpoint(self, step: int) -> Path | None:
        if not self.world.is_main:
            return None
        if self.metrics is not None:  # the lines up to `step` reach the disk before the checkpoint
            self.metrics.flush()
        return save_checkpoint(
            self.out,
            step,
            self.model,
            self.tokenizer,
            self.state_dict(step),
            keep_last=self.cfg.train.keep_checkpoints,
        )

    def is_eval_step(self, done: int) -> bool:
        every = self.cfg.train.eval_every
        return self.evaluator is not None and (done % every == 0 or done == self.cfg.train.steps)

    def log(self, record: dict[str, Any], evaluated: bool = False) -> None:
        """Write the step's line (every `train.log_every`, the last and evaluated steps)."""
        done = record["step"]
        last = done == self.cfg.train.steps
        if self.metrics is not None and (done % self.cfg.train.log_every == 0 or last or evaluated):
            self.metrics.write(record)

    def end_step(self, record: dict[str, Any], checkpoint: bool = False) -> None:
        """After an update: evaluate (every `train.eval_every` and at the end), log the step's
        line, advance the progress bar, checkpoint (every `train.checkpoint_every`, at the end,
        or when asked: a stop request)."""
        done = record["step"]
        evaluated = self.is_eval_step(done)
        if evaluated:
            self.last_eval = self.evaluate(done)
            record.update(self.last_eval)
        self.log(record, evaluated)
        self.bar.update(
            loss=record["loss"],
            **{k: v for k, v in self.last_eval.items() if k.endswith("retrieval_r1")},
        )
        every = self.cfg.train.checkpoint_every
        if done == self.cfg.train.steps or (every and done % every == 0) or checkpoint:
            self.checkpoint(done)

    def on_nonfinite(self, step: int, what: str, lr: float) -> None:
        """A non-finite loss, score or gradient at `step`: stop, keeping the last good checkpoint
        (default), or with train.nonfinite=skip drop the update and log the step as skipped (its
        eval still happens; a periodic checkpoint waits for a step that updates, so the latest
        checkpoint never comes from inside a run of skipped steps)."""
        cfg = self.cfg
        done, self.streak = step + 1, self.streak + 1
        msg = f"non-finite {what} at step {done}"
        why = ""
        if cfg.train.nonfinite == "skip" and self.streak > NONFINITE_MAX_STREAK:
            why = f" after {self.streak} consecutive skipped steps: the run is not recovering"
        elif cfg.train.nonfinite == "skip" and not all(
            bool(torch.isfinite(p).all()) for p in self.model.parameters()
        ):
            why = " and the model's weights are non-finite: skipping cannot recover"
        if cfg.train.nonfinite != "skip" or why:
            raise JestkitError(
                f"{msg}{why}; stopped. Last good checkpoint: {latest_checkpoint(self.out)}"
            )
        self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.world.is_main:
            print(f"warning: {msg}; step skipped ({self.skipped} so far)", file=sys.stderr)
        record = {"step": done, "lr": lr, "nonfinite": what, "nonfinite_skipped": self.skipped}
        record.update({f"flops/{k}": v for k, v in self.ledger.totals().items()})
        if self.is_eval_step(done):
            self.last_eval = self.evaluate(done)
            record.update(self.last_eval)
        if self.metrics is not None:
            self.metrics.write({**record, "world_size": self.world.world_size})
        self.bar.update()
        if done == cfg.train.steps:
            self.checkpoint(done)

    def interrupted(self, done: int, why: str | None) -> dict[str, Any]:
        self.bar.close()
        why = why or "a signal on another rank"
        if self.world.is_main:
            print(
                f"{why}: checkpoint saved at step {done}; resume with --resume latest",
                file=sys.stderr,
            )
        return {"step": done, "interrupted": why}

    def finish(self) -> dict[str, Any]:
        """The final record: deterministic (no wall clock), identical for resumed and
        uninterrupted runs; the last line of metrics.jsonl."""
        self.bar.close()
        cfg = self.cfg
        final = {
            "step": cfg.train.steps,
            "final": True,
            **self.last_eval,
            "examples_seen": cfg.train.steps * cfg.train.batch_size,
            **{f"flops/{k}": v for k, v in self.ledger.totals().items()},
            "world_size": self.world.world_size,
            **({"nonfinite_skipped": self.skipped} if cfg.train.nonfinite == "skip" else {}),
        }
        if self.metrics is not None:
            self.metrics.write(final)
            self.metrics.close()
        return final
