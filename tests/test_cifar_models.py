"""VGG-16, the CIFAR ResNets and the wide ResNets: sizes against analytic counts, tracing, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_dirichlet.models import VGG16, ResNet20, ResNet56, WideResNet, WideResNet10x1
from pyro_dirichlet.baselines import MODELS, get_model_entry
from pyro_dirichlet.models.vgg import DIRICHLET_PAPER_WIDTHS, VGG16_CONV_NAMES, VGG16_WIDTHS
from pyro_dirichlet.measure import count_flops, count_parameters
from pyro_dirichlet.io.serialization import load_pruned, save_pruned

PAPER_VGG_WIDTHS = DIRICHLET_PAPER_WIDTHS
EXAMPLE = torch.zeros(1, 3, 32, 32)


# --- independent analytic counts (2 FLOPs per multiply-accumulate, as FlopCounterMode) ---------


def vgg_counts(widths, fc, classes=10):
    params = flops = 0
    in_channels, size = 3, 32
    pools_after = {1, 3, 6, 9, 12}  # indices of conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
    for index, width in enumerate(widths):
        params += 9 * in_channels * width + 2 * width  # conv (no bias) + BatchNorm2d
        flops += 2 * 9 * in_channels * width * size * size
        in_channels = width
        if index in pools_after:
            size //= 2
    params += in_channels * fc + fc + 2 * fc + fc * classes + classes  # fc1, BatchNorm1d, fc2
    flops += 2 * in_channels * fc + 2 * fc * classes
    return params, flops


def resnet_counts(inner, blocks_per_stage, classes=10):
    params = 27 * 16 + 2 * 16
    flops = 2 * 27 * 16 * 32 * 32
    in_channels, size = 16, 32
    widths = iter(inner)
    for stage, out in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            if stage > 0 and block == 0:
                size //= 2
            width = next(widths)
            params += 9 * in_channels * width + 2 * width + 9 * width * out + 2 * out
            flops += 2 * 9 * (in_channels * width + width * out) * size * size
            in_channels = out
    params += 64 * classes + classes
    flops += 2 * 64 * classes
    return params, flops


def wrn_counts(depth, k, inner=None, classes=10):
    n = (depth - 4) // 6
    stage_widths = (16 * k, 32 * k, 64 * k)
    inner = list(inner) if inner is not None else [w for w in stage_widths for _ in range(n)]
    params = 27 * 16
    flops = 2 * 27 * 16 * 32 * 32
    in_channels, size = 16, 32
    widths = iter(inner)
    for stage, out in enumerate(stage_widths):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            size //= stride
            width = next(widths)
            params += 2 * in_channels + 9 * in_channels * width + 2 * width + 9 * width * out
            flops += 2 * 9 * (in_channels * width + width * out) * size * size
            if stride != 1 or in_channels != out:
                params += in_channels * out
                flops += 2 * in_channels * out * size * size
            in_channels = out
    params += 2 * in_channels + in_channels * classes + classes
    flops += 2 * in_channels * classes
    return params, flops


def test_vgg16_matches_the_analytic_counts_and_its_docstring():
    model = VGG16()
    params, flops = vgg_counts(VGG16_WIDTHS, 512)
    assert (count_parameters(model), count_flops(model, EXAMPLE)) == (params, flops)
    assert params == 14_987_722
    assert f"{params:,}" in VGG16.__doc__ and f"{flops:,}" in VGG16.__doc__


def test_vgg16_at_the_paper_widths_has_about_068m_parameters():
    model = VGG16(widths=PAPER_VGG_WIDTHS, fc=62)
    params, flops = vgg_counts(PAPER_VGG_WIDTHS, 62)
    assert (count_parameters(model), count_flops(model, EXAMPLE)) == (params, flops)
    assert params == 679_949
    assert f"{params:,}" in VGG16.__doc__ and f"{flops:,}" in VGG16.__doc__


@pytest.mark.parametrize(
    "cls, blocks, expected_params",
    [(ResNet56, 9, 853_018), (ResNet20, 3, 269_722)],
)
def test_cifar_resnets_match_the_analytic_counts_and_their_docstrings(cls, blocks, expected_params):
    model = cls()
    params, flops = resnet_counts([16] * blocks + [32] * blocks + [64] * blocks, blocks)
    assert (count_parameters(model), count_flops(model, EXAMPLE)) == (params, flops)
    assert params == expected_params
    assert f"{params:,}" in cls.__doc__ and f"{flops:,}" in cls.__doc__


def test_resnet_inner_widths_shrink_only_the_inner_convolutions():
    inner = [8] * 9 + [16] * 9 + [32] * 9
    model = ResNet56(inner_widths=inner)
    assert count_parameters(model) == resnet_counts(inner, 9)[0]
    assert model.layer2[0].conv1.out_channels == 16 and model.layer2[0].conv2.out_channels == 32
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    block = ResNet20().layer2[0].eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        for module in (block.conv1, block.conv2):
            module.weight.zero_()  # the residual branch then gives bn2's bias, zero at init
        out = block(x)
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = x[:, :, ::2, ::2]
    torch.testing.assert_close(out, torch.relu(expected))


def test_wrn_28_10_matches_the_analytic_counts_and_its_docstring():
    model = WideResNet()
    params, flops = wrn_counts(28, 10)
    assert (count_parameters(model), count_flops(model, EXAMPLE)) == (params, flops)
    assert params == 36_479_194
    assert f"{params:,}" in WideResNet.__doc__ and f"{flops:,}" in WideResNet.__doc__
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("depth, k", [(10, 1), (16, 2)])
def test_small_wide_resnets_match_the_analytic_counts(depth, k):
    inner = [3 * k] * ((depth - 4) // 2)
    for model, expected in (
        (WideResNet(depth=depth, widen_factor=k), wrn_counts(depth, k)),
        (WideResNet(depth=depth, widen_factor=k, inner_widths=inner), wrn_counts(depth, k, inner)),
    ):
        assert (count_parameters(model), count_flops(model, EXAMPLE)) == expected
    small = WideResNet10x1()
    assert count_parameters(small) == wrn_counts(10, 1)[0]
    assert f"{count_parameters(small):,}" in WideResNet10x1.__doc__


@pytest.mark.parametrize("bad", [{"depth": 12}, {"depth": 4}, {"dropout": 1.0}, {"inner_widths": [4]}])
def test_wide_resnet_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        WideResNet(widen_factor=1, **bad)


def test_vgg16_rejects_a_wrong_number_of_widths():
    with pytest.raises(ValueError, match="13"):
        VGG16(widths=(64,) * 12)
    with pytest.raises(TypeError, match="fc"):
        VGG16(fc=1.5)


@pytest.mark.parametrize(
    "build",
    [VGG16, ResNet20, WideResNet10x1, lambda: WideResNet(depth=16, widen_factor=2)],
)
def test_models_trace_with_fx_and_the_graph_computes_the_same(build):
    torch.manual_seed(0)
    model = build().eval()
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x))


def test_resnet56_traces_with_fx():
    graph = torch.fx.symbolic_trace(ResNet56())
    assert sum(node.op == "call_module" for node in graph.graph.nodes) == 1 + 1 + 27 * 4 + 1


def test_wrn_28_10_traces_with_fx():
    graph = torch.fx.symbolic_trace(WideResNet())
    convs = [
        node.target
        for node in graph.graph.nodes
        if node.op == "call_module" and isinstance(graph.get_submodule(node.target), nn.Conv2d)
    ]
    # The stem, 2 per block for 12 blocks, and the 1x1 shortcuts of the 3 stage openings.
    assert len(convs) == 1 + 24 + 3


@pytest.mark.parametrize(
    "model",
    [
        VGG16(widths=PAPER_VGG_WIDTHS, fc=62),
        ResNet20(inner_widths=[3, 5, 7, 9, 11, 13, 15, 17, 19]),
        WideResNet10x1(inner_widths=[4, 5, 6]),
    ],
    ids=["vgg16", "resnet20", "wrn10x1"],
)
def test_pruned_widths_save_and_load(model, tmp_path):
    model.eval()
    save_pruned(model, tmp_path / "model")
    loaded = load_pruned(tmp_path / "model").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("name", ["vgg16", "resnet56", "wrn_28_10"])
def test_registry_entries_hold_the_cifar_recipes(name):
    entry = get_model_entry(name)
    assert entry.dataset == "cifar10"
    config = entry.train
    assert (config.optimizer, config.momentum, config.weight_decay, config.lr) == ("sgd", 0.9, 5e-4, 0.1)
    assert (config.schedule, config.batch_size) == ("cosine", 128)
    assert 160 <= config.epochs <= 200
    # Building the 36.5M-parameter WRN is cheap (about a second); no forward pass here.
    modules = dict(entry.build().named_modules())
    for layer, keep in entry.default_keep.items():
        assert isinstance(modules[layer], (nn.Conv2d, nn.Linear)), layer
        width = getattr(modules[layer], "out_channels", None) or modules[layer].out_features
        assert 1 <= keep < width


def test_registry_default_keeps():
    vgg = get_model_entry("vgg16").default_keep
    assert [vgg[name] for name in VGG16_CONV_NAMES] == list(PAPER_VGG_WIDTHS) and vgg["fc1"] == 62
    resnet = get_model_entry("resnet56").default_keep
    assert len(resnet) == 27 and resnet["layer1.0.conv1"] == 8 and resnet["layer3.8.conv1"] == 32
    wrn = get_model_entry("wrn_28_10").default_keep
    assert len(wrn) == 12 and wrn["block1.0.conv1"] == 80 and wrn["block3.3.conv1"] == 320
    assert {"lenet5", "lenet300"} <= set(MODELS)
