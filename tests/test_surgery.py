from __future__ import annotations

import copy
import functools
import doctest
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pyro_dirichlet.structure.find
import pyro_dirichlet.structure.graph
import pyro_dirichlet.structure.scopes
import pyro_dirichlet.structure.layers
import pyro_dirichlet.structure.placement
import pyro_dirichlet.surgery.channels
import pyro_dirichlet.surgery.slicing
from pyro_dirichlet.models.lenet import LeNet300100, LeNet5Caffe
from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.structure import find_prunable_layers
from pyro_dirichlet.surgery import (
    fold_scales,
    mask_channels,
    prune_channels,
    slice_batchnorm,
    slice_conv2d_in,
    slice_conv2d_out,
    slice_linear_in,
)


def conv_bn_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(32, 10),
    )


def constants_net() -> nn.Sequential:
    """Dropped channels reach consumers as non-zero constants: BN after ReLU, and Sigmoid."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3, bias=False),
        nn.Sigmoid(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7, bias=False), nn.Tanh(),
        nn.Linear(7, 3),
    )


class PreActivation(nn.Module):
    """A pre-activation residual block (BN -> ReLU -> zero-padded conv, twice, plus the input):
    a dropped stream channel is BN(0) at ``bn1``, so the stream's switch multiplies there too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(5), nn.Conv2d(5, 6, 3, padding=1)
        self.bn_out, self.fc = nn.BatchNorm2d(6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return self.fc(torch.relu(self.bn_out(x)).mean((2, 3)))


def preactivation_params(k: dict[str, int]) -> int:
    a, b = k.get("stem", 6), k.get("conv1", 5)
    return (a * 27 + a) + 2 * a + (b * a * 9 + b) + 2 * b + (a * b * 9 + a) + 2 * a + (3 * a + 3)


def lenet5_params(k: dict[str, int]) -> int:
    c1, c2, f1 = k.get("conv1", 20), k.get("conv2", 50), k.get("fc1", 500)
    return (c1 * 25 + c1) + (c2 * c1 * 25 + c2) + (f1 * c2 * 16 + f1) + (10 * f1 + 10)


def lenet300100_params(k: dict[str, int]) -> int:
    f1, f2 = k.get("fc1", 300), k.get("fc2", 100)
    return (784 * f1 + f1) + (f2 * f1 + f2) + (10 * f2 + 10)


def conv_bn_params(k: dict[str, int]) -> int:
    a, b, c, d = k.get("0", 8), k.get("4", 16), k.get("8", 12), k.get("13", 32)
    return (
        (a * 27 + a + 2 * a) + (b * a * 9 + b + 2 * b) + (c * b + c + 2 * c)
        + (d * c + d + 2 * d) + (10 * d + 10)
    )


def constants_params(k: dict[str, int]) -> int:
    a, b, c = k.get("0", 6), k.get("3", 5), k.get("6", 7)
    # A bias appears on a bias-free consumer once it has to absorb a dropped constant.
    return (a * 27 + a + 2 * a) + (b * a * 9 + b * (a < 6)) + (c * b * 16 + c * (b < 5)) + (3 * c + 3)


NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], dict[str, int], Callable]] = {
    "lenet5": (LeNet5Caffe, (3, 1, 28, 28), {"conv1": 20, "conv2": 50, "fc1": 500}, lenet5_params),
    "lenet300100": (LeNet300100, (3, 1, 28, 28), {"fc1": 300, "fc2": 100}, lenet300100_params),
    "conv_bn": (conv_bn_net, (3, 3, 20, 20), {"0": 8, "4": 16, "8": 12, "13": 32}, conv_bn_params),
    "constants": (constants_net, (3, 3, 8, 8), {"0": 6, "3": 5, "6": 7}, constants_params),
    "preactivation": (PreActivation, (3, 3, 8, 8), {"stem": 6, "conv1": 5}, preactivation_params),
}


def build(name: str, *, train: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """A seeded network with randomised BatchNorm statistics, and an input batch for it."""
    factory, shape, _, _ = NETS[name]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = factory()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(generator=generator)
                module.bias.normal_(generator=generator)
    return net.train(train), torch.randn(shape, generator=generator)


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in net.state_dict().items()}


def assert_unchanged(net: nn.Module, before: dict[str, torch.Tensor], structure: str) -> None:
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert repr(net) == structure


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def eval_output(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        return net(x)


@st.composite
def keep_sets(draw, channels: dict[str, int]) -> dict[str, list[int] | torch.Tensor]:
    chosen = draw(st.lists(st.sampled_from(sorted(channels)), min_size=1, unique=True))
    keep = {}
    for name in chosen:
        count = channels[name]
        picked = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=min(count, 12), unique=True))
        if draw(st.booleans()):  # keep most channels: drop the picked ones instead
            dropped = set(picked)
            picked = [i for i in range(count) if i not in dropped] or picked
        keep[name] = torch.tensor(picked) if draw(st.booleans()) else picked
    return keep


@pytest.mark.parametrize("net_name", NETS)
@settings(max_examples=10, deadline=None, database=None)
@given(data=st.data())
def test_pruned_network_equals_masked_network(net_name, data):
    _, _, channels, count_parameters = NETS[net_name]
    keep = data.draw(keep_sets(channels), label="keep")
    net, x = build(net_name, train=data.draw(st.booleans(), label="train"))
    before, structure = snapshot(net), repr(net)

    pruned = prune_channels(net, keep, x)
    masked = mask_channels(net, keep, x)

    expected = eval_output(masked, x)
    assert relative_difference(eval_output(pruned, x), expected) <= 1e-4
    kept = {name: len(indices) for name, indices in keep.items()}
    assert sum(p.numel() for p in pruned.parameters()) == count_parameters(kept)
    assert [m.training for m in pruned.modules()] == [m.training for m in net.modules()]
    assert_unchanged(net, before, structure)


def test_preactivation_stream_is_switched_again_at_its_batchnorm():
    net, x = build("preactivation")
    stream = find_prunable_layers(net, x)[0]
    assert (stream.members, stream.reswitch_points) == (("stem", "conv2"), ("bn1",))
    # Without the second multiplication the masked stream would differ from the pruned one.
    keep = {"stem": [0, 2, 5]}
    pruned, masked = prune_channels(net, keep, x), mask_channels(net, keep, x)
    assert relative_difference(eval_output(pruned, x), eval_output(masked, x)) <= 1e-5
    assert relative_difference(eval_output(masked, x), eval_output(net, x)) > 1e-2


class DepthwiseBias(nn.Module):
    """conv -> BN -> depthwise conv with a bias -> add -> zero-padded conv (StarNet's block end),
    and a block output written as ``y + 0`` (MobileOne's missing identity branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.after, self.fc = nn.Conv2d(6, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)) + 0
        y = torch.relu(self.dw(y) + y)
        return self.fc(self.after(y).mean((2, 3)))


def test_a_depthwise_bias_on_a_dropped_channel_is_switched_again():
    torch.manual_seed(0)
    net, x = DepthwiseBias().eval(), torch.randn(3, 3, 8, 8)
    layer, after = find_prunable_layers(net, x)
    assert (layer.name, layer.switch_points, layer.reswitch_points) == ("conv", ("bn",), ("dw",))
    assert (after.name, after.reswitch_points) == ("after", ())
    keep = {"conv": [1, 2, 4]}
    pruned, masked = prune_channels(net, keep, x), mask_channels(net, keep, x)
    assert relative_difference(eval_output(pruned, x), eval_output(masked, x)) <= 1e-5
    assert relative_difference(eval_output(masked, x), eval_output(net, x)) > 1e-2
    scales = torch.linspace(0.2, 1.5, 6)
    with torch.no_grad():
        hooked = hooked_reference(net, {"conv": scales}, x)
        assert relative_difference(fold_scales(net, {"conv": scales}, x)(x), hooked(x)) <= 1e-5


def test_masking_really_changes_the_output():
    # Guards the equivalence test against a mask that does nothing.
    net, x = build("lenet5")
    keep = {"conv1": [0, 1], "fc1": list(range(10))}
    assert relative_difference(eval_output(mask_channels(net, keep, x), x), eval_output(net, x)) > 1e-2


def test_kept_channels_are_sliced_in_sorted_order():
    net, x = build("conv_bn")
    pruned = prune_channels(net, {"0": torch.tensor([5, 1, 3])}, x)
    assert torch.equal(pruned[0].weight, net[0].weight[[1, 3, 5]])
    assert torch.equal(pruned[1].running_var, net[1].running_var[[1, 3, 5]])
    assert torch.equal(pruned[4].weight, net[4].weight[:, [1, 3, 5]])
    assert (pruned[0].out_channels, pruned[1].num_features, pruned[4].in_channels) == (3, 3, 3)


def test_flatten_transition_slices_blocks_of_features():
    net, x = build("lenet5")
    pruned = prune_channels(net, {"conv2": [2, 7]}, x)
    columns = [*range(32, 48), *range(112, 128)]
    assert torch.equal(pruned.fc1.weight, net.fc1.weight[:, columns])
    assert pruned.fc1.in_features == 32


def test_dropped_constant_is_folded_into_a_new_bias():
    net, x = build("constants")
    pruned = prune_channels(net, {"0": [0, 2, 3], "3": [1, 4]}, x)
    assert pruned[3].bias is not None and pruned[6].bias is not None
    assert net[3].bias is None and net[6].bias is None
    expected = eval_output(mask_channels(net, {"0": [0, 2, 3], "3": [1, 4]}, x), x)
    assert relative_difference(eval_output(pruned, x), expected) <= 1e-5


def test_keeping_every_channel_or_nothing_gives_an_equal_copy():
    net, x = build("lenet5")
    for keep in ({}, {"conv1": range(20)}):
        copied = prune_channels(net, keep, x)
        assert copied is not net
        assert torch.equal(eval_output(copied, x), eval_output(net, x))


LENET5_BAD_KEEPS = [
    ({"conv9": [0]}, r"layer 'conv9' is not a module of LeNet5Caffe"),
    ({"fc2": [0]}, r"layer 'fc2' cannot be pruned"),
    ({"conv1": [20]}, r"keep\['conv1'\] has index 20, out of range for layer 'conv1' with 20 output channels"),
    ({"conv1": [-1]}, r"keep\['conv1'\] has index -1, out of range"),
    ({"conv1": [1, 2, 1]}, r"keep\['conv1'\] lists channels \[1\] of layer 'conv1' more than once"),
    ({"conv1": []}, r"keep\['conv1'\] is empty: layer 'conv1' must keep at least one"),
    ({"conv1": torch.tensor([], dtype=torch.long)}, r"keep\['conv1'\] is empty"),
    ({"conv1": [0.5]}, r"keep\['conv1'\] must hold integer channel indices, got 0\.5"),
    ({"conv1": [True]}, r"keep\['conv1'\] must hold integer channel indices, got True"),
    ({"conv1": torch.tensor([0.0, 1.0])}, r"keep\['conv1'\] must hold integer channel indices, got dtype torch\.float32"),
    ({"conv1": torch.tensor([True, False])}, r"keep\['conv1'\] is a boolean tensor"),
    ({"conv1": torch.tensor([[0, 1]])}, r"keep\['conv1'\] must be a 1-D tensor"),
    ({"conv1": [0], "fc1": [500]}, r"keep\['fc1'\] has index 500"),
]


@pytest.mark.parametrize("operation", [prune_channels, mask_channels])
@pytest.mark.parametrize("keep, message", LENET5_BAD_KEEPS)
def test_bad_keep_raises_naming_the_layer_and_leaves_the_model_alone(operation, keep, message):
    net, x = build("lenet5", train=True)
    before, structure = snapshot(net), repr(net)
    with pytest.raises(ValueError, match=message):
        operation(net, keep, x)
    assert_unchanged(net, before, structure)
    assert net.training


@pytest.mark.parametrize(
    "keep, message",
    [
        ([("conv1", [0])], r"keep must be a mapping"),
        ({1: [0]}, r"keep must be keyed by layer names"),
        ({"conv1": "01"}, r"keep\['conv1'\] must be a sequence of channel indices, got str"),
        ({"conv1": 3}, r"keep\['conv1'\] must be a sequence of channel indices, got int"),
    ],
)
def test_keep_of_the_wrong_type_is_a_type_error(keep, message):
    net, x = build("lenet5")
    with pytest.raises(TypeError, match=message):
        prune_channels(net, keep, x)


def test_example_input_of_wrong_shape_names_the_shape():
    net, _ = build("lenet5")
    before, structure = snapshot(net), repr(net)
    with pytest.raises(ValueError, match=r"example_inputs of shape \(2, 1, 27, 28\) cannot run through"):
        prune_channels(net, {"conv1": [0]}, torch.zeros(2, 1, 27, 28))
    assert_unchanged(net, before, structure)


def hooked_reference(net: nn.Module, scales: dict[str, torch.Tensor], x: torch.Tensor) -> nn.Module:
    reference = copy.deepcopy(net)
    modules = dict(reference.named_modules())
    for layer in find_prunable_layers(net, x, layers=list(scales)):
        shape = layer.broadcast_shape

        def hook(module, inputs, output, factors=scales[layer.name], shape=shape):
            return output * factors.view(shape(output.dim()))

        for point in layer.multiply_points:
            modules[point].register_forward_hook(hook)
    return reference


@pytest.mark.parametrize("net_name", ["lenet5", "lenet300100", "conv_bn", "preactivation"])
@pytest.mark.parametrize("train", [False, True])
def test_folded_scales_equal_a_hook_that_multiplies_channels(net_name, train):
    _, _, channels, _ = NETS[net_name]
    net, x = build(net_name)
    generator = torch.Generator().manual_seed(3)
    # Any finite values: negative and zero scales fold as well as positive ones.
    scales = {name: torch.randn(count, generator=generator) for name, count in channels.items()}
    scales[next(iter(channels))][0] = 0.0
    before, structure = snapshot(net), repr(net)

    folded = fold_scales(net, scales, x).train(train)
    reference = hooked_reference(net, scales, x).train(train)
    with torch.no_grad():
        # Same seed for both: in training mode Dropout draws the same mask.
        torch.manual_seed(1)
        got = folded(x)
        torch.manual_seed(1)
        assert relative_difference(got, reference(x)) <= 1e-5
    assert_unchanged(net, before, structure)


def test_folding_at_a_batchnorm_scales_its_affine_parameters():
    net, x = build("conv_bn")
    factors = torch.linspace(-1, 2, 8)
    folded = fold_scales(net, {"0": factors}, x)
    assert torch.equal(folded[0].weight, net[0].weight)
    assert torch.allclose(folded[1].weight, net[1].weight * factors)
    assert torch.allclose(folded[1].bias, net[1].bias * factors)


@pytest.mark.parametrize(
    "scales, message",
    [
        ({"conv1": torch.ones(19)}, r"scales\['conv1'\] must hold one scale per output channel of layer 'conv1', i\.e\. shape \(20,\)"),
        ({"conv1": torch.full((20,), float("nan"))}, r"scales\['conv1'\] holds non-finite scales"),
        ({"fc2": torch.ones(10)}, r"layer 'fc2' cannot be pruned"),
        ({"conv4": torch.ones(20)}, r"layer 'conv4' is not a module"),
    ],
)
def test_bad_scales_raise_naming_the_layer(scales, message):
    net, x = build("lenet5")
    before, structure = snapshot(net), repr(net)
    with pytest.raises(ValueError, match=message):
        fold_scales(net, scales, x)
    assert_unchanged(net, before, structure)


def test_scales_cannot_fold_into_a_batchnorm_without_affine_parameters():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    with pytest.raises(ValueError, match=r"scales\['0'\]: its switch sits on BatchNorm '1'.*affine=False"):
        fold_scales(net, {"0": torch.ones(4)}, torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("parametrized, message", [("fc2", r"through module 'fc2'"), ("fc1", r"layer 'fc1' cannot be pruned")])
def test_parametrized_weights_are_rejected(parametrized, message):
    net, x = build("lenet300100")
    nn.utils.parametrize.register_parametrization(getattr(net, parametrized), "weight", _Identity())
    with pytest.raises(ValueError, match=message + r".*parametrized.*remove_parametrizations"):
        prune_channels(net, {"fc1": [0, 1]}, x)


class _Identity(nn.Module):
    def forward(self, weight):
        return weight


def test_low_level_slicing_checks_its_arguments():
    with pytest.raises(TypeError, match="conv must be a Conv2d, got Linear"):
        slice_conv2d_out(nn.Linear(2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="conv has groups=2"):
        slice_conv2d_in(nn.Conv2d(4, 4, 3, groups=2), torch.tensor([0]))
    with pytest.raises(TypeError, match="linear must be a Linear, got Conv2d"):
        slice_linear_in(nn.Conv2d(2, 2, 1), torch.tensor([0]))


def test_slicing_keeps_requires_grad_and_batchnorm_buffers():
    conv = nn.Conv2d(2, 4, 3).requires_grad_(False)
    slice_conv2d_out(conv, torch.tensor([1, 2]))
    assert not conv.weight.requires_grad and isinstance(conv.weight, nn.Parameter)
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    slice_batchnorm(bn, torch.tensor([0, 3]))
    assert bn.weight.shape == (2,) and bn.running_mean is None
    assert "running_mean" not in bn.state_dict()


def calibrated_torchvision(name: str, size: int = 64, **options) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision classifier (random weights, 10 classes) whose BatchNorm statistics come
    from a few train-mode passes, so that eval-mode activations are not near zero."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **options)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.05)  # ViT zero-initialises its head
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # a cumulative average over the passes
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, size, size))
    return model.eval(), x


# One representative per family in the default suite (residual groups, depthwise, squeeze-and-
# excitation with stochastic depth, grouped convolutions with gates); the rest are slow.
TORCHVISION = [
    # (builder, coupled policy), the id naming what it stands for
    pytest.param("resnet18", "group", id="resnet18-residual-groups"),
    pytest.param("mobilenet_v2", "group", id="mobilenet_v2-depthwise"),
    pytest.param("efficientnet_b0", "skip", id="efficientnet_b0-squeeze-excitation-stochastic-depth"),
    pytest.param("mobilenet_v3_small", "group", id="mobilenet_v3_small-hardsigmoid-gate", marks=pytest.mark.slow),
    pytest.param("regnet_y_400mf", "skip", id="regnet_y-grouped-and-gated"),
    pytest.param("resnext50_32x4d", "group", id="resnext-grouped", marks=pytest.mark.slow),
    pytest.param("convnext_tiny", "skip", id="convnext-partial-channels-last", marks=pytest.mark.slow),
    pytest.param("vit_b_16", "skip", id="vit-attention-and-mlp", marks=pytest.mark.slow),
    pytest.param("shufflenet_v2_x0_5", "skip", id="shufflenet-partial", marks=pytest.mark.slow),
    pytest.param("densenet121", "skip", id="densenet-concat", marks=pytest.mark.slow),
]


@functools.lru_cache(maxsize=1)
def analysed_torchvision(name: str, coupled: str):
    """A calibrated torchvision model, an input and its prunable layers, kept between examples."""
    # ViT's positional embedding fixes the image size: a 32-pixel ViT-B/16 sees 4 patches
    model, x = calibrated_torchvision(name, 32, image_size=32) if name.startswith("vit") else calibrated_torchvision(name)
    return model, x, find_prunable_layers(model, x, coupled=coupled, on_unsupported="skip")


@pytest.mark.parametrize("name, coupled", TORCHVISION)
@settings(max_examples=2, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1), fraction=st.floats(0.05, 0.95))
def test_torchvision_models_prune_exactly(name, coupled, seed, fraction):
    model, x, layers = analysed_torchvision(name, coupled)
    generator = torch.Generator().manual_seed(seed)
    scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
    # every reported layer keeps a random subset (whole groups where it feeds a grouped conv)
    keep = plan_keep(scores, dict.fromkeys(scores, fraction), blocks={layer.name: layer.block for layer in layers})
    pruned = prune_channels(model, keep, x, layers=layers)
    expected = eval_output(mask_channels(model, keep, x, layers=layers), x)
    assert expected.abs().max() > 1e-6  # the check below is not comparing zeros
    assert relative_difference(eval_output(pruned, x), expected) <= 1e-4
    if fraction <= 0.5:
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_surgery_with_layers_does_not_trace_again_and_cuts_the_same(count_traces):
    net, x = build("conv_bn")
    keep = {"0": [1, 3, 5], "8": [0, 2, 4, 6], "13": list(range(0, 32, 3))}
    scales = {"0": torch.linspace(0.5, 2.0, 8), "13": torch.linspace(2.0, 0.5, 32)}
    expected = {
        "prune": prune_channels(net, keep, x),
        "mask": mask_channels(net, keep, x),
        "fold": fold_scales(net, scales, x),
    }
    assert count_traces() == 3
    layers = find_prunable_layers(net, x)
    assert count_traces() == 4
    got = {
        "prune": prune_channels(net, keep, x, layers=layers),
        "mask": mask_channels(net, keep, x, layers=layers),
        "fold": fold_scales(net, scales, x, layers=layers),
    }
    assert count_traces() == 4
    for name in ("prune", "fold"):
        assert repr(got[name]) == repr(expected[name])
        assert got[name].state_dict().keys() == expected[name].state_dict().keys()
        for key, value in expected[name].state_dict().items():
            assert torch.equal(got[name].state_dict()[key], value), (name, key)
    assert torch.equal(eval_output(got["mask"], x), eval_output(expected["mask"], x))


def test_prune_to_keep_traces_once_for_fold_and_cut(count_traces):
    from pyro_dirichlet.pruning import prune_to_keep

    net, x = build("conv_bn")
    keep = {"0": [1, 3, 5], "13": list(range(16))}
    scales = {"0": torch.linspace(0.5, 2.0, 8), "8": torch.linspace(2.0, 0.5, 12)}
    pruned = prune_to_keep(net, keep, x, scales=scales)
    assert count_traces() == 1
    reference = prune_channels(fold_scales(net, scales, x), keep, x)
    assert relative_difference(eval_output(pruned, x), eval_output(reference, x)) == 0
    layers = find_prunable_layers(net, x)
    before = count_traces()
    prune_to_keep(net, keep, x, scales=scales, layers=layers)
    assert count_traces() == before


def grouped_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=3, padding=1),
        nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(4 * 16, 2),
    )


def test_grouped_convolution_loses_whole_groups_with_the_layer_that_feeds_it():
    torch.manual_seed(0)
    net, x = grouped_net().eval(), torch.randn(3, 2, 6, 6)
    keep = {"0": [2, 3]}
    pruned = prune_channels(net, keep, x)
    assert (pruned[3].groups, pruned[3].in_channels, pruned[3].out_channels) == (1, 2, 2)
    assert torch.equal(pruned[3].weight, net[3].weight[2:4]) and pruned[6].in_channels == 2
    expected = eval_output(mask_channels(net, keep, x), x)
    assert relative_difference(eval_output(pruned, x), expected) <= 1e-5


@pytest.mark.parametrize("keep", [[0, 2], [1], [0, 1, 2]])
def test_a_keep_that_splits_a_group_is_rejected(keep):
    net, x = grouped_net(), torch.zeros(1, 2, 6, 6)
    with pytest.raises(ValueError, match=r"keep\['0'\] keeps part of channels .*grouped convolution '3'.*whole blocks of 2"):
        prune_channels(net, {"0": keep}, x)


def test_layers_that_do_not_name_the_layer_or_describe_another_model_are_rejected():
    net, x = build("conv_bn")
    layers = find_prunable_layers(net, x, layers=["0"])
    with pytest.raises(ValueError, match=r"keep names \['8'\], which the given layers do not hold"):
        prune_channels(net, {"8": [0]}, x, layers=layers)
    other, _ = build("lenet5")
    with pytest.raises(ValueError, match=r"layers do not describe this model: layer 'conv1'"):
        prune_channels(net, {"conv1": [0]}, x, layers=find_prunable_layers(other, torch.zeros(2, 1, 28, 28)))
    with pytest.raises(TypeError, match=r"layers must be a sequence of PrunableLayer"):
        prune_channels(net, {"0": [0]}, x, layers=layers[0])


@pytest.mark.parametrize(
    "module",
    [
        pyro_dirichlet.surgery.channels,
        pyro_dirichlet.surgery.slicing,
        pyro_dirichlet.structure.find,
        pyro_dirichlet.structure.layers,
        pyro_dirichlet.structure.placement,
    ],
)
def test_docstring_examples_run(module):
    globs = {"torch": torch, "nn": nn, **vars(module)}
    result = doctest.testmod(module, globs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
