"""timm's networks as a user downloads them: its own layer types in the op table (BatchNormAct2d,
its Linear, Conv2dSame), channel slices and splits pinning the channels they cut, a learned
one-value bias; pruned == masked on one representative per family fixed, with calibrated
BatchNorm statistics. The plain-torch tests run without timm; the timm ones skip, saying why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.structure import find_prunable_layers
from pyro_dirichlet.surgery import fold_scales, mask_channels, prune_channels


def output(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def random_half(layers) -> dict:
    generator = torch.Generator().manual_seed(0)
    scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
    return plan_keep(scores, dict.fromkeys(scores, 0.5), blocks={layer.name: layer.block for layer in layers})


def pruned_and_masked(net: nn.Module, x: torch.Tensor, layers) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    keep = random_half(layers)
    pruned = prune_channels(net, keep, x, layers=layers)
    return output(pruned, x), output(mask_channels(net, keep, x, layers=layers), x), pruned


# --- plain torch: what timm's code does, without timm ------------------------------------------


class Halves(nn.Module):
    """A CSP stage: a conv's output split into two fixed halves along the channels."""

    def __init__(self, split: str) -> None:
        super().__init__()
        self.split = split
        self.expand = nn.Conv2d(3, 8, 1)
        self.left, self.right = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.relu(self.expand(x))
        if self.split == "split":
            a, b = y.split((4, 4), dim=1)
        elif self.split == "chunk":
            a, b = y.chunk(2, dim=1)
        else:  # GhostNet's out[:, :self.out_chs]
            a, b = y[:, :4], y[:, 4:]
        return self.head(self.left(a) + self.right(b)).mean((2, 3))


@pytest.mark.parametrize("split", ["split", "chunk", "slice"])
def test_a_fixed_split_of_the_channels_pins_them_and_the_rest_prunes_in_raise_mode(split):
    torch.manual_seed(0)
    net, x = Halves(split).eval(), torch.randn(2, 3, 6, 6)
    layers = find_prunable_layers(net, x, coupled="group")  # raise mode: nothing unsupported
    (expand,) = [s for s in layers.skipped if s.name == "expand"]
    assert not expand.unsupported and "fixed" in expand.reason
    assert [layer.name for layer in layers] == ["left"]  # left and right, coupled by the add
    got, expected, _ = pruned_and_masked(net, x, layers)
    assert relative_difference(got, expected) < 1e-5


class LearnedBias(nn.Module):
    """HGNetV2's learnable affine block: ``scale * x + bias`` with parameters of shape (1,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.scale, self.bias = nn.Parameter(torch.tensor([1.5])), nn.Parameter(torch.tensor([0.25]))
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)) * self.scale + self.bias).mean((2, 3))


def test_a_learned_one_value_bias_is_a_shift_folded_into_the_consumer():
    torch.manual_seed(0)
    net, x = LearnedBias().eval(), torch.randn(2, 3, 5, 5)
    (layer,) = find_prunable_layers(net, x)
    assert layer.name == "conv" and not layer.consumers[0].zero_preserved
    got, expected, pruned = pruned_and_masked(net, x, [layer])
    assert pruned.conv.out_channels == 3 and relative_difference(got, expected) < 1e-5


class Resampled(nn.Module):
    """GhostNetV2's attention branch: a gate computed at half resolution, upsampled back."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.short = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        gate = torch.sigmoid(self.short(nn.functional.avg_pool2d(x, 2)))
        gate = nn.functional.interpolate(gate, size=x.shape[-2:], mode=self.mode)
        return self.head(torch.relu(self.conv(x)) * gate).mean((2, 3))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_an_upsampled_gate_keeps_its_channels_and_prunes_with_the_channels_it_gates(mode):
    torch.manual_seed(0)
    net, x = Resampled(mode).eval(), torch.randn(2, 3, 6, 6)
    (layer,) = find_prunable_layers(net, x, coupled="group")
    assert set(layer.members) == {"conv", "short"}  # the gate's channel c multiplies channel c
    got, expected, pruned = pruned_and_masked(net, x, [layer])
    assert pruned.short.out_channels == pruned.conv.out_channels == 3
    assert relative_difference(got, expected) < 1e-5


# --- timm ----------------------------------------------------------------------------------------

timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm: the 'coverage' extra)")


def calibrated(name: str, size: int = 64) -> tuple[nn.Module, torch.Tensor]:
    """timm model ``name``, random weights, 10 classes, BatchNorm statistics from a few random
    batches (so that BatchNorms are not identities), in eval mode; a seeded input."""
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, size, size))
    return net.eval(), torch.randn(2, 3, size, size)


# One model per family each fix made prunable: (name, what it exercises).
FAST = [
    ("lcnet_035", "BatchNormAct2d with a Hardswish after every conv"),
    ("regnetx_002", "BatchNormAct2d, grouped convs, residual stages"),
    ("ghostnet_050", "channel slice after a concatenation"),
    ("cs3darknet_focus_s", "channel split of a CSP stage"),
    ("resnetv2_18", "pre-activation stream: its BatchNormAct2d switched again before padded convs"),
]
SLOW = [
    ("mobilenetv2_035", "BatchNormAct2d with ReLU6, inverted residuals"),
    ("efficientnet_lite0", "BatchNormAct2d, depthwise convs"),
    ("tf_efficientnetv2_b0", "Conv2dSame: TensorFlow SAME padding"),
    ("densenet121", "BatchNormAct2d after concatenations"),
    ("inception_v3", "BatchNormAct2d in ConvNormAct branches"),
    ("darknet17", "BatchNormAct2d with LeakyReLU, residual adds"),
    ("repvgg_a0", "RepVGG's identity BatchNorm branch switched again"),
    ("hgnet_tiny", "ESE gates over concatenated stages"),
    ("legacy_seresnet18", "squeeze-excite gates on the residual stream"),
    ("repvit_m1", "squeeze-excite gates times RepVGG-style branch sums"),
    ("mobileone_s1", "a block output written as y + 0"),
    ("starnet_s050", "a depthwise conv's bias switched again"),
]


@pytest.mark.parametrize("name", [n for n, _ in FAST] + [pytest.param(n, marks=pytest.mark.slow) for n, _ in SLOW])
def test_a_timm_family_prunes_in_raise_mode_and_pruned_equals_masked(name):
    net, x = calibrated(name, 96 if name == "inception_v3" else 64)  # Inception-v3 needs 75 pixels
    layers = find_prunable_layers(net, x, coupled="group")  # raises if anything is unsupported
    assert len(layers) >= 5
    got, expected, pruned = pruned_and_masked(net, x, layers)
    assert relative_difference(got, expected) < 1e-4
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in net.parameters())
    assert kept < 0.6
    if name in ("resnetv2_18", "repvgg_a0"):  # exact only because the stream's BatchNorms are switched again
        assert any(layer.reswitch_points for layer in layers)


def test_a_batchnorm_act_right_after_a_conv_takes_the_switch_and_is_sliced():
    from timm.layers import BatchNormAct2d

    net, x = calibrated("lcnet_035")
    layers = find_prunable_layers(net, x, coupled="group")
    stem = next(layer for layer in layers if layer.name == "conv_stem")
    assert stem.switch_at == "bn1" and isinstance(net.bn1, BatchNormAct2d)
    keep = random_half([stem])
    pruned = prune_channels(net, keep, x, layers=[stem])
    assert pruned.bn1.num_features == pruned.bn1.running_mean.numel() == len(keep["conv_stem"])
    assert isinstance(pruned.bn1, BatchNormAct2d) and type(pruned.bn1.act) is type(net.bn1.act)


def test_fold_scales_refuses_a_switch_after_a_fused_activation_a_scale_does_not_pass():
    net, x = calibrated("lcnet_035")  # Hardswish: hardswish(a * x) != a * hardswish(x)
    layers = find_prunable_layers(net, x, coupled="group")
    stem = next(layer for layer in layers if layer.name == "conv_stem")
    with pytest.raises(ValueError, match="fused into 'bn1'"):
        fold_scales(net, {"conv_stem": torch.full((stem.channels,), 0.5)}, x, layers=[stem])


def test_fold_scales_folds_into_a_batchnorm_act_whose_relu_a_scale_passes():
    net, x = calibrated("regnetx_002")
    layers = find_prunable_layers(net, x, coupled="group")
    stem = next(layer for layer in layers if layer.name == "stem.conv")
    assert stem.switch_at == "stem.bn"
    scales = torch.linspace(0.1, 2.0, stem.channels)
    folded = fold_scales(net, {"stem.conv": scales}, x, layers=[stem])
    hook = net.stem.bn.register_forward_hook(lambda m, i, out: out * scales.reshape(1, -1, 1, 1))
    try:
        expected = output(net, x)
    finally:
        hook.remove()
    assert relative_difference(output(folded, x), expected) < 1e-5


def test_a_squeeze_excite_gate_is_pruned_with_the_channels_it_gates():
    # SE-DarkNet: each block's conv1 is coupled through the squeeze-excite product with the
    # SE's fc2. A dropped channel's gate is sigmoid(0) = 0.5, but it multiplies the dropped
    # (zero) channel of conv1, so the zero-padded conv after the block sees a zero: the whole
    # network prunes in raise mode (it was skipped as unfoldable, as Torch-Pruning never is).
    net, x = calibrated("sedarknet21")
    layers = find_prunable_layers(net, x, coupled="group")
    groups = {layer.name: layer.members for layer in layers}
    assert groups["stages.0.blocks.0.conv1.conv"] == ("stages.0.blocks.0.conv1.conv", "stages.0.blocks.0.attn.fc2")
    assert len(layers) == 20
    got, expected, _ = pruned_and_masked(net, x, layers)
    assert relative_difference(got, expected) < 1e-4


def with_response_weights(net: nn.Module) -> nn.Module:
    """GlobalResponseNorm starts as an identity (weight and bias zero): give it weights to prune through."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if type(module).__name__ == "GlobalResponseNorm":
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return net


def test_convnext_v2_prunes_its_mlps_through_global_response_norm_exactly():
    net, x = calibrated("convnextv2_atto")
    net = with_response_weights(net)
    layers = find_prunable_layers(net, x, coupled="group")  # raises if anything is unsupported
    mlps = [layer for layer in layers if layer.name.endswith("mlp.fc1")]
    assert len(mlps) == 12 and all("response_norm" in {c.kind for c in layer.consumers} for layer in mlps)
    got, expected, pruned = pruned_and_masked(net, x, layers)
    assert relative_difference(got, expected) < 1e-5
    before, after = net.stages[0].blocks[0].mlp.grn, pruned.stages[0].blocks[0].mlp.grn
    ratio = before.weight.numel() / after.weight.numel()
    assert ratio == 2 and after.eps == pytest.approx(before.eps * ratio)


def test_global_response_norm_over_the_last_dimension_prunes_exactly():
    from timm.layers.grn import GlobalResponseNorm

    class ChannelsLastMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act, self.norm, self.fc2 = nn.Linear(8, 16), nn.GELU(), GlobalResponseNorm(16), nn.Linear(16, 8)

        def forward(self, x):  # (N, H, W, C), as ConvNeXt V2 runs its MLPs
            return self.fc2(self.norm(self.act(self.fc1(x)))).mean(dim=(1, 2))

    torch.manual_seed(0)
    net = with_response_weights(ChannelsLastMlp()).eval()
    x = torch.randn(2, 5, 5, 8)
    layers = find_prunable_layers(net, x)
    assert [layer.name for layer in layers] == ["fc1"]
    got, expected, pruned = pruned_and_masked(net, x, layers)
    assert pruned.norm.weight.shape == (8,) and relative_difference(got, expected) < 1e-5


def test_a_flops_budget_prices_global_response_norm():
    from pyro_dirichlet.measure import count_parameters
    from pyro_dirichlet.planning.allocation import budget_counts

    net, x = calibrated("convnextv2_atto")
    layers = find_prunable_layers(net, x, coupled="group")
    scores = {layer.name: torch.rand(layer.channels, generator=torch.Generator().manual_seed(0)) for layer in layers}
    counts = budget_counts(net, scores, x, budget=0.8, cost="params", layers=layers)
    pruned = prune_channels(net, plan_keep(scores, counts), x, layers=layers)
    assert 0.7 < count_parameters(pruned) / count_parameters(net) <= 0.8
