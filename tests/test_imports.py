"""The package's import graph: no circle, and imports flow one way: commands -> libraries
(methods -> nets, metrics, data). A command (a module with a command-line ``main``) imports
only libraries, never another command; no library imports a command; no method imports
another method. Read from the source with ``ast`` (imports inside functions count too: a
circle that is only deferred is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import import_graph, module_files

# libraries that also answer make on the command line: config's profile=auto calls hardware
LIBRARIES_WITH_MAIN = {"voice2face.hardware"}
# layers below the methods: they know nothing of methods
LOWER = ("voice2face.nets", "voice2face.metrics", "voice2face.losses", "voice2face.grid",
         "voice2face.splits", "datamodules")


def defines_main(path: Path) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "main"
               for node in ast.parse(path.read_text(), str(path)).body)


def commands() -> set[str]:
    """The modules with a command-line ``main``, the libraries that also have one aside."""
    return {name for name, path in module_files().items()
            if defines_main(path) and name not in LIBRARIES_WITH_MAIN}


def method_modules() -> set[str]:
    from voice2face.methods import METHODS
    return {cls.__module__ for cls in METHODS.values()}


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
    assert "voice2face.prepare.run" in graph["voice2face.prepare"]            # `from .run import`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_commands_are_the_modules_the_command_lines_run():
    from voice2face.cli import COMMANDS
    found = commands()
    assert {module for module, _ in COMMANDS.values()} <= found
    # and those make and the docs run with `python -m`
    assert {"voice2face.registry", "voice2face.slurm", "voice2face.sweep",
            "voice2face.environment"} <= found
    assert not found & {"voice2face.training", "voice2face.evaluation", "voice2face.methods"}
    for name in LIBRARIES_WITH_MAIN:  # still a library: a library imports it
        assert any(name in targets for m, targets in import_graph().items()
                   if m not in found), name


def test_no_command_imports_another_command():
    """A command uses libraries only. ``voice2face.cli`` names the commands by string
    (importlib), so it imports none; a command package may start its own module
    (``voice2face.prepare`` -> ``voice2face.prepare.run``)."""
    found = commands()
    wrong = {(m, t) for m, targets in import_graph().items() if m in found
             for t in targets if t in found and not t.startswith(m + ".")}
    assert not wrong
    assert not import_graph()["voice2face.cli"] & found


def test_no_library_imports_a_command():
    found = commands()
    wrong = {(m, t) for m, targets in import_graph().items() if m not in found
             for t in targets if t in found}
    assert not wrong


def test_no_method_imports_another_method():
    """Each method's module stands alone on the shared ones (base, common, pretrained,
    generator); only the registry (``voice2face.methods``) imports them all."""
    methods = method_modules()
    assert len(methods) > 1 and all(_under(m, ["voice2face.methods"]) for m in methods)
    wrong = {(m, t) for m, targets in import_graph().items()
             if _under(m, ["voice2face.methods"]) and m != "voice2face.methods"
             for t in targets if t in methods and t != m}
    assert not wrong


@pytest.mark.parametrize("layer", LOWER)
def test_the_lower_layers_never_import_a_method(layer):
    wrong = {(m, t) for m, targets in import_graph().items() if _under(m, [layer])
             for t in targets if _under(t, ["voice2face.methods"])}
    assert not wrong


def test_prepare_and_synth_do_not_import_each_other():
    graph = import_graph()
    for a, b in (("voice2face.prepare", "voice2face.synth"), ("voice2face.synth", "voice2face.prepare")):
        assert not {(m, t) for m, ts in graph.items() if _under(m, [a]) for t in ts if _under(t, [b])}
