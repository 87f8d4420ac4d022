import pytest
import torch
import torch.fx

from pyro_dirichlet.models import LeNet300100, LeNet5Caffe
from pyro_dirichlet.baselines import MODELS, get_model_entry
from pyro_dirichlet.measure import count_parameters


@pytest.mark.parametrize("model", [LeNet5Caffe(), LeNet5Caffe(conv1=5, conv2=12, fc1=40), LeNet300100()])
def test_output_shape_and_fx_traceable(model):
    x = torch.randn(3, 1, 28, 28)
    traced = torch.fx.symbolic_trace(model)
    assert model(x).shape == (3, 10)
    assert torch.equal(traced(x), model(x))


def test_lenet5_layer_names_and_widths():
    model = LeNet5Caffe(conv1=5, conv2=12, fc1=40, num_classes=7)
    assert [name for name, _ in model.named_children()] == ["conv1", "conv2", "fc1", "fc2"]
    assert (model.conv2.in_channels, model.fc1.in_features, model.fc2.out_features) == (5, 12 * 16, 7)


def test_lenet300_parameter_count_and_names():
    model = LeNet300100(fc1=30, fc2=30)
    assert [name for name, _ in model.named_children()] == ["fc1", "fc2", "fc3"]
    assert count_parameters(model) == 784 * 30 + 30 + 30 * 30 + 30 + 30 * 10 + 10


@pytest.mark.parametrize("width, error", [(0, ValueError), (2.5, TypeError)])
def test_bad_width_names_the_argument(width, error):
    with pytest.raises(error, match="conv2"):
        LeNet5Caffe(conv2=width)


def test_registry_entries_build_their_models():
    assert isinstance(MODELS["lenet5"].build(), LeNet5Caffe)
    assert get_model_entry("lenet300").default_keep == {"fc1": 30, "fc2": 30}
    assert get_model_entry("lenet5").default_keep == {"conv1": 5, "conv2": 12, "fc1": 40}


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="lenet300, lenet5, resnet20, resnet56, vgg16, wrn_28_10"):
        get_model_entry("alexnet")
