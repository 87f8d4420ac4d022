"""Packaging: models/ installs as pyro_dirichlet.models, never as a top-level `models`."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package_folder():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "pyro_dirichlet").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == folders | {"pyro_dirichlet.models"}
    assert setuptools["package-dir"]["pyro_dirichlet.models"] == "models"


def test_models_import_under_the_package_from_a_plain_checkout(tmp_path):
    # The GPU machine runs a checkout on PYTHONPATH: no editable finder, no installed mapping.
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()"
        " and 'editable' not in getattr(f, '__name__', '').lower()];"
        f"sys.path.insert(0, {str(ROOT)!r});"
        "import pyro_dirichlet.models.lenet as lenet; print(lenet.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    # Through pyro_dirichlet/models, a symbolic link to the top-level folder: no import hook.
    assert Path(out.stdout.strip()).resolve() == ROOT / "models" / "lenet.py"


def test_the_models_are_plain_torch_and_no_import_hook_finds_them():
    import ast

    import pyro_dirichlet.models

    assert not any(type(finder).__module__.startswith("pyro_dirichlet") for finder in sys.meta_path)
    assert (ROOT / "pyro_dirichlet" / "models").resolve() == ROOT / "models"
    for path in sorted((ROOT / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_dirichlet"):
                # Architectures import each other and register with the (torch-only) loader of
                # pruned models; nothing else of the library, no training loop.
                assert node.module.startswith(("pyro_dirichlet.models", "pyro_dirichlet.io.serialization")), (path.name, node.module)
    assert pyro_dirichlet.models.__name__ == "pyro_dirichlet.models"


def test_no_top_level_models_package_is_installed(tmp_path):
    # Run outside the checkout so the current directory cannot supply `models`.
    result = subprocess.run([sys.executable, "-c", "import models"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "No module named 'models'" in result.stderr
