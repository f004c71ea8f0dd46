"""`jestkit <command>`: one entry point; each command's arguments live beside its code.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int | None``. Modules are
imported lazily so that `jestkit --help` is instant and one command's heavy imports do not slow
another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jestkit.errors import JestkitError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": (
        "jestkit.data.prepare",
        "build the embedded dataset: pool, curated and eval shards",
    ),
    "make-shards": (
        "jestkit.data.make_shards",
        "convert a CSV/TSV/JSONL/parquet of images+captions to shards",
    ),
    "cache-ref": (
        "jestkit.data.reference_cache",
        "cache a reference model's embeddings over shards",
    ),
    "train": ("jestkit.train", "train a learner (or a reference) with a selector"),
    "eval": ("jestkit.evaluate", "evaluate a checkpoint: retrieval and zero-shot classification"),
    "reproduce": ("jestkit.reproduce", "reproduce the paper's claims on the embedded dataset"),
    "pipeline": (
        "jestkit.pipeline",
        "your own data end to end: reference, cache, JEST learner, eval, report",
    ),
    "report": ("jestkit.report", "write report.md/report.json/plots for a reproduce suite folder"),
    "score": ("jestkit.curation", "per-example reference/learnability scores as a parquet sidecar"),
    "filter": ("jestkit.curation", "keep the top fraction of a scores file: sorted uid array"),
    "flops": ("jestkit.flops", "print analytic FLOPs of a registered model"),
    "bench": (
        "jestkit.benchmarks",
        "run a benchmark: selection | models | data | overhead | distributed",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jestkit", description="Train image-text models with JEST joint example selection."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the "invalid choice" error listing commands
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"jestkit {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except JestkitError as e:
        print(f"jestkit {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, ...: the OS message names the path
        print(f"jestkit {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jestkit {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
