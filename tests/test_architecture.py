"""The package's shape: no import cycle among its modules, and no module or function too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pyro_dirichlet
import pyro_dirichlet.models

PACKAGE = Path(pyro_dirichlet.__file__).parent
MODELS = Path(pyro_dirichlet.models.__file__).parent
MAX_LINES = 700
#: Lines of one function or method, its signature and docstring included (issue 30).
MAX_FUNCTION_LINES = 80


def module_files() -> dict[str, Path]:
    """Every module of pyro_dirichlet (models/ included, as it installs) by dotted name."""
    files = {}
    for root, prefix in ((PACKAGE, "pyro_dirichlet"), (MODELS, "pyro_dirichlet.models")):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool):
    """(module, imported names) for every import, at any depth, outside ``if TYPE_CHECKING:``.

    Imports inside functions count: a lazy import hides a cycle from the interpreter, not
    from a reader.
    """
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, tuple(alias.name for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, names in _imported_names(tree, name, path.name == "__init__.py"):
            # `from package import submodule` depends on the submodule, not only the package.
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            if submodules:
                graph[name].update(submodules)
                if len(submodules) < len(names):
                    graph[name].add(target)
            elif target in files:
                graph[name].add(target)
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_module_list_covers_the_subpackages():
    files = module_files()
    for expected in (
        "pyro_dirichlet.structure.graph",
        "pyro_dirichlet.structure.placement",
        "pyro_dirichlet.surgery",
        "pyro_dirichlet.infer.fit",
        "pyro_dirichlet.models.lenet",
    ):
        assert expected in files


def test_no_import_cycle_among_pyro_dirichlet_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_import_graph_sees_relative_lazy_and_submodule_imports(tmp_path):
    # The checker must be able to fail: a lazy import inside a function that closes a loop.
    graph = import_graph()
    assert "pyro_dirichlet.structure.rules" in graph["pyro_dirichlet.structure.placement"]
    graph["pyro_dirichlet.structure.layers"].add("pyro_dirichlet.structure.graph")
    assert find_cycle(graph) is not None
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from x.y import hidden\n"
        "def f():\n    from .sibling import x\n"
        "from . import other\n"
    )
    found = dict(_imported_names(tree, "a.b.c", is_package=False))
    assert "a.b.sibling" in found and "a.b" in found and "x.y" not in found


@pytest.mark.parametrize("name", sorted(n for n in module_files() if n.startswith("pyro_dirichlet.")))
def test_no_module_over_700_lines(name):
    lines = module_files()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by idea (at most {MAX_LINES})"


#: Packages only the analysis scripts use (the ``analysis`` extra); the library must run without them.
ANALYSIS_ONLY = ("torch_pruning",)


def test_no_module_imports_an_analysis_only_package():
    found = []
    for name, path in module_files().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, _ in _imported_names(tree, name, path.name == "__init__.py"):
            if target.split(".")[0] in ANALYSIS_ONLY:
                found.append(f"{name} imports {target}")
    assert not found, found
    # The check can fail: the same walk sees a lazy import inside a function.
    lazy = ast.parse("def f():\n    import torch_pruning as tp\n")
    assert [t for t, _ in _imported_names(lazy, "a.b", False)] == ["torch_pruning"]


def long_functions(tree: ast.Module, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function or method in ``tree`` longer than ``limit`` lines,
    counted from its ``def`` line to its last line (``end_lineno - lineno + 1``: docstring included)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        found.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def test_no_function_over_80_lines():
    offenders = []
    for path in module_files().values():
        for function, lines in long_functions(ast.parse(path.read_text(), filename=str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {function} ({lines} lines)")
    assert not offenders, (
        f"functions over {MAX_FUNCTION_LINES} lines; split each into the steps it takes:\n" + "\n".join(offenders)
    )


def test_the_function_length_check_can_fail():
    body = "".join(f"        x{i} = {i}\n" for i in range(80))
    tree = ast.parse(f"class A:\n    def long(self):\n{body}\n    def short(self):\n        pass\n"
                     f"def outer():\n    def inner():\n{body}")
    assert long_functions(tree) == [("A.long", 81), ("outer", 82), ("outer.inner", 81)]
