"""Constants and dataclass defaults read from the package's source, so ``--help`` needs neither torch nor Pyro.

The command line shows each option's default, which lives on the options dataclasses of
modules that import torch (``app/steps.py``, ``infer/fit.py``) -- about 1.5 s before the
first line of help, 5 s with ArviZ. :func:`source_value` reads such a value from the module's
source file instead: literals, names assigned or imported at the module's top level, and a
few pure calls (``tuple``, ``sorted``, ``frozenset``, ``re.compile``, ``field(default=...)``). Anything
else raises :class:`NotInSource`, and :class:`DeferredClass` then imports the module, so a
default the reader cannot follow is slower, never wrong (``tests/test_cli_startup.py``
checks that every option's default reads the same both ways).

Example:
    >>> source_value("pyro_dirichlet.infer.priors", "DEFAULT_CONCENTRATION")
    0.1
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

__all__ = ["NotInSource", "source_value", "class_default", "DeferredClass"]


class NotInSource(LookupError):
    """The value is not a constant expression the source reader follows."""


class _Opaque:
    """A value the reader does not evaluate (a dict entry's value, say), only carried along."""


_OPAQUE = _Opaque()


@functools.cache
def _module_tree(module: str) -> ast.Module:
    """The parsed source of ``module`` (a module of this package), found without importing it."""
    package, _, leaf = module.rpartition(".")
    if not package.startswith("pyro_dirichlet"):
        raise NotInSource(f"module {module!r} is not part of pyro_dirichlet.")
    # The parent package's spec, not the module's: finding a module's spec imports its parent,
    # and pyro_dirichlet.models (mapped from the checkout's models/) imports torch.
    spec = importlib.util.find_spec(package) if package != "pyro_dirichlet" else importlib.util.find_spec("pyro_dirichlet")
    if spec is None or not spec.submodule_search_locations:
        raise NotInSource(f"package {package!r} has no folder.")
    folder = Path(next(iter(spec.submodule_search_locations)))
    for path in (folder / f"{leaf}.py", folder / leaf / "__init__.py"):
        if path.is_file():
            return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    raise NotInSource(f"no source file for module {module!r}.")


def _parent(module: str) -> str:
    return module.rpartition(".")[0]


def _binding(module: str, name: str) -> tuple[str, ast.expr | None, str | None]:
    """Where ``name`` is bound at the top of ``module``: its expression, or the module it is imported from."""
    for node in reversed(_module_tree(module).body):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node.value, None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name and node.value:
            return module, node.value, None
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    base = node.module or ""
                    if node.level:
                        anchor = module if _module_tree_is_package(module) else _parent(module)
                        for _ in range(node.level - 1):
                            anchor = _parent(anchor)
                        base = f"{anchor}.{base}" if base else anchor
                    return base, None, alias.name
    raise NotInSource(f"{module}.{name} is not assigned or imported at the module's top level.")


def _module_tree_is_package(module: str) -> bool:
    spec = importlib.util.find_spec(_parent(module) or module)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    return folder is not None and (folder / module.rpartition(".")[2] / "__init__.py").is_file()


def source_value(module: str, name: str) -> Any:
    """The value of the top-level name ``name`` of ``module``, read from its source.

    Raises:
        NotInSource: the value is not a constant expression the reader follows.
    """
    where, expression, imported = _binding(module, name)
    if imported is not None:
        return source_value(where, imported)
    return _evaluate(where, expression)


_CALLS = {"tuple": tuple, "sorted": sorted, "frozenset": frozenset, "list": list}


def _evaluate(module: str, node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return source_value(module, node.id)
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_evaluate(module, item) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_evaluate(module, key): _value_or_opaque(module, value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(module, node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords and len(node.args) == 1:
        if node.func.id in _CALLS:
            return _CALLS[node.func.id](_evaluate(module, node.args[0]))
    if (isinstance(node, ast.Call) and ast.unparse(node.func) == "re.compile" and not node.keywords
            and len(node.args) == 1 and isinstance(pattern := _evaluate(module, node.args[0]), str)):
        return re.compile(pattern)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "field" and not node.args
            and [keyword.arg for keyword in node.keywords if keyword.arg not in ("repr", "compare")] == ["default"]):
        (default,) = [keyword.value for keyword in node.keywords if keyword.arg == "default"]
        return _evaluate(module, default)
    raise NotInSource(f"{ast.unparse(node)!r} in {module} is not a constant expression.")


def _value_or_opaque(module: str, node: ast.expr) -> Any:
    try:
        return _evaluate(module, node)
    except NotInSource:
        return _OPAQUE


def class_default(module: str, cls: str, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` of ``module``, read from its source.

    Raises:
        NotInSource: the class or the field is not found, or its default is not a constant expression.
    """
    for node in _module_tree(module).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == name:
                    if item.value is None:
                        raise NotInSource(f"{cls}.{name} has no default.")
                    return _evaluate(module, item.value)
            raise NotInSource(f"{cls} of {module} has no field {name!r} of its own.")
    raise NotInSource(f"{module} defines no class {cls!r}.")


class DeferredClass:
    """A dataclass named by its module and name, imported only when it is first called or inspected.

    ``DeferredClass("pyro_dirichlet.app.steps", "FitOptions").prior`` reads the field's
    default from the source (:func:`class_default`), importing the module only where the
    source reader cannot follow it; calling it, or any other attribute (``__dataclass_fields__``,
    so :func:`dataclasses.fields` works), imports the class and acts as the class does.
    """

    def __init__(self, module: str, name: str) -> None:
        self.__module = module
        self.__name__ = self.__qualname__ = name

    def resolve(self) -> type:
        """The class itself (imports its module)."""
        return getattr(importlib.import_module(self.__module), self.__name__)

    def default(self, name: str) -> Any:
        """The default of field ``name``: from the source where it is constant, else from the imported class."""
        try:
            return class_default(self.__module, self.__name__, name)
        except NotInSource:
            (found,) = [f for f in dataclasses.fields(self.resolve()) if f.name == name]
            return found.default_factory() if found.default is dataclasses.MISSING else found.default

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            try:
                return class_default(self.__module, self.__name__, name)
            except NotInSource:
                pass
        return getattr(self.resolve(), name)

    def __repr__(self) -> str:
        return f"DeferredClass({self.__module!r}, {self.__name__!r})"
