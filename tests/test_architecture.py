"""The package's shape: no import cycle among its modules, and no module or function too long to read.

The import graph is over each module's own import statements, wherever they are written:
at the top, inside a function (a lazy import hides a cycle from the interpreter, not from a
reader), and under ``if TYPE_CHECKING:`` (a reader, and a type checker, still follow it).
It also counts the imports the package makes by name at run time, which no ``import``
statement shows:

* a string constant that is a module of the package, alone or as ``"module:attribute"``
  (``importlib.import_module("pyro_dirichlet.x")``, the criteria registry's
  ``"pyro_dirichlet.criteria.posterior:PosteriorMean"``, ``DeferredClass(...)`` and
  ``source_value(...)`` in ``app/``), or an f-string that starts with ``"module:"``;
  a string that names no module of the package (a docstring, a message) is no edge;
* a package's ``_EXPORTS`` table (``pyro_dirichlet/__init__.py``'s lazy exports), read as
  edges from that package to the modules it names, relative to it.

Parent packages are not implied: ``from pyro_dirichlet.infer.fit import fit`` is an edge to
``pyro_dirichlet.infer.fit`` only. The interpreter runs ``pyro_dirichlet/__init__.py`` and
``infer/__init__.py`` first, but counting that would put every package that re-exports its
submodules on a cycle with each of them. ``from pyro_dirichlet import fit`` is an edge to
the module ``_EXPORTS`` names for ``fit`` (``infer.fit``), which is what it imports;
``import pyro_dirichlet`` is an edge to the package, and so to everything it exports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import pytest

import pyro_dirichlet
import pyro_dirichlet.models

PACKAGE = Path(pyro_dirichlet.__file__).parent
MODELS = Path(pyro_dirichlet.models.__file__).parent
MAX_LINES = 700
#: Lines of one function or method, its signature and docstring included (issue 30).
MAX_FUNCTION_LINES = 80

#: A dotted module name inside the package, as a string names it.
_MODULE_NAME = r"pyro_dirichlet(?:\.[a-z_][a-z0-9_]*)+"
_STRING_IMPORT = re.compile(rf"({_MODULE_NAME})(?::[A-Za-z_][\w.]*)?")
_FSTRING_IMPORT = re.compile(rf"({_MODULE_NAME}):")


class Source(NamedTuple):
    """One module's text, and whether it is a package's ``__init__`` (relative imports start there)."""

    text: str
    is_package: bool = False


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


def _imported_names(tree: ast.Module, module: str, is_package: bool):
    """(module, imported names) for every import statement, at any depth, ``if TYPE_CHECKING:`` included."""
    for node in ast.walk(tree):
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


def _string_imports(tree: ast.Module):
    """Modules named by strings: ``"pyro_dirichlet.x"``, ``"pyro_dirichlet.x:attr"``, ``f"pyro_dirichlet.x:{a}"``.

    May name things that are not modules; :func:`graph_of` keeps only the package's modules.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if found := _STRING_IMPORT.fullmatch(node.value):
                yield found[1]
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            if found := _FSTRING_IMPORT.fullmatch(str(node.values[0].value)):
                yield found[1]


def _lazy_exports(tree: ast.Module, package: str) -> dict[str, str]:
    """A package's ``_EXPORTS = {name: "relative.module"}`` table as ``{name: module}``."""
    for node in tree.body:
        if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "_EXPORTS"
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))):
            return {
                key.value: f"{package}.{value.value}"
                for key, value in zip(node.value.keys, node.value.values)
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant)
            }
    return {}


def graph_of(sources: dict[str, Source]) -> dict[str, set[str]]:
    """Module -> the modules of ``sources`` it imports, by statement or by name (see the module docstring)."""
    trees = {name: ast.parse(source.text) for name, source in sources.items()}
    exports = {name: _lazy_exports(trees[name], name) for name, source in sources.items() if source.is_package}
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, source in sources.items():
        for target, names in _imported_names(trees[name], name, source.is_package):
            # `from package import submodule` depends on the submodule, not only the package, and
            # `from package import name` on the module the package's _EXPORTS imports it from.
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in sources]
            submodules += [exports[target][n] for n in names if n in exports.get(target, {})]
            if submodules:
                graph[name].update(submodules)
                if len(submodules) < len(names):
                    graph[name].add(target)
            elif target in sources:
                graph[name].add(target)
        graph[name].update(exports.get(name, {}).values())
        graph[name].update(_string_imports(trees[name]))
        graph[name] &= sources.keys() - {name}
    return graph


def import_graph() -> dict[str, set[str]]:
    return graph_of({name: Source(path.read_text(), path.name == "__init__.py") for name, path in module_files().items()})


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


def test_the_import_graph_sees_relative_lazy_type_checking_and_submodule_imports(tmp_path):
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
    assert "a.b.sibling" in found and "a.b" in found and "x.y" in found


def test_the_import_graph_sees_the_package_s_imports_by_name():
    graph = import_graph()
    assert "pyro_dirichlet.criteria.posterior" in graph["pyro_dirichlet.criteria"]  # CRITERIA.add(name, f"...:{attr}")
    assert "pyro_dirichlet.app.options" in graph["pyro_dirichlet.app.cli"]  # DeferredClass
    assert "pyro_dirichlet.structure.layers" in graph["pyro_dirichlet.app.cli"]  # source_value
    assert {"pyro_dirichlet.infer.fit", "pyro_dirichlet.posterior"} <= graph["pyro_dirichlet"]  # _EXPORTS


def test_a_cycle_closed_under_type_checking_is_found():
    graph = graph_of({
        "pyro_dirichlet.a": Source("from pyro_dirichlet.b import B\n"),
        "pyro_dirichlet.b": Source(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pyro_dirichlet.a import A\n"
        ),
    })
    assert find_cycle(graph) == ["pyro_dirichlet.a", "pyro_dirichlet.b", "pyro_dirichlet.a"]


@pytest.mark.parametrize(
    "by_name",
    [
        'importlib.import_module("pyro_dirichlet.b")',
        'import_module("pyro_dirichlet.b")',
        'CRITERIA.add("b-score", "pyro_dirichlet.b:Score")',
        'CRITERIA.add(name, f"pyro_dirichlet.b:{attribute}")',
        'DeferredClass("pyro_dirichlet.b", "Options")',
        'source_value("pyro_dirichlet.b", "LIMIT")',
    ],
)
def test_a_cycle_closed_by_a_string_import_is_found(by_name):
    graph = graph_of({
        "pyro_dirichlet.a": Source(f"def load():\n    return {by_name}\n"),
        "pyro_dirichlet.b": Source("from pyro_dirichlet.a import load\n"),
    })
    assert find_cycle(graph) == ["pyro_dirichlet.a", "pyro_dirichlet.b", "pyro_dirichlet.a"]


def test_parent_packages_lazy_exports_and_strings_that_name_no_module_make_no_false_edge():
    graph = graph_of({
        "pyro_dirichlet": Source('_EXPORTS = {"fit": "infer.fit", "DirichletGuide": "infer.guide"}\n', is_package=True),
        "pyro_dirichlet.infer": Source("from pyro_dirichlet.infer.fit import fit\n", is_package=True),
        "pyro_dirichlet.infer.fit": Source(
            '"""Fits; see pyro_dirichlet.infer for the package."""\n'
            "from pyro_dirichlet import DirichletGuide\n"  # through _EXPORTS, not back to the package
            'MESSAGE = "pyro_dirichlet.nowhere:thing"\n'
        ),
        "pyro_dirichlet.infer.guide": Source(""),
    })
    assert graph == {
        "pyro_dirichlet": {"pyro_dirichlet.infer.fit", "pyro_dirichlet.infer.guide"},
        "pyro_dirichlet.infer": {"pyro_dirichlet.infer.fit"},
        "pyro_dirichlet.infer.fit": {"pyro_dirichlet.infer.guide"},
        "pyro_dirichlet.infer.guide": set(),
    }
    assert find_cycle(graph) is None


def _executed_on_import(tree: ast.Module) -> ast.Module:
    """The module with its function bodies left out: what runs when it is imported."""
    body: list[ast.stmt] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            body.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return ast.Module(body=body, type_ignores=[])


def test_fitting_loads_no_posterior_and_the_posterior_needs_no_fit():
    # A fit (each torchrun rank) must not pay for ArviZ; FitResult.posterior imports it when called.
    files = module_files()
    found = [
        f"{name} imports {target}"
        for name, path in files.items() if name.startswith("pyro_dirichlet.infer")
        for target, _ in _imported_names(_executed_on_import(ast.parse(path.read_text())), name, path.name == "__init__.py")
        if target.startswith("pyro_dirichlet.posterior")
    ]
    assert not found, found
    graph, reached, stack = import_graph(), set(), ["pyro_dirichlet.posterior"]
    while stack:
        for nxt in graph[stack.pop()] - reached:
            reached.add(nxt)
            stack.append(nxt)
    assert "pyro_dirichlet.infer.fit" not in reached
    lazy = ast.parse("import os\ndef posterior():\n    from pyro_dirichlet.posterior import from_fit\n")
    assert [t for t, _ in _imported_names(_executed_on_import(lazy), "a", False)] == ["os"]


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
