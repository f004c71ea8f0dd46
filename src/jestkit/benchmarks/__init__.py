"""`jestkit bench NAME`: benchmarks that time compared variants side by side in one process.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args)``; the scripts under
``bench/`` are thin wrappers around them, so `python bench/selection.py` and
`jestkit bench selection` are the same program.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "selection": "jestkit.benchmarks.selection",
    "models": "jestkit.benchmarks.models",
    "data": "jestkit.benchmarks.data",
    "overhead": "jestkit.benchmarks.overhead",
    "distributed": "jestkit.benchmarks.distributed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in BENCHMARKS.items():
        p = sub.add_parser(name, help=f"the {name} benchmark")
        p.set_defaults(_bench_module=module)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int | None:
    return importlib.import_module(args._bench_module).run(args)
