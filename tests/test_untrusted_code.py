"""Code named in files is never run (issue 34): a ``--config`` file naming a factory or a prior model is refused
without ``--trust-config``, for every subcommand; what is named is a Python function before it is called; the
current directory never shadows an installed package; ``SystemExit`` from a user's module is exit 2, one sentence.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from pyro_dirichlet.app.cli import main
from test_bad_inputs import invoke, snapshot

COMMANDS = ["train", "fit", "prune", "finetune", "report", "run"]


def argv_of(command: str, run: Path, tmp: Path) -> list[str]:
    """The command writing a fresh directory (train, run) or the existing run (later steps), with the config file."""
    out = ["--out", str(tmp / "fresh")] if command in ("train", "run") else ["--run", str(run)]
    return [command, *out, "--config", str(tmp / "c.toml"), "--quiet"]


def one_sentence(error: str) -> str:
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-dirichlet: error: "), error
    assert "Traceback" not in error
    return lines[0]


@pytest.mark.parametrize("key", ["model", "prior-model"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_config_file_naming_os_system_runs_no_command(run_copy, tmp_path, small_mnist_everywhere, capsys, command, key):
    marker = tmp_path / "MARKER"
    (tmp_path / "c.toml").write_text(f'{key} = "os:system"\nmodel-arg = {{ command = "touch {marker}" }}\n')
    before = snapshot(run_copy)
    code, error = invoke(argv_of(command, run_copy, tmp_path), capsys)
    assert code == 2, error
    sentence = one_sentence(error)
    assert f"key '{key}' names code to import" in sentence and "--trust-config" in sentence, sentence
    assert not marker.exists()
    assert snapshot(run_copy) == before and not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("command", ["train", "run"])
def test_even_a_trusted_config_never_calls_a_builtin(tmp_path, small_mnist_everywhere, capsys, command):
    marker = tmp_path / "MARKER"
    (tmp_path / "c.toml").write_text(f'model = "os:system"\nmodel-arg = {{ command = "touch {marker}" }}\n'
                                     'dataset = "mnist"\n')
    code, error = invoke([*argv_of(command, tmp_path, tmp_path), "--trust-config"], capsys)
    assert code == 2, error
    assert "model factory 'os:system' is a builtin_function_or_method, not a Python function" in one_sentence(error)
    assert not marker.exists() and not (tmp_path / "fresh").exists()


SIDE_EFFECT = '''
from pathlib import Path
Path({marker!r}).write_text("imported")

def factory():
    return 5

def prior(layers):
    raise AssertionError("never called")
'''


@pytest.mark.parametrize("key", ["model", "prior-model"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_config_file_naming_a_module_with_a_side_effect_imports_nothing(run_copy, tmp_path, small_mnist_everywhere,
                                                                          capsys, monkeypatch, command, key):
    marker = tmp_path / "MARKER"
    (tmp_path / "advimport.py").write_text(SIDE_EFFECT.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "advimport", raising=False)
    target = "advimport:factory" if key == "model" else "advimport:prior"
    (tmp_path / "c.toml").write_text(f'{key} = "{target}"\ndataset = "mnist"\n')
    before = snapshot(run_copy)
    code, error = invoke(argv_of(command, run_copy, tmp_path), capsys)
    assert code == 2, error
    assert f"key '{key}' names code to import" in one_sentence(error)
    assert not marker.exists() and "advimport" not in sys.modules
    assert snapshot(run_copy) == before


def test_a_trusted_config_imports_the_factory_and_reports_what_it_returned(tmp_path, small_mnist_everywhere, capsys,
                                                                           monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "advimport.py").write_text(SIDE_EFFECT.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "advimport", raising=False)
    (tmp_path / "c.toml").write_text('model = "advimport:factory"\ndataset = "mnist"\n')
    code, error = invoke([*argv_of("train", tmp_path, tmp_path), "--trust-config"], capsys)
    sys.modules.pop("advimport", None)
    assert code == 2, error
    assert "model factory 'advimport:factory' returned a int, not an nn.Module" in one_sentence(error)
    assert marker.read_text() == "imported"  # the flag did let the file name code
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("text", ['trust-config = true\n', 'trust_config = true\nmodel = "advimport:factory"\n'])
def test_a_config_file_cannot_trust_itself(tmp_path, capsys, text):
    (tmp_path / "c.toml").write_text(text)
    code, error = invoke(argv_of("train", tmp_path, tmp_path), capsys)
    assert code == 2 and "is accepted on the command line only (--trust-config)" in one_sentence(error)


def test_a_registered_model_name_in_a_config_file_needs_no_trust(run_copy, tmp_path, capsys):
    (tmp_path / "c.toml").write_text('model = "lenet300"\n')
    code, error = invoke(argv_of("prune", run_copy, tmp_path), capsys)
    assert code == 2 and "holds model 'lenet5', not 'lenet300'" in one_sentence(error)


EXITS = {
    "on import": ("import sys\nsys.exit(0)\n", "fails with SystemExit (it called sys.exit(0))"),
    "when called": ("import sys\ndef factory():\n    sys.exit(0)\ndef prior(layers):\n    sys.exit(0)\n",
                    "SystemExit (it called sys.exit(0))"),
}


@pytest.mark.parametrize("when", sorted(EXITS))
@pytest.mark.parametrize("flag", ["--model", "--prior-model"])
def test_user_code_calling_sys_exit_is_exit_2_with_one_sentence(run_copy, tmp_path, small_mnist_everywhere, capsys,
                                                                monkeypatch, when, flag):
    source, expected = EXITS[when]
    (tmp_path / "exiting.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "exiting", raising=False)
    if flag == "--model":
        argv = ["train", "--out", str(tmp_path / "fresh"), "--model", "exiting:factory", "--dataset", "mnist"]
    else:
        argv = ["fit", "--run", str(run_copy), "--prior-model", "exiting:prior", "--epochs", "1"]
    before = snapshot(run_copy)
    code, error = invoke([*argv, "--quiet"], capsys)
    sys.modules.pop("exiting", None)
    assert code == 2, error
    assert expected in one_sentence(error)
    assert snapshot(run_copy) == before and not (tmp_path / "fresh").exists()


def test_a_factory_that_is_a_class_other_than_a_module_is_not_called(tmp_path, capsys):
    code, error = invoke(["train", "--out", str(tmp_path / "fresh"), "--model", "collections:OrderedDict",
                          "--dataset", "mnist", "--quiet"], capsys)
    assert code == 2 and "is the class OrderedDict, not a Python function returning an nn.Module" in one_sentence(error)


SHADOWS = ("cftime", "dask", "sparse")


def test_the_current_directory_shadows_no_installed_package(tmp_path):
    """A fresh interpreter in a folder holding cftime.py, dask.py, sparse.py and the user's modules (``-P``: as the
    installed ``pyro-dirichlet`` script starts, without the current directory on ``sys.path``)."""
    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('the stray {name}.py was imported')\n")
    (tmp_path / "my_priors.py").write_text("def prior(layers):\n    return {}\n")
    (tmp_path / "mynets.py").write_text("import torch\ndef factory():\n    return torch.nn.Linear(2, 2)\n")
    code = (
        "import importlib.util, os, sys\n"
        "from pyro_dirichlet.app.prior_model import load_prior_model\n"
        "from pyro_dirichlet.io.factories import ModelFactory\n"
        "load_prior_model('my_priors:prior')\n"
        "assert ModelFactory('mynets:factory').build().out_features == 2\n"
        "assert os.getcwd() not in sys.path and '' not in sys.path, sys.path\n"
        f"for name in {SHADOWS!r}:\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    assert spec is None or not spec.origin.startswith(os.getcwd()), spec\n"
        "import xarray\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
