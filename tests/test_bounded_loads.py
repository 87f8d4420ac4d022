"""Loading a pruned network (issue 13 item 9): a fresh interpreter finds the package's own architectures by itself,
and a small spec asking for a huge layer is refused from the weights file's header before anything is allocated."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_dirichlet import prune_channels, save_pruned
from pyro_dirichlet.baselines import get_model_entry
from pyro_dirichlet.io.serialization import ModelFileError, load_pruned

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pruned_lenet(tmp_path):
    torch.manual_seed(0)
    network = get_model_entry("lenet5").build().eval()
    small = prune_channels(network, {"conv1": [0, 3, 7, 11, 19]}, torch.zeros(2, 1, 28, 28))
    save_pruned(small, tmp_path / "pruned")
    return tmp_path / "pruned", small


def fresh_python(code: str, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], env=environment, capture_output=True, text=True,
                          timeout=120)


def test_load_pruned_in_a_fresh_interpreter_needs_no_import_of_models(pruned_lenet):
    prefix, small = pruned_lenet
    code = ("import sys, torch\nfrom pyro_dirichlet import load_pruned\n"
            "assert 'pyro_dirichlet.models' not in sys.modules\n"
            "model = load_pruned(sys.argv[1])\n"
            "torch.manual_seed(1)\nwith torch.no_grad():\n    print(type(model).__name__, float(model(torch.randn(2, 1, 28, 28)).sum()))")
    done = fresh_python(code, str(prefix))
    assert done.returncode == 0, done.stderr[-2000:]
    name, total = done.stdout.split()
    torch.manual_seed(1)
    with torch.no_grad():
        expected = float(small(torch.randn(2, 1, 28, 28)).sum())
    assert name == "LeNet5Caffe" and float(total) == pytest.approx(expected, rel=1e-5)


def test_a_spec_naming_a_class_outside_the_package_is_not_imported(pruned_lenet):
    prefix, _ = pruned_lenet
    spec = json.loads(prefix.with_suffix(".json").read_text())
    spec["architecture"]["class"] = "os:system"
    prefix.with_suffix(".json").write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match="'os:system', which is not registered"):
        load_pruned(prefix)


def test_a_small_spec_asking_for_a_huge_layer_allocates_nothing(pruned_lenet):
    prefix, _ = pruned_lenet
    spec = json.loads(prefix.with_suffix(".json").read_text())
    for module in spec["architecture"]["modules"]:
        if module["name"] == "fc1":
            module["args"]["out_features"] = 2_000_000  # 800 x 2,000,000 float32: 6.4 GB
    prefix.with_suffix(".json").write_text(json.dumps(spec))
    assert prefix.with_suffix(".json").stat().st_size < 10_000
    code = ("import resource, sys\nfrom pyro_dirichlet.io.serialization import ModelFileError, load_pruned\n"
            "import pyro_dirichlet.models\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_pruned(sys.argv[1])\nexcept ModelFileError as error:\n    print(str(error))\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    done = fresh_python(code, str(prefix))
    assert done.returncode == 0, done.stderr[-2000:]
    message, grown_mb = done.stdout.strip().splitlines()
    # Refused on the meta device by the spec check (wider than the class builds), before any tensor is allocated.
    assert "module 'fc1' (Linear) has out_features 2000000 in the spec, but LeNet5Caffe() builds it with 500" in message
    assert int(grown_mb) < 100
