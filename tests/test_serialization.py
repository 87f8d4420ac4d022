from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from pyro_dirichlet.models.lenet import LeNet5Caffe
from pyro_dirichlet.io import serialization
from pyro_dirichlet.io.serialization import (
    FORMAT,
    ModelFileError,
    load_pruned,
    register_architecture,
    save_pruned,
)
from pyro_dirichlet.surgery import prune_channels

MNIST = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def registry():
    """The class registry, restored after the test so registrations do not leak."""
    saved = dict(serialization._REGISTRY)
    yield serialization._REGISTRY
    serialization._REGISTRY.clear()
    serialization._REGISTRY.update(saved)


def conv_bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU6()),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.LeakyReLU(0.2), nn.Dropout(0.1),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
    return net.eval()


def pruned_lenet5() -> nn.Module:
    torch.manual_seed(0)
    keep = {"conv1": [0, 3, 7, 19], "conv2": list(range(0, 50, 4)), "fc1": list(range(1, 500, 9))}
    return prune_channels(LeNet5Caffe().eval(), keep, MNIST)


def pruned_conv_bn() -> nn.Module:
    return prune_channels(conv_bn_net(), {"0": [1, 2, 6], "4.0": [0, 9, 15], "7": list(range(0, 32, 3))}, IMAGES)


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def edit_spec(prefix: Path, edit) -> None:
    spec_path = Path(f"{prefix}.json")
    spec = json.loads(spec_path.read_text())
    edit(spec)
    spec_path.write_text(json.dumps(spec))


def module_entry(spec: dict, name: str) -> dict:
    return next(entry for entry in spec["architecture"]["modules"] if entry["name"] == name)


def test_pruned_lenet5_round_trip_gives_identical_outputs(tmp_path, registry):
    register_architecture(LeNet5Caffe)
    pruned = pruned_lenet5()
    weights, spec_path = save_pruned(pruned, tmp_path / "lenet5", metadata={"kept_channels": {"conv1": 4}})
    assert (weights, spec_path) == (tmp_path / "lenet5.safetensors", tmp_path / "lenet5.json")

    loaded = load_pruned(tmp_path / "lenet5")
    assert type(loaded) is LeNet5Caffe and not loaded.training
    assert (loaded.conv1.out_channels, loaded.conv2.in_channels, loaded.fc1.in_features) == (4, 4, 13 * 16)
    assert torch.equal(output(loaded, MNIST), output(pruned, MNIST))

    spec = json.loads(spec_path.read_text())
    assert spec["format"] == FORMAT and spec["format_version"] == 1
    assert spec["architecture"]["class"] == "pyro_dirichlet.models.lenet:LeNet5Caffe"
    assert spec["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert spec["metadata"] == {"kept_channels": {"conv1": 4}}
    assert spec["architecture"]["tensors"]["conv1.weight"] == {"dtype": "float32", "shape": [4, 1, 5, 5]}


def test_pruned_sequential_round_trip_gives_identical_outputs_and_buffers(tmp_path):
    pruned = pruned_conv_bn()
    save_pruned(pruned, tmp_path / "net")
    loaded = load_pruned(str(tmp_path / "net"))
    assert type(loaded) is nn.Sequential and type(loaded[4]) is nn.Sequential
    assert repr(loaded) == repr(pruned)
    assert torch.equal(output(loaded, IMAGES), output(pruned, IMAGES))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in pruned.state_dict().items())


def test_dtypes_are_kept(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    save_pruned(net, tmp_path / "net")
    loaded = load_pruned(tmp_path / "net")
    assert loaded[0].weight.dtype == torch.float64 and isinstance(loaded[0].weight, nn.Parameter)
    assert torch.equal(loaded[0].weight, net[0].weight)


def test_tampered_weights_file_is_rejected(tmp_path):
    weights, _ = save_pruned(pruned_conv_bn(), tmp_path / "net")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"weights file .*net\.safetensors was modified or does not belong to this spec"):
        load_pruned(tmp_path / "net")


def test_architecture_edited_so_shapes_disagree_names_the_tensor(tmp_path, registry):
    register_architecture(LeNet5Caffe)
    save_pruned(pruned_lenet5(), tmp_path / "lenet5")
    edit_spec(tmp_path / "lenet5", lambda spec: module_entry(spec, "fc1")["args"].update(out_features=60))
    with pytest.raises(ModelFileError, match=r"tensor 'fc1\.bias': the rebuilt architecture gives shape \(60,\), the weights file holds \(56,\)"):
        load_pruned(tmp_path / "lenet5")


def test_spec_whose_modules_do_not_match_the_registered_class_is_rejected(tmp_path, registry):
    register_architecture(LeNet5Caffe)
    save_pruned(pruned_lenet5(), tmp_path / "lenet5")

    def rename(spec):
        module_entry(spec, "fc2")["name"] = "head"

    edit_spec(tmp_path / "lenet5", rename)
    with pytest.raises(ModelFileError, match=r"do not match LeNet5Caffe\(\): missing from the spec \['fc2'\], unknown to the class \['head'\]"):
        load_pruned(tmp_path / "lenet5")


def test_tensor_list_edited_so_shapes_disagree_names_the_tensor(tmp_path):
    save_pruned(pruned_conv_bn(), tmp_path / "net")

    def edit(spec):
        spec["architecture"]["tensors"]["4.0.weight"]["shape"] = [4, 3, 3, 3]

    edit_spec(tmp_path / "net", edit)
    with pytest.raises(ModelFileError, match=r"tensor '4\.0\.weight': the spec's tensor list gives shape \(4, 3, 3, 3\), the weights file holds \(3, 3, 3, 3\)"):
        load_pruned(tmp_path / "net")


def test_weights_of_another_model_are_rejected(tmp_path):
    save_pruned(pruned_conv_bn(), tmp_path / "a")
    save_pruned(conv_bn_net(), tmp_path / "b")
    Path(tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(ModelFileError, match="does not belong to this spec"):
        load_pruned(tmp_path / "a")


def test_saving_an_unregistered_class_raises(tmp_path, registry):
    registry.pop("pyro_dirichlet.models.lenet:LeNet5Caffe", None)
    with pytest.raises(ValueError, match=r"model is a LeNet5Caffe.*@register_architecture"):
        save_pruned(pruned_lenet5(), tmp_path / "lenet5")
    assert list(tmp_path.iterdir()) == []


def test_loading_an_unregistered_class_raises_without_importing_it(tmp_path, registry):
    register_architecture(LeNet5Caffe)
    save_pruned(pruned_lenet5(), tmp_path / "lenet5")
    edit_spec(tmp_path / "lenet5", lambda spec: spec["architecture"].update({"class": "no_such_package.evil:Net"}))
    with pytest.raises(ModelFileError, match=r"'no_such_package\.evil:Net', which is not registered"):
        load_pruned(tmp_path / "lenet5")
    registry.pop("pyro_dirichlet.models.lenet:LeNet5Caffe")
    edit_spec(tmp_path / "lenet5", lambda spec: spec["architecture"].update({"class": "pyro_dirichlet.models.lenet:LeNet5Caffe"}))
    with pytest.raises(ModelFileError, match=r"'pyro_dirichlet\.models\.lenet:LeNet5Caffe', which is not registered"):
        load_pruned(tmp_path / "lenet5")


def test_a_file_saved_before_models_moved_into_the_package_still_loads(tmp_path, registry):
    register_architecture(LeNet5Caffe)
    model = pruned_lenet5()
    save_pruned(model, tmp_path / "lenet5")
    edit_spec(tmp_path / "lenet5", lambda spec: spec["architecture"].update({"class": "models.lenet:LeNet5Caffe"}))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(output(load_pruned(tmp_path / "lenet5"), x), output(model, x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda spec: module_entry(spec, "2").update(type="Module"), r"module '2' has type 'Module', which is not among the types"),
        (lambda spec: module_entry(spec, "2").update(type="builtins.eval"), r"module '2' has type 'builtins\.eval'"),
        (lambda spec: module_entry(spec, "0")["args"].update(device="meta"), r"module '0' \(Conv2d\) has unknown constructor arguments \['device'\]"),
        (lambda spec: module_entry(spec, "0")["args"].update(padding_mode="mirror"), r"module '0' cannot be built as Conv2d"),
        (lambda spec: spec.update(format_version=2), r"has format_version 2; this version of pyro-dirichlet reads version 1"),
        (lambda spec: spec.update(format="something-else"), r"is not a pyro-dirichlet\.pruned-model spec"),
        (lambda spec: spec["architecture"].pop("tensors"), r"lacks weights_sha256 or an architecture"),
        (lambda spec: spec["architecture"]["modules"].append({"name": "4.9", "type": "Linear", "args": {"in_features": 1, "out_features": 1}}), r"module '4\.9' \(Linear\) has in_features 1 in the spec, but '4\.0' before it gives 3 channels"),
        (lambda spec: spec["architecture"]["modules"].append({"name": "0.x", "type": "ReLU", "args": {}}), r"module '0\.x' does not fit the nesting"),
    ],
)
def test_spec_describing_something_not_allowed_is_rejected(tmp_path, edit, message):
    save_pruned(pruned_conv_bn(), tmp_path / "net")
    edit_spec(tmp_path / "net", edit)
    with pytest.raises(ModelFileError, match=message):
        load_pruned(tmp_path / "net")


def test_spec_that_is_not_json_is_rejected(tmp_path):
    save_pruned(pruned_conv_bn(), tmp_path / "net")
    (tmp_path / "net.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="is not valid JSON"):
        load_pruned(tmp_path / "net")


@pytest.mark.parametrize(
    "model, message",
    [
        (nn.Sequential(nn.Linear(2, 2), nn.PReLU()), r"module '1' is a PReLU, which is not among the types"),
        (nn.Sequential(nn.Linear(2, 2), type("MyReLU", (nn.ReLU,), {})()), r"module '1' is a MyReLU"),
        (nn.Sequential(nn.ModuleList([nn.Linear(2, 2)])), r"module '0' is a ModuleList inside an nn\.Sequential"),
    ],
)
def test_saving_a_module_that_cannot_be_rebuilt_raises(tmp_path, model, message):
    with pytest.raises(ValueError, match=message):
        save_pruned(model, tmp_path / "net")
    assert list(tmp_path.iterdir()) == []


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        save_pruned(pruned_conv_bn(), tmp_path / "net", metadata={"tensor": torch.ones(1)})
    assert list(tmp_path.iterdir()) == []


def test_registered_class_needs_a_no_argument_constructor(registry):
    class NeedsWidth(nn.Module):
        def __init__(self, width):
            super().__init__()

    with pytest.raises(TypeError, match=r"NeedsWidth cannot be registered.*\['width'\] have no default"):
        register_architecture(NeedsWidth)
    with pytest.raises(TypeError, match="cls must be an nn.Module subclass"):
        register_architecture(int)
    with pytest.raises(ValueError, match="'package.module:QualName' key"):
        register_architecture("no_colon")


TINY_NET_MODULE = """
import torch
from torch import nn

from pyro_dirichlet.io.serialization import register_architecture


@register_architecture
class TinyNet(nn.Module):
    def __init__(self, width=6):
        super().__init__()
        self.fc1 = nn.Linear(4, width)
        self.fc2 = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
"""

LOAD_WITHOUT_PYRO = """
import sys

sys.modules["pyro"] = None  # any `import pyro` now raises ImportError
sys.path.insert(0, sys.argv[1])

import safetensors.torch
import torch

import pyro_dirichlet.io.serialization as serialization

# Registered by name only: load_pruned imports the module because the spec names it.
serialization.register_architecture("tinynet_for_serialization_test:TinyNet")
expected = safetensors.torch.load_file(sys.argv[1] + "/expected.safetensors")
for prefix, x in (("tiny", expected["tiny_x"]), ("sequential", expected["sequential_x"])):
    model = serialization.load_pruned(sys.argv[1] + "/" + prefix)
    with torch.no_grad():
        assert torch.equal(model(x), expected[prefix]), prefix
assert "tinynet_for_serialization_test" in sys.modules
assert sys.modules["pyro"] is None
print("loaded without pyro")
"""


def test_loading_works_where_pyro_cannot_be_imported(tmp_path, monkeypatch, registry):
    (tmp_path / "tinynet_for_serialization_test.py").write_text(textwrap.dedent(TINY_NET_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tinynet_for_serialization_test", raising=False)
    import tinynet_for_serialization_test as tiny_module

    torch.manual_seed(0)
    tiny = prune_channels(tiny_module.TinyNet(), {"fc1": [0, 2, 5]}, torch.zeros(1, 4))
    sequential = pruned_conv_bn()
    save_pruned(tiny, tmp_path / "tiny")
    save_pruned(sequential, tmp_path / "sequential")
    tiny_x = torch.randn(5, 4)
    safetensors.torch.save_file(
        {
            "tiny_x": tiny_x,
            "tiny": output(tiny, tiny_x),
            "sequential_x": IMAGES,
            "sequential": output(sequential, IMAGES),
        },
        tmp_path / "expected.safetensors",
    )
    monkeypatch.delitem(sys.modules, "tinynet_for_serialization_test")

    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PYRO, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded without pyro"
