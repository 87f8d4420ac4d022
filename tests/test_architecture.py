"""The package's shape: no import cycle among its modules, and no module too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pyro_dirichlet
import pyro_dirichlet.models

PACKAGE = Path(pyro_dirichlet.__file__).parent
MODELS = Path(pyro_dirichlet.models.__file__).parent
MAX_LINES = 700


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


#: The pipeline's stages that only :class:`pyro_dirichlet.Pruner` strings together.
PIPELINE_STAGES = ("plan_keep", "prune_channels", "fold_scales")
ANALYSIS = PACKAGE.parent / "analysis"


def _stage_calls(tree: ast.AST) -> list[str]:
    """``name (line)`` for each call of a pipeline stage, bare (``plan_keep(...)``) or through a module (``surgery.prune_channels(...)``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.id if isinstance(function, ast.Name) else function.attr if isinstance(function, ast.Attribute) else None
            if name in PIPELINE_STAGES:
                found.append(f"{name} (line {node.lineno})")
    return found


def pipeline_callers() -> dict[str, Path]:
    """The modules that must go through the Pruner: the prune step, the pruning functions, the
    decision check and every study in ``analysis/``."""
    callers = {name: PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")
               for name in ("pyro_dirichlet.app.steps", "pyro_dirichlet.app.decision", "pyro_dirichlet.pruning",
                            "pyro_dirichlet.decision_check")}
    callers.update({f"analysis.{path.stem}": path for path in sorted(ANALYSIS.glob("*.py")) if path.stem != "__init__"})
    return callers


@pytest.mark.skipif(not ANALYSIS.is_dir(), reason="the analysis scripts are not installed with the package")
def test_the_callers_go_through_the_pruner_not_the_stages():
    callers = pipeline_callers()
    assert "analysis.study" in callers and "analysis.resnet20_cifar10" in callers and "pyro_dirichlet.app.steps" in callers
    found = {name: calls for name, path in callers.items() if (calls := _stage_calls(ast.parse(path.read_text())))}
    assert not found, f"call Pruner (plan, cut) instead of the stages it strings together: {found}"
    # The scan can fail: it sees bare calls and calls through a module.
    assert _stage_calls(ast.parse("plan_keep(s, t)\nsurgery.fold_scales(n, s, x)\nx.plan(s, t)\n")) == [
        "plan_keep (line 1)", "fold_scales (line 2)"]
