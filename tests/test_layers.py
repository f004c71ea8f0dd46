"""Imports only go down the layers (core <- models/data <- training <- experiments <- cli) and
never in a circle: a lower layer that imports a higher one fails here, naming both modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "jestkit"

# Each module's layer, by its dotted name under jestkit (a package name covers its modules).
LAYERS: dict[str, int] = {
    # 0. the pure-tensor core and its small helpers: no models, no data, no files
    "errors": 0, "rng": 0, "losses": 0, "scoring": 0, "selection": 0, "fsutil": 0, "faults": 0,
    "devices": 0,
    # 1. models and data (and the FLOP arithmetic over model configs, progress output)
    "models": 1, "data": 1, "flops": 1, "progress": 1,
    # 2. training: config, the step, the run, the stages before it, the loop, and the libraries
    #    built on them (JEST in your loop, offline curation)
    "config": 2, "checkpoint": 2, "evaluate": 2, "metrics": 2, "distributed": 2,
    "distributed_selection": 2, "sources": 2, "step": 2, "runstate": 2, "stages": 2, "train": 2,
    "api": 2, "curation": 2,
    # 3. experiments: they use the layers below, nothing below uses them
    "reproduce": 3, "report": 3, "analysis": 3, "benchmarks": 3, "pipeline": 3,
    # 4. the command line
    "cli": 4, "__main__": 4, "__init__": 4,
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    top = module.split(".")[0]
    if top not in LAYERS:
        raise AssertionError(f"jestkit.{module} has no layer in tests/test_layers.py: add it")
    return LAYERS[top]


def _imports(module: str, path: Path) -> set[str]:
    """jestkit modules imported anywhere in the file (function-level imports count too)."""
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = ("jestkit." + pkg).split(".") if pkg else ["jestkit"]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("jestkit.") or name == "jestkit":
                found.add(name.removeprefix("jestkit").lstrip("."))
    return {n for n in found if n}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = {_resolve(n, modules) for n in _imports(module, path)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def test_imports_only_go_down_the_layers():
    bad = [
        f"jestkit.{a} (layer {_layer(a)}) imports jestkit.{b} (layer {_layer(b)})"
        for a, targets in _graph().items()
        if a.split(".")[0] not in ("__init__", "__main__")
        for b in targets
        if _layer(b) > _layer(a)
    ]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circles():
    graph = _graph()
    pairs = sorted(
        f"jestkit.{a} <-> jestkit.{b}"
        for a, targets in graph.items()
        for b in targets
        if a < b and a in graph.get(b, set())
        and not (graph[a] is None or Path(_modules()[b]).name == "__init__.py"
                 or Path(_modules()[a]).name == "__init__.py")
    )  # fmt: skip
    assert not pairs, "\n".join(pairs)


@pytest.mark.parametrize("module", ["losses", "scoring", "selection"])
def test_the_core_imports_nothing_above_it(module):
    assert all(_layer(t) == 0 for t in _graph()[module]), _graph()[module]
