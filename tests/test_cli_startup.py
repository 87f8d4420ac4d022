"""The command line starts at once: help and argument errors import neither torch, Pyro nor ArviZ."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_dirichlet.app.cli import COMMANDS, OPTION_FIELDS
from pyro_dirichlet.app.source_values import DeferredClass, NotInSource, class_default, source_value

ROOT = Path(__file__).resolve().parents[1]

# Each argv runs main() in one fresh interpreter; it records the exit status of each and,
# at the end, which heavy modules any of them imported.
_PROBE = """
import json, sys
from pyro_dirichlet.app.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
heavy = sorted(name for name in ("torch", "pyro", "arviz", "numpy", "matplotlib", "xarray") if name in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _probe(argvs: list[list[str]]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_and_argument_errors_import_no_torch():
    helps = [["--help"]] + [[command, "--help"] for command in COMMANDS]
    errors = [
        [],  # no command
        ["fit", "--run", "somewhere", "--epochs", "many"],  # not an integer
        ["fit", "--run", "somewhere", "--hyper-guide", "laplace"],  # not a choice
        ["train", "--out", "somewhere", "--model", "resnet"],  # not a model
        ["run", "--out", "somewhere", "--precision", "fp16"],  # not a precision
        ["prune", "--run", "somewhere", "--keep", "conv1"],  # malformed --keep
        ["report", "--bogus"],  # unknown flag
    ]
    result = _probe(helps + errors)
    assert result["codes"] == [0] * len(helps) + [2] * len(errors)
    assert result["heavy"] == []


def test_every_option_default_reads_the_same_from_the_source_as_from_the_class():
    read = 0
    for dest, (kind, name) in OPTION_FIELDS.items():
        (found,) = [f for f in dataclasses.fields(kind.resolve()) if f.name == name]
        assert found.default is not dataclasses.MISSING, dest  # a factory default would need an import
        assert class_default(kind._DeferredClass__module, kind.__name__, name) == found.default, dest
        read += 1
    assert read == len(OPTION_FIELDS) >= 20


def test_names_the_help_lists_read_the_same_from_the_source():
    from pyro_dirichlet.data import DATASETS
    from pyro_dirichlet.io.factories import FACTORY_PATH
    from pyro_dirichlet.infer.guide import HYPER_GUIDES
    from pyro_dirichlet.baselines import MODELS

    assert sorted(source_value("pyro_dirichlet.baselines.registry", "MODELS")) == sorted(MODELS)
    assert source_value("pyro_dirichlet.data.catalog", "DATASETS") == DATASETS
    assert sorted(source_value("pyro_dirichlet.infer.guide", "HYPER_GUIDES")) == sorted(HYPER_GUIDES)
    assert source_value("pyro_dirichlet.io.factories", "FACTORY_PATH").pattern == FACTORY_PATH.pattern


def test_a_default_the_source_reader_cannot_follow_comes_from_the_imported_class():
    from pyro_dirichlet.app.steps import FitOptions
    from pyro_dirichlet.infer.fit import FitConfig

    deferred = DeferredClass("pyro_dirichlet.app.options", "FitOptions")
    with pytest.raises(NotInSource, match="not a constant expression"):
        class_default("pyro_dirichlet.app.options", "FitOptions", "fit")  # field(default_factory=FitConfig)
    assert deferred.default("fit") == FitConfig()
    assert deferred.resolve() is FitOptions
    assert deferred(prior=0.5) == FitOptions(prior=0.5)
    assert deferred.prior == FitOptions.prior


def test_source_value_refuses_what_it_cannot_evaluate():
    with pytest.raises(NotInSource, match="not assigned or imported"):
        source_value("pyro_dirichlet.infer.priors", "no_such_name")
    with pytest.raises(NotInSource, match="not part of pyro_dirichlet"):
        source_value("json.decoder", "FLAGS")


def test_the_installed_command_exits_quickly_with_its_status_and_everything_it_printed(tmp_path):
    # console_main ends the process with os._exit once main() has returned: the output must
    # be flushed first and the status kept, on success and on a refused command alike.
    command = [sys.executable, "-m", "pyro_dirichlet"]
    listing = subprocess.run([*command, "layers", "--model", "lenet5"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.rstrip().endswith("so removing them would change the output's shape")
    refused = subprocess.run([*command, "fit", "--run", str(tmp_path / "nowhere")], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.startswith("pyro-dirichlet: error: ") and "nowhere" in refused.stderr
