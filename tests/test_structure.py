from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.models.lenet import LeNet300100, LeNet5Caffe
from pyro_dirichlet.structure import (
    DEFAULT_COUPLING,
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
    with pytest.raises(ValueError, match=r"'2' is a ReLU, not a Conv2d, Linear or MultiheadAttention.*prunable layers are: 0, 4, 9"):
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


def test_residual_add_couples_layers_into_one_group_by_default():
    with pytest.raises(ValueError, match=r"'stem': its output channels are coupled with 'block\.0' through 'add' \(operator\.add.*under coupled='skip'.*coupled='group'"):
        find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8), coupled="skip")
    assert DEFAULT_COUPLING == "group"
    [group] = find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8))
    assert find_prunable_layers(Residual(), torch.zeros(1, 3, 8, 8), coupled="group") == [group]
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


def test_concatenation_along_another_dimension_pins_the_channels():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 12 * 6, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], dim=2), 1))

    # Channel c of a and of b become one channel: followed, tied, left unpruned (no error).
    with pytest.raises(ValueError, match=r"Stack has no prunable layer \('a': it reaches 'cat' \(torch\.cat in the top-level forward\), which concatenates them with other tensors along dimension 2, tying their channels together") as error:
        find_prunable_layers(Stack(), torch.zeros(1, 1, 8, 8))
    assert not isinstance(error.value, UnsupportedStructureError)


def test_a_layer_feeding_a_grouped_convolution_prunes_in_whole_groups():
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=3),
        nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(16, 2),
    )
    layers = {layer.name: layer for layer in find_prunable_layers(net, torch.zeros(1, 2, 6, 6))}
    assert sorted(layers) == ["0", "6"]
    assert layers["0"].block == 2 and layers["6"].block == 1
    assert layers["0"].consumers == (
        Consumer("1", "batchnorm"), Consumer("3", "grouped"), Consumer("4", "batchnorm", zero_preserved=False),
        Consumer("6", "conv_in", zero_preserved=False),
    )
    # the grouped conv itself goes with the layer that feeds it
    with pytest.raises(ValueError, match=r"'3' cannot be pruned: it is a grouped convolution .*its channels go with the layer that feeds it"):
        find_prunable_layers(net, torch.zeros(1, 2, 6, 6), layers=["3"])


def test_grouped_convolution_whose_groups_do_not_line_up_is_unsupported():
    # 4 inputs in 2 groups of 2, but 8 outputs: a group's outputs are not its inputs
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(32, 2)
    )
    with pytest.raises(UnsupportedStructureError, match=r"module '2' \(Conv2d\): a grouped convolution \(groups=2\) whose groups \(2 inputs, 4 outputs\)"):
        find_prunable_layers(net, torch.zeros(1, 2, 6, 6))


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
    # conv -> Sigmoid -> zero-padded conv: a dropped channel becomes sigmoid(0) = 0.5, which the
    # padded conv sees differently at the borders, so pruning cannot reproduce it exactly.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Conv2d(4, 5, 3, padding=1),
        nn.Flatten(), nn.Linear(5 * 6 * 6, 2),
    )
    with pytest.raises(UnsupportedStructureError, match=r"layer '0'.*module '2' \(Conv2d\).*non-zero constant"):
        find_prunable_layers(net, torch.zeros(1, 3, 8, 8))
    assert names(find_prunable_layers(net, torch.zeros(1, 3, 8, 8), layers=["2"])) == ["2"]


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_constant_before_a_padded_conv_is_switched_again(affine):
    # conv -> ReLU -> BN -> zero-padded conv: a dropped channel becomes BN(0) != 0 at the padded
    # conv. The switch multiplies the BatchNorm's output too, which makes it zero again; a
    # BatchNorm without affine parameters could not take the folded posterior scale.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4, affine=affine), nn.Conv2d(4, 5, 3, padding=1),
        nn.Flatten(), nn.Linear(5 * 6 * 6, 2),
    )
    if not affine:
        with pytest.raises(UnsupportedStructureError, match=r"layer '0'.*module '3' \(Conv2d\).*non-zero constant"):
            find_prunable_layers(net, torch.zeros(1, 3, 8, 8))
        return
    first, second = find_prunable_layers(net, torch.zeros(1, 3, 8, 8))
    assert (first.name, first.switch_points, first.reswitch_points) == ("0", ("0",), ("2",))
    assert first.multiply_points == ("0", "2") and second.reswitch_points == ()
    # Past the second multiplication the channel is zero: the padded conv needs no bias for it.
    assert Consumer("3", "conv_in", 1, True) in first.consumers


def test_squeeze_excite_gate_times_a_zeroed_channel_is_zero():
    # x * sigmoid(fc2(...)): the gate of a dropped channel is sigmoid(0) = 0.5, but the block
    # output it multiplies is dropped too, so the zero-padded conv after it sees a zero.
    class SqueezeExcite(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
            self.after = nn.Conv2d(8, 6, 3, padding=1)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            x = self.bn(self.conv(x))
            gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
            x = torch.relu(x * gate)
            return self.head(self.after(x).mean((2, 3)))

    layers = {layer.name: layer for layer in find_prunable_layers(SqueezeExcite(), torch.zeros(2, 3, 8, 8))}
    assert layers["conv"].members == ("conv", "fc2") and layers["conv"].reswitch_points == ()
    assert Consumer("after", "conv_in", 1, True) in layers["conv"].consumers


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
    with pytest.raises(ValueError, match=r"coupled must be 'group' or 'skip', got 'all'"):
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


class TwoUnknowns(nn.Module):
    """conv1 -> softmax over channels (unknown); conv2 -> a cumulative sum over channels;
    conv3 is followed without trouble; a grouped conv4 is reported as unsupported."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.softmax(self.conv1(x), dim=1)
        x = self.conv2(x)
        x = x.cumsum(1)
        x = F.relu(self.conv3(x))
        x = self.conv4(x)
        return self.head(x.mean((2, 3)))


def test_default_raise_lists_every_unsupported_layer_and_its_node():
    net = TwoUnknowns()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UnsupportedStructureError) as caught:
        find_prunable_layers(net, torch.zeros(2, 3, 8, 8))
    message = str(caught.value)
    assert "the channels of 3 layers cannot be followed" in message
    assert re.search(r"layer 'conv1' through 'softmax'.*effect on channels is not known", message)
    assert re.search(r"layer 'conv2' through method '.cumsum\(\)'.*effect on channels is not known", message)
    assert re.search(r"layer 'conv3' .*module 'conv4'.*groups=2", message)
    assert [p.name for p in caught.value.problems] == ["conv1", "conv2", "conv3"]
    assert all(p.unsupported for p in caught.value.problems)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_skip_returns_every_other_layer_and_reports_each_skipped_one():
    net = nn.Sequential(
        TwoUnknowns().conv1, nn.Softmax(dim=1), nn.Conv2d(8, 6, 3), nn.ReLU(),
        nn.Conv2d(6, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(UnsupportedStructureError, match=r"layer '0' through module '1' \(Softmax\)") as caught:
        find_prunable_layers(net, x)
    assert [p.name for p in caught.value.problems] == ["0"]
    found = find_prunable_layers(net, x, on_unsupported="skip")
    assert isinstance(found, list) and names(found) == ["2", "4"]
    assert [(s.name, s.unsupported) for s in found.skipped] == [("0", True), ("6", False)]
    assert "Softmax" in found.skipped[0].reason and "network's output" in found.skipped[1].reason
    assert [s.name for s in found.unsupported] == ["0"]


def test_skip_with_nothing_left_names_every_layer_and_reason():
    with pytest.raises(ValueError, match="has no prunable layer") as caught:
        find_prunable_layers(TwoUnknowns(), torch.zeros(2, 3, 8, 8), on_unsupported="skip")
    message = str(caught.value)
    for name, why in [
        ("conv1", "softmax"), ("conv2", "cumsum"), ("conv3", "groups=2"),
        ("conv4", "grouped convolution"), ("head", "network's output"),
    ]:
        assert re.search(rf"'{name}': [^;]*{why}", message), (name, message)


def test_skip_applies_to_named_layers_too():
    net = TwoUnknowns()
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(UnsupportedStructureError, match="'softmax'"):
        find_prunable_layers(net, x, layers=["conv1"])
    with pytest.raises(ValueError, match=r"none of the named layers can be pruned: 'conv1': .*softmax"):
        find_prunable_layers(net, x, layers=["conv1"], on_unsupported="skip")


def test_on_unsupported_is_checked():
    with pytest.raises(ValueError, match=r"on_unsupported must be 'raise' or 'skip', got 'ignore'"):
        find_prunable_layers(LeNet5Caffe(), MNIST, on_unsupported="ignore")


class Between(nn.Module):
    """conv -> BN -> ``op`` -> conv -> flatten -> linear: ``op`` sits between a layer and its consumer."""

    def __init__(self, op, *, sigmoid_like: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.op = op
        self.after = nn.Conv2d(6, 4, 1, padding=0)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.after(self.op(self.bn(self.conv(x)))), 1))


class Call(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _stochastic_depth(x):
    import torchvision

    return torchvision.ops.stochastic_depth(x, 0.2, "row", training=False)


# (operation, whether a dropped channel stays zero through it)
EVAL_IDENTITIES_AND_ACTIVATIONS = [
    (nn.Identity(), True), (nn.Dropout3d(0.1), True), (nn.FeatureAlphaDropout(0.1), True),
    (nn.SELU(), True), (nn.CELU(), True), (nn.Softsign(), True), (nn.Tanhshrink(), True),
    (nn.Softshrink(), True), (nn.Hardshrink(), True), (nn.RReLU(), True), (nn.PReLU(), True),
    (nn.Hardswish(), True), (nn.SiLU(), True), (nn.GELU(approximate="tanh"), True),
    (nn.LogSigmoid(), False),
    (Call(F.hardswish), True), (Call(F.silu), True), (Call(F.gelu), True), (Call(F.selu), True),
    (Call(F.logsigmoid), False), (Call(torch.abs), True), (Call(lambda x: -x), True),
    (Call(lambda x: x.abs().neg()), True), (Call(lambda x: x.clamp(min=0)), True),
    (Call(lambda x: torch.clamp(x, 0.5, 2.0)), False), (Call(lambda x: F.dropout3d(x, 0.1, False)), True),
    (Call(_stochastic_depth), True),
    # flatten, squeeze and unsqueeze forms that keep every channel whole
    (Call(lambda x: x.unsqueeze(2).squeeze(2)), True),
    (Call(lambda x: torch.unsqueeze(x, -1).flatten(3).view(x.size(0), 6, 8, 8)), True),
]


@pytest.mark.parametrize("op, keeps_zero", EVAL_IDENTITIES_AND_ACTIVATIONS, ids=lambda v: repr(v)[:40])
def test_eval_identities_and_element_wise_activations_are_followed(op, keeps_zero):
    (layer,) = [l for l in find_prunable_layers(Between(op), torch.zeros(2, 3, 8, 8)) if l.name == "conv"]
    assert layer.switch_at == "bn"
    assert layer.consumers == (Consumer("bn", "batchnorm"), Consumer("after", "conv_in", 1, keeps_zero))


def test_op_table_has_one_row_per_operation_and_flags_that_agree():
    from pyro_dirichlet.structure.rules import OPS

    for key, op in OPS.items():
        # only sums and concatenations never read a single tensor
        assert (op.follow is None) == (op.combines in ("sum", "concat")), key
        assert not op.commutes_with_scale or op.combines in (None, "product"), key
        assert not op.scalar_operand or op.commutes_with_scale, key


def test_per_channel_prelu_is_unsupported_and_says_why():
    with pytest.raises(UnsupportedStructureError, match=r"module 'op' \(PReLU\): it has 6 per-channel slopes"):
        find_prunable_layers(Between(nn.PReLU(6)), torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize(
    "reshape, features",
    [
        (lambda x: x.mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1), 1),
        (lambda x: x.mean((2, 3), keepdim=True).flatten(1), 1),
        (lambda x: x.view(x.size(0), -1), 16),
        (lambda x: x.reshape(x.shape[0], 1, -1), 16),
        (lambda x: torch.flatten(x, 2).unsqueeze(1).flatten(2), 16),
        (lambda x: x.flatten(2).mean(-1), 1),
    ],
)
def test_reshapes_that_keep_channels_whole_are_followed(reshape, features):
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3)
            self.fc = nn.Linear(5 * features, 7)
            self.out = nn.Linear(7, 2)

        def forward(self, x):
            return self.out(self.fc(reshape(self.conv(x))).flatten(1))

    (layer, *_) = find_prunable_layers(Head(), torch.zeros(2, 3, 6, 6))
    assert layer.name == "conv" and layer.consumers == (Consumer("fc", "linear_in", features),)


def test_a_reshape_that_splits_the_channels_is_unsupported():
    with pytest.raises(UnsupportedStructureError, match=r"reshapes \(2, 6, 8, 8\) to \(2, 2, 3, 8, 8\), splitting"):
        find_prunable_layers(Between(Call(lambda x: x.view(2, 2, 3, 8, 8).view(2, 6, 8, 8))), torch.zeros(2, 3, 8, 8))


class SqueezeExcite(nn.Module):
    """An inverted-residual body with torchvision's squeeze-and-excitation gate."""

    def __init__(self) -> None:
        import torchvision

        super().__init__()
        self.expand = nn.Conv2d(4, 12, 1)
        self.bn1 = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.se = torchvision.ops.SqueezeExcitation(12, 4)
        self.project = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = F.silu(self.bn2(self.dw(F.silu(self.bn1(self.expand(x))))))
        return self.head(self.project(self.se(x)).mean((2, 3)))


def test_squeeze_excitation_gate_is_pruned_with_the_channels_it_gates():
    layers = {layer.name: layer for layer in find_prunable_layers(SqueezeExcite(), torch.zeros(2, 4, 8, 8))}
    assert sorted(layers) == ["expand", "project", "se.fc1"]
    trunk = layers["expand"]
    assert trunk.members == ("expand", "se.fc2") and trunk.switch_points == ("bn1", "se.fc2")
    assert len(trunk.coupled_through) == 1 and "operator.mul" in trunk.coupled_through[0]
    assert [(c.name, c.kind) for c in trunk.consumers] == [
        ("bn1", "batchnorm"), ("dw", "depthwise"), ("bn2", "batchnorm"), ("se.fc1", "conv_in"),
        ("project", "conv_in"),
    ]
    # the reduce layer of the gate is prunable on its own
    assert [(c.name, c.kind) for c in layers["se.fc1"].consumers] == [("se.fc2", "conv_in")]


def test_a_gate_shared_by_all_channels_passes_them_through():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)
            self.out = nn.Conv2d(5, 2, 1)

        def forward(self, x, mask):
            return self.out(F.relu(self.conv(x)) * mask)

    (layer,) = find_prunable_layers(Masked(), (torch.zeros(2, 3, 6, 6), torch.ones(2, 1, 6, 6)))
    assert layer.consumers == (Consumer("out", "conv_in"),) and not layer.is_group


def test_a_product_across_channel_counts_is_unsupported():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 1, 1)
            self.b = nn.Conv2d(3, 5, 1)
            self.out = nn.Conv2d(5, 2, 1)

        def forward(self, x):
            return self.out(self.a(x) * self.b(x))

    with pytest.raises(UnsupportedStructureError, match=r"layer 'a'.*multiplies tensors of shapes \(2, 1, 6, 6\) and \(2, 5, 6, 6\) across channels"):
        find_prunable_layers(Mixed(), torch.zeros(2, 3, 6, 6))


@pytest.mark.parametrize(
    "to_last",
    [lambda x: x.permute(0, 2, 3, 1), lambda x: torch.permute(x, (0, 2, 3, 1)), lambda x: x.transpose(1, 3).transpose(1, 2)],
)
def test_channels_last_permutes_are_followed_into_a_linear(to_last):
    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 1)
            self.fc = nn.Linear(5, 7)
            self.out = nn.Linear(7, 2)

        def forward(self, x):
            return self.out(F.gelu(self.fc(to_last(self.conv(x)))).mean((1, 2)))

    layers = find_prunable_layers(ChannelsLast(), torch.zeros(2, 3, 4, 4))
    assert [(layer.name, layer.consumers) for layer in layers] == [
        ("conv", (Consumer("fc", "linear_in"),)), ("fc", (Consumer("out", "linear_in"),)),
    ]


def test_layer_norm_over_the_channels_pins_them_without_an_error():
    # Masking a channel before a LayerNorm over the channels still counts it in the mean and
    # variance; removing it does not: such channels are followed but left unpruned.
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    layers = find_prunable_layers(net, torch.zeros(2, 4))
    assert [layer.name for layer in layers] == ["2"]
    (pinned,) = [layer for layer in layers.skipped if layer.name == "0"]
    assert not pinned.unsupported
    assert "it reaches module '1' (LayerNorm), which normalises over them" in pinned.reason
    with pytest.raises(ValueError, match=r"layer '0' cannot be pruned: it reaches module '1' \(LayerNorm\)"):
        find_prunable_layers(net, torch.zeros(2, 4), layers=["0"])
