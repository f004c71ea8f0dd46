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

The step's pieces are :mod:`jestkit.step`; the run's state (model, optimizer, loader, ledger,
sources, checkpoints, evals) is :class:`jestkit.runstate.RunState`; the dataset, the reference and
its cache are prepared before the loop by :mod:`jestkit.stages`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from jestkit import rng, stages
from jestkit.config import RunConfig, list_presets, load_config, validate
from jestkit.distributed import World, all_sum, check_same_config, init_from_env, shutdown
from jestkit.errors import JestkitError
from jestkit.runstate import RunState, batch_sizes, check_world
from jestkit.stages import Inputs
from jestkit.step import (
    forward_loss,
    local_share,
    lr_at,
    nonfinite_inputs,
    reduce_step,
    score,
    set_lr,
    train_flops,
    update,
)


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: str | None = None,
    world: World | None = None,
    inputs: Inputs | None = None,
) -> dict[str, Any]:
    """Train per `cfg` into `out_dir`; returns the final record (the last line of metrics.jsonl).

    `inputs` are the prepared dataset and reference (:func:`jestkit.stages.prepare`); without
    them the stages run first, on rank 0 alone, before the loop starts.
    """
    cfg = validate(cfg)
    world = world or init_from_env()
    check_world(cfg, world)  # before any collective or file: a batch the ranks cannot split
    check_same_config(world, cfg.to_dict())
    inputs = inputs or stages.prepare(cfg, world, fit=train)
    run = RunState.build(cfg, inputs, Path(out_dir), resume, world)
    b, n = batch_sizes(cfg)
    p, device = world.world_size, run.device
    run.start()
    batches = iter(run.loader)
    t_start = time.perf_counter()
    with _StopFlag() as stop:
        for step in range(run.start_step, cfg.train.steps):
            t0 = time.perf_counter()
            lr = lr_at(cfg, step)
            set_lr(run.optimizer, lr)

            # 1. Score a super-batch and select b examples: one global decision (every rank
            # draws the same noise; the rank key stays 0, so one process keeps its seeds).
            batch = next(batches)
            scored = score(run.learner_source, run.reference_source, batch, step)
            run.ledger.add(step + 1, **{k: v * p for k, v in scored.flops.items()})
            bad = nonfinite_inputs(scored.learner, scored.reference)
            if world.distributed and all_sum(world, [float(bad is not None)], device)[0]:
                bad = bad or "embeddings on another rank (selection scores)"
            if bad is not None:
                run.on_nonfinite(step, bad, lr)
                continue
            generator = rng.generator(cfg.train.seed, "select", step, 0, device=device)
            idx, sel_stats = run.selector.select(
                scored.learner, scored.reference, b, generator, n=len(batch)
            )
            if not all(math.isfinite(v) for v in sel_stats.values()):
                run.on_nonfinite(step, "selection scores", lr)
                continue
            local, counts = local_share(idx.sort().values.cpu(), run.n_local, world.rank, p)
            chosen = batch.index(local)
            if run.learner_source is not None:  # e.g. the proxy trains on the selection
                run.ledger.add(step + 1, learner_score=run.learner_source.observe(chosen, step))

            # 2. One optimizer step on the selection (the first n_low at the low resolution).
            n_low = run.plan.n_low(len(chosen))
            loss = forward_loss(
                run.trained,
                run.loss_fn,
                chosen.images.to(device, non_blocking=True),
                run.tokenize(chosen).to(device, non_blocking=True),
                n_low,
                run.plan.low_patch,
                counts,
                run.autocast,
            )
            # One small collective: the global loss, counts for the logs and any stop request.
            red = reduce_step(world, loss, chosen, batch, n_low, stop.requested is not None, device)
            if not math.isfinite(red.loss):
                run.on_nonfinite(step, f"loss ({red.loss})", lr)
                continue
            grad_norm = update(run.trained, run.optimizer, loss, cfg.optim.grad_clip)
            if not math.isfinite(grad_norm):
                run.on_nonfinite(step, f"gradient norm ({grad_norm})", lr)
                continue
            run.streak = 0
            run.ledger.add(
                step + 1, learner_train=train_flops(run.model, b, red.n_low, run.plan.low_patch)
            )
            done = step + 1

            # 3. Log, evaluate, checkpoint.
            record = {
                "step": done,
                "loss": red.loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "logit_scale": run.model.logit_scale.exp().item(),
                "logit_bias": run.model.logit_bias.item(),
                "examples_seen": done * b,
                "super_batch_examples": done * n,
                "noisy_selected_frac": red.noisy_chosen / b,
                "noisy_pool_frac": red.noisy_pool / n,
                **{f"sel/{k}": v for k, v in sel_stats.items()},
                **{f"flops/{k}": v for k, v in run.ledger.totals().items()},
                "world_size": p,
                "step_time": time.perf_counter() - t0,
                "time": time.perf_counter() - t_start,
            }
            run.end_step(record, checkpoint=red.stop)
            if red.stop and done < cfg.train.steps:
                return run.interrupted(done, stop.requested)
    return run.finish()


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
    cfg = validate(load_config(args.config, args.overrides))
    world = init_from_env()  # torchrun's environment: join the process group
    try:
        check_same_config(world, cfg.to_dict())
        inputs = stages.prepare(cfg, world, fit=train)  # rank 0 alone; the others wait
        final = train(cfg, args.out, resume=args.resume, world=world, inputs=inputs)
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
