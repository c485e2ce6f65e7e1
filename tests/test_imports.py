"""The package's import graph: no circle, and imports flow one way: entry points -> methods ->
nets, metrics, data. Read from the source with ``ast`` (imports inside functions count too:
a circle that is only deferred is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("voice2face", "datamodules")
# modules with a command-line main: they use the library, the library never uses them
ENTRY_POINTS = {"voice2face.cli", "voice2face.train", "voice2face.evaluate", "voice2face.generate",
                "voice2face.synth.cli", "voice2face.prepare", "voice2face.prepare.run",
                "voice2face.results"}
# layers below the methods: they know nothing of methods or entry points
LOWER = ("voice2face.nets", "voice2face.metrics", "voice2face.losses", "voice2face.grid",
         "voice2face.splits", "datamodules")


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_reader_sees_what_python_imports():
    graph = import_graph()
    assert "voice2face.methods.base" in graph["voice2face.methods.gan"]
    assert "voice2face.methods" in graph["voice2face.generate"]               # inside a function
    assert "voice2face.prepare.meta" in graph["voice2face.prepare.plan"]      # `from . import meta`
    assert "voice2face.evaluate" in graph["voice2face.train"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", ["voice2face.methods", *LOWER])
def test_imports_flow_one_way(layer):
    """Methods never import an entry point; nets, metrics and data never import a method."""
    forbidden = set(ENTRY_POINTS) | ({"voice2face.methods"} if layer != "voice2face.methods" else set())
    wrong = {(m, t) for m, targets in import_graph().items() if _under(m, [layer])
             for t in targets if _under(t, forbidden) and not _under(t, [layer])}
    assert not wrong


def test_prepare_and_synth_do_not_import_each_other():
    graph = import_graph()
    for a, b in (("voice2face.prepare", "voice2face.synth"), ("voice2face.synth", "voice2face.prepare")):
        assert not {(m, t) for m, ts in graph.items() if _under(m, [a]) for t in ts if _under(t, [b])}
