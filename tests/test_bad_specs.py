"""Pruned-model specs edited by hand (issue 34): every module attribute, not only the tensor shapes, is checked
against what the architecture can produce. The API raises ModelFileError with one sentence; the command line exits
with status 2 and leaves the run directory as it was.
"""

import json

import pytest
from pyro_dirichlet.models import LeNet5Caffe
from test_bad_inputs import invoke, rewrite, snapshot
from test_bad_values import one_sentence
from torch import nn

from pyro_dirichlet.io.serialization import ModelFileError, load_pruned, save_pruned


def edited(tmp_path, network: nn.Module, change) -> None:
    """``network`` saved to tmp/net, its spec changed by ``change(modules by name)`` (the weights left as they are)."""
    _, spec = save_pruned(network, tmp_path / "net")
    record = json.loads(spec.read_text())
    change({entry["name"]: entry for entry in record["architecture"]["modules"]})
    spec.write_text(json.dumps(record))


def pruned_lenet() -> nn.Module:
    return LeNet5Caffe(conv1=5, conv2=12, fc1=40)


def grouped() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


def args(name: str, **values):
    return lambda modules: modules[name]["args"].update(values)


REGISTERED = [
    ("conv-stride", args("conv1", stride=[2, 2]), ("module 'conv1' (Conv2d) has stride [2, 2] in the spec, but "
                                                  "LeNet5Caffe() builds it with [1, 1]: pruning changes widths only")),
    ("conv-stride-as-int", args("conv2", stride=2), "module 'conv2' (Conv2d) has stride [2, 2] in the spec"),
    ("conv-dilation", args("conv2", dilation=[2, 2]), "has dilation [2, 2] in the spec"),
    ("conv-padding", args("conv1", padding=[1, 1]), "has padding [1, 1] in the spec"),
    ("conv-padding-mode", args("conv1", padding_mode="reflect"), "has padding_mode 'reflect' in the spec"),
    ("conv-without-bias", args("conv2", bias=False), "has bias False in the spec"),
    ("conv-kernel", args("conv1", kernel_size=[3, 3]), "has kernel_size [3, 3] in the spec"),
    ("linear-without-bias", args("fc2", bias=False), "module 'fc2' (Linear) has bias False in the spec"),
    ("width-wider-than-built", args("fc1", out_features=900),
     ("module 'fc1' (Linear) has out_features 900 in the spec, but LeNet5Caffe() builds it with 500 and pruning only "
     "narrows it")),
    ("width-not-a-count", args("conv1", out_channels=0), "has out_channels 0 in the spec, not a positive whole number"),
    ("type-changed", lambda modules: modules["fc2"].update(type="Conv2d", args={"in_channels": 40, "out_channels": 10,
                                                                                "kernel_size": 1}),
     "module 'fc2' is a Conv2d in the spec, but LeNet5Caffe() builds a Linear there"),
]


@pytest.mark.parametrize(("change", "message"), [case[1:] for case in REGISTERED], ids=[case[0] for case in REGISTERED])
def test_a_registered_class_spec_whose_module_differs_from_the_class_is_refused(tmp_path, change, message):
    edited(tmp_path, pruned_lenet(), change)
    with pytest.raises(ModelFileError, match=None) as raised:
        load_pruned(tmp_path / "net")
    assert message in str(raised.value) and "\n" not in str(raised.value)


SEQUENTIAL = [
    ("batchnorm-other-than-conv", args("1", num_features=6),
     "module '1' (BatchNorm2d) has num_features 6 in the spec, but '0' before it gives 8 channels"),
    ("conv-in-other-than-before", args("3", in_channels=4, out_channels=4, groups=2),
     "module '3' (Conv2d) has in_channels 4 in the spec, but '0' before it gives 8 channels"),
    ("linear-in-other-than-before", args("8", in_features=5),
     "module '8' (Linear) has in_features 5 in the spec, but '6' before it gives 6 channels"),
]


@pytest.mark.parametrize(("change", "message"), [case[1:] for case in SEQUENTIAL], ids=[case[0] for case in SEQUENTIAL])
def test_a_sequential_spec_whose_modules_do_not_pass_channels_on_is_refused(tmp_path, change, message):
    edited(tmp_path, grouped(), change)
    with pytest.raises(ModelFileError) as raised:
        load_pruned(tmp_path / "net")
    assert message in str(raised.value)


def test_a_grouped_convolution_keeps_whole_groups_of_the_built_size():
    from pyro_dirichlet.io.spec_checks import check_narrowed

    built = {"conv": ("Conv2d", {"in_channels": 8, "out_channels": 8, "groups": 4, "kernel_size": [3, 3]})}

    def conv(**changed):
        return [("conv", "Conv2d", {**built["conv"][1], **changed})]

    check_narrowed(conv(in_channels=4, out_channels=4, groups=2), built.get, "Net()")  # two whole groups dropped
    with pytest.raises(ModelFileError, match="has groups 4 with in_channels 4 and out_channels 4 in the spec, but "
                                             "pruning keeps whole groups of 2 input and 2 output channels"):
        check_narrowed(conv(in_channels=4, out_channels=4, groups=4), built.get, "Net()")


def test_an_unedited_spec_of_each_kind_loads():
    import tempfile
    from pathlib import Path

    for network in (pruned_lenet(), grouped()):
        with tempfile.TemporaryDirectory() as folder:
            save_pruned(network, Path(folder) / "net")
            assert isinstance(load_pruned(Path(folder) / "net"), nn.Module)


def stride_two(path) -> None:
    record = json.loads(path.read_text())
    (conv1,) = [entry for entry in record["architecture"]["modules"] if entry["name"] == "conv1"]
    conv1["args"]["stride"] = [2, 2]
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("step", ["report", "finetune"])
def test_the_command_line_refuses_a_run_spec_with_an_edited_stride(run_copy, small_mnist_everywhere, capsys, step):
    name = "pruned.json" if step == "report" else "pruned-before-finetune.json"
    rewrite(name, stride_two)(run_copy, None)  # its SHA-256 and size recorded anew, as a forger would
    before = snapshot(run_copy)
    extra = ["--finetune-epochs", "1"] if step == "finetune" else []
    code, error = invoke([step, "--run", str(run_copy), *extra, "--quiet"], capsys)
    assert code == 2, error
    assert "module 'conv1' (Conv2d) has stride [2, 2] in the spec" in one_sentence(error)
    assert snapshot(run_copy) == before
