from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.lenet import LeNet300100, LeNet5Caffe
from pyro_dirichlet.structure import (
    Consumer,
    PrunableLayer,
    UnsupportedStructureError,
    find_prunable_layers,
)

MNIST = torch.zeros(2, 1, 28, 28)


def conv_bn_net() -> nn.Sequential:
    """conv-BN-ReLU-pool, conv-BN-ReLU-avgpool-flatten, Linear-BN1d-ReLU-Dropout-Linear."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Identity(),
        nn.Linear(32, 10),
    )


def names(layers: list[PrunableLayer]) -> list[str]:
    return [layer.name for layer in layers]


def test_lenet5_layers_in_forward_order_without_the_classifier():
    layers = find_prunable_layers(LeNet5Caffe(), MNIST)
    assert names(layers) == ["conv1", "conv2", "fc1"]
    conv1, conv2, fc1 = layers
    assert (conv1.kind, conv1.channels, conv1.switch_at) == ("conv", 20, "conv1")
    assert conv1.consumers == (Consumer("conv2", "conv_in", 1),)
    # conv2's 50x4x4 output is flattened into fc1's 800 inputs: 16 features per channel.
    assert conv2.consumers == (Consumer("fc1", "linear_in", 16),)
    assert (fc1.kind, fc1.channels, fc1.switch_at) == ("linear", 500, "fc1")
    assert fc1.consumers == (Consumer("fc2", "linear_in", 1),)


def test_lenet300100_excludes_fc3():
    layers = find_prunable_layers(LeNet300100(), MNIST)
    assert names(layers) == ["fc1", "fc2"]
    assert [layer.consumers for layer in layers] == [
        (Consumer("fc2", "linear_in"),),
        (Consumer("fc3", "linear_in"),),
    ]


def test_switch_sits_on_the_batchnorm_that_directly_follows_a_layer():
    layers = find_prunable_layers(conv_bn_net(), torch.zeros(2, 3, 16, 16))
    assert [(layer.name, layer.switch_at) for layer in layers] == [("0", "1"), ("4", "5"), ("9", "10")]
    assert layers[0].consumers == (Consumer("1", "batchnorm"), Consumer("4", "conv_in"))
    # AdaptiveAvgPool2d((1, 1)) leaves one feature per channel after flattening.
    assert layers[1].consumers == (Consumer("5", "batchnorm"), Consumer("9", "linear_in", 1))
    assert layers[2].consumers == (Consumer("10", "batchnorm"), Consumer("14", "linear_in"))


def test_batchnorm_after_the_activation_is_a_consumer_not_the_switch():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3), nn.Flatten(),
        nn.Linear(5 * 4 * 4, 2),
    )
    [first, second] = find_prunable_layers(net, torch.zeros(1, 3, 8, 8))
    assert first.switch_at == "0"
    # BN(0) is not 0: the dropped channel reaches conv '3' as a constant surgery must fold.
    assert first.consumers == (
        Consumer("2", "batchnorm", 1, zero_preserved=True),
        Consumer("3", "conv_in", 1, zero_preserved=False),
    )
    assert second.consumers == (Consumer("5", "linear_in", 16),)


def test_functional_and_method_forms_are_followed():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 6, 3)
            self.fc = nn.Linear(6 * 3 * 3, 7)
            self.out = nn.Linear(7, 2)

        def forward(self, x):
            x = F.avg_pool2d(F.leaky_relu(self.conv(x), 0.1), 2)
            x = F.dropout(torch.tanh(x), 0.2, self.training).contiguous()
            x = x.view(x.size(0), -1)
            x = torch.sigmoid(self.fc(x)).reshape(x.shape[0], -1)
            return self.out(x)

    layers = find_prunable_layers(Functional(), torch.zeros(2, 1, 8, 8))
    assert [(layer.name, layer.consumers) for layer in layers] == [
        ("conv", (Consumer("fc", "linear_in", 9),)),
        ("fc", (Consumer("out", "linear_in", 1, zero_preserved=False),)),
    ]


@pytest.mark.parametrize("requested", [["fc1", "conv1"], ["conv2"], ("fc1",)])
def test_named_layers_come_back_in_forward_order(requested):
    layers = find_prunable_layers(LeNet5Caffe(), MNIST, layers=requested)
    assert names(layers) == [name for name in ["conv1", "conv2", "fc1"] if name in requested]


@pytest.mark.parametrize(
    "requested, message",
    [
        (["conv3"], r"'conv3' is not a module of LeNet5Caffe; prunable layers are: conv1, conv2, fc1"),
        (["fc2"], r"layer 'fc2' cannot be pruned: its output channels reach the network's output"),
        ([], r"layers is empty"),
        (["conv1", "conv1"], r"layers lists \['conv1'\] more than once"),
    ],
)
def test_bad_layer_names_raise(requested, message):
    with pytest.raises(ValueError, match=message):
        find_prunable_layers(LeNet5Caffe(), MNIST, layers=requested)


def test_naming_a_module_without_channels_says_why():
    with pytest.raises(ValueError, match=r"'2' is a ReLU, not a Conv2d or Linear.*prunable layers are: 0, 4, 9"):
        find_prunable_layers(conv_bn_net(), torch.zeros(1, 3, 16, 16), layers=["2"])


def test_layers_given_as_one_string_is_a_type_error():
    with pytest.raises(TypeError, match=r"layers=\['conv1'\]"):
        find_prunable_layers(LeNet5Caffe(), MNIST, layers="conv1")


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.block(x) + x
        return self.head(x.mean(dim=(2, 3)))


def test_residual_add_couples_layers_left_out_by_default():
    with pytest.raises(ValueError, match=r"'stem': its output channels are coupled with 'block\.0' through 'add' \(operator\.add.*coupled='group'"):
        find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8))
    [group] = find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8), coupled="group")
    assert (group.name, group.members, group.switch_points) == ("stem", ("stem", "block.0"), ("stem", "block.0"))
    # block.0 reads the stream and writes into it: it is a consumer and a member.
    assert group.is_group and group.consumers == (Consumer("block.0", "conv_in"), Consumer("head", "linear_in"))


def test_a_non_first_member_of_a_group_names_the_group():
    assert issubclass(UnsupportedStructureError, ValueError)
    with pytest.raises(ValueError, match=r"layer 'block\.0' cannot be pruned: it is coupled with 'stem'.*prune the group 'stem'"):
        find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8), layers=["block.0"])
    # Naming the first member means the group, whatever the policy.
    [group] = find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8), layers=["stem"])
    assert group.members == ("stem", "block.0")


def test_concatenation_shifts_the_consumer_offsets():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 3, 3)
            self.fc = nn.Linear(5 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], dim=1), 1))

    a, b = find_prunable_layers(Concat(), torch.zeros(1, 1, 8, 8))
    assert a.consumers == (Consumer("fc", "linear_in", 36, offset=0),)
    assert b.consumers == (Consumer("fc", "linear_in", 36, offset=72),)


def test_concatenation_along_another_dimension_is_unsupported():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 12 * 6, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], dim=2), 1))

    with pytest.raises(UnsupportedStructureError, match=r"'cat' \(torch\.cat in the top-level forward\).*along dimension 2"):
        find_prunable_layers(Stack(), torch.zeros(1, 1, 8, 8))


def test_grouped_convolution_consumer_is_unsupported_and_grouped_layers_are_skipped():
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2)
    )
    with pytest.raises(UnsupportedStructureError, match=r"module '2' \(Conv2d\).*groups=2"):
        find_prunable_layers(net, torch.zeros(1, 2, 6, 6))
    # The grouped conv itself is not a candidate; the first conv can be skipped by naming.
    with pytest.raises(ValueError, match=r"'2' cannot be pruned: it is a grouped convolution"):
        find_prunable_layers(net, torch.zeros(1, 2, 6, 6), layers=["2"])


def test_unknown_operation_is_unsupported():
    class Softmaxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.fc2(torch.softmax(self.fc1(x), dim=1))

    with pytest.raises(UnsupportedStructureError, match=r"'softmax'.*effect on channels is not known"):
        find_prunable_layers(Softmaxed(), torch.zeros(2, 4))


def test_a_layer_used_twice_is_unsupported():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.fc(torch.relu(self.fc(x))))

    with pytest.raises(UnsupportedStructureError, match=r"'fc' is called 2 times"):
        find_prunable_layers(Shared(), torch.zeros(2, 4))


def test_constant_that_cannot_be_folded_is_unsupported():
    # conv -> ReLU -> BN -> zero-padded conv: a dropped channel becomes BN(0) != 0, which the
    # padded conv sees differently at the borders, so pruning cannot reproduce it exactly.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3, padding=1),
        nn.Flatten(), nn.Linear(5 * 6 * 6, 2),
    )
    with pytest.raises(UnsupportedStructureError, match=r"layer '0'.*module '3' \(Conv2d\).*non-zero constant"):
        find_prunable_layers(net, torch.zeros(1, 3, 8, 8))
    assert names(find_prunable_layers(net, torch.zeros(1, 3, 8, 8), layers=["3"])) == ["3"]


def test_untraceable_model_is_unsupported():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:
                x = x * 2
            return self.fc2(self.fc1(x))

    with pytest.raises(UnsupportedStructureError, match=r"Branchy cannot be traced by torch\.fx"):
        find_prunable_layers(Branchy(), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "model, message",
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), r"Sequential has no prunable layer \('1': its output channels reach"),
        (nn.Sequential(nn.ReLU()), r"Sequential has no prunable layer: it has no Conv2d or Linear"),
    ],
)
def test_model_without_prunable_layer_raises(model, message):
    with pytest.raises(ValueError, match=message):
        find_prunable_layers(model, torch.zeros(2, 4))


def test_unused_layer_is_skipped_and_reported_when_named():
    net = LeNet5Caffe()
    net.spare = nn.Linear(3, 3)
    assert names(find_prunable_layers(net, MNIST)) == ["conv1", "conv2", "fc1"]
    with pytest.raises(ValueError, match=r"'spare' cannot be pruned: it is never called"):
        find_prunable_layers(net, MNIST, layers=["spare"])


def test_example_input_of_wrong_shape_names_the_shape():
    with pytest.raises(ValueError, match=r"example_inputs of shape \(2, 1, 27, 28\) cannot run through LeNet5Caffe: RuntimeError in module 'fc1'"):
        find_prunable_layers(LeNet5Caffe(), torch.zeros(2, 1, 27, 28))


@pytest.mark.parametrize("bad", [None, [[1.0]], "image"])
def test_example_input_must_be_tensors(bad):
    with pytest.raises(TypeError, match="example_inputs must be a Tensor"):
        find_prunable_layers(LeNet5Caffe(), bad)


def test_model_is_not_modified_and_keeps_its_mode():
    net = conv_bn_net().train()
    net[1].running_mean.fill_(0.5)
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    find_prunable_layers(net, torch.randn(4, 3, 16, 16))
    after = net.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(module.training for module in net.modules())
    net.eval()
    find_prunable_layers(net, torch.randn(4, 3, 16, 16))
    assert not any(module.training for module in net.modules())


def test_broadcast_shape_and_feature_indices():
    conv = PrunableLayer("c", "conv", 3, "c", ())
    linear = PrunableLayer("l", "linear", 5, "l", ())
    assert conv.broadcast_shape(4) == (1, 3, 1, 1)
    assert linear.broadcast_shape(2) == (1, 5)
    assert linear.broadcast_shape(3) == (1, 1, 5)
    with pytest.raises(ValueError, match="ndim must be at least 2.*layer 'c'"):
        conv.broadcast_shape(1)
    assert Consumer("fc", "linear_in", 4).feature_indices([2, 0]).tolist() == [8, 9, 10, 11, 0, 1, 2, 3]


def test_coupled_policy_is_checked():
    with pytest.raises(ValueError, match=r"coupled must be 'skip' or 'group', got 'all'"):
        find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8), coupled="all")


@pytest.mark.parametrize("combine", [torch.add, lambda a, b: a.add(b), lambda a, b: a - b])
def test_every_spelling_of_a_residual_add_couples(combine):
    class Spelled(Residual):
        def forward(self, x):
            x = F.relu(self.stem(x))
            x = combine(self.block(x), x)
            return self.head(x.mean(dim=(2, 3)))

    [group] = find_prunable_layers(Spelled(), torch.zeros(1, 3, 8, 8), coupled="group")
    assert group.members == ("stem", "block.0")
