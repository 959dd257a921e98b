"""The layout's promises (ARCHITECTURE.md): imports flow one way, there is no import cycle, and the package never
reaches into the benchmark, the trainers or the tests.

Every import counts, at module level or inside a function: a lazy import still ties two modules together. A
package's ``__init__`` importing its own submodules is not a cycle of design, so those edges are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("instantportrait", "benchmark", "train")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for top in TOPS for p in (ROOT / top).rglob("*.py")}


def _imported(path: Path, name: str) -> set[str]:
    """Every dotted name ``path`` imports (absolute or relative), resolved to absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imported(path, name):
            while target and target not in modules:  # `from pkg.mod import func` -> pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name and not target.startswith(name + ".") and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_package_the_benchmark_and_the_trainers():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("forbidden", ["benchmark", "train", "tests", "fixtures"])
def test_the_package_never_imports_upward(forbidden):
    """Data flows app / CLI / benchmark / trainers -> package: the package imports none of them, nor test code."""
    offenders = sorted(
        name for name, path in _modules().items() if name.startswith("instantportrait")
        and any(t == forbidden or t.startswith(forbidden + ".") for t in _imported(path, name)))
    assert not offenders, f"instantportrait modules importing {forbidden}: {offenders}"


def test_the_benchmark_never_imports_the_trainers():
    offenders = sorted(name for name, path in _modules().items() if name.startswith("benchmark")
                       and any(t == "train" or t.startswith("train.") for t in _imported(path, name)))
    assert not offenders, offenders
