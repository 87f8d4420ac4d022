"""The public API: every exported name resolves to the object it names, whatever was imported first."""

import importlib
import subprocess
import sys
import types

import pyro_dirichlet


def test_every_public_name_is_the_object_not_a_same_named_submodule():
    # Import every submodule first: a submodule named like a function would shadow it.
    for module in ("infer.fit", "repair.train", "posterior", "planning.plan", "surgery", "app.pipeline", "devices", "pruner", "baselines"):
        importlib.import_module(f"pyro_dirichlet.{module}")
    for name in pyro_dirichlet.__all__:
        value = getattr(pyro_dirichlet, name)
        assert not isinstance(value, types.ModuleType), name
    assert callable(pyro_dirichlet.fit) and callable(pyro_dirichlet.finetune)


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from pyro_dirichlet import *", namespace)
    assert set(pyro_dirichlet.__all__) <= set(namespace)


def test_fit_import_in_a_fresh_interpreter():
    code = "import pyro_dirichlet.infer.fit; from pyro_dirichlet import fit, finetune; assert callable(fit) and callable(finetune)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_type_stub_names_exactly_the_lazy_exports():
    """``__init__.pyi`` is what IDEs and type checkers see of the lazy ``__getattr__``: it
    must import every exported name from the module ``_EXPORTS`` says, and nothing else."""
    import ast
    from pathlib import Path

    stub = ast.parse((Path(pyro_dirichlet.__file__).with_suffix(".pyi")).read_text())
    seen = {
        alias.name: node.module.removeprefix("pyro_dirichlet.")
        for node in stub.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }
    assert seen == pyro_dirichlet._EXPORTS
    for name, module in seen.items():
        assert hasattr(importlib.import_module(f"pyro_dirichlet.{module}"), name), name
