"""The op-table rows that real torchvision builders need: per-channel layer scales (ConvNeXt),
LayerNorm over the channels and class-token concatenations (ViT, Swin), which pin channels
instead of refusing the model; and a refused or partial analysis leaves the model untouched."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet import DirichletSwitches, UnsupportedStructureError
from pyro_dirichlet.plan import plan_keep
from pyro_dirichlet.structure import Consumer, find_prunable_layers
from pyro_dirichlet.surgery import mask_channels, prune_channels


def output(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


class LayerScaled(nn.Module):
    """A conv whose channels a learned per-channel factor scales (ConvNeXt's layer scale)."""

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        shape = (6,) if channels_last else (6, 1, 1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 2.0, 6).reshape(shape))
        self.out = nn.Linear(6, 2) if channels_last else nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if self.channels_last:
            return self.out(self.gamma * y.permute(0, 2, 3, 1)).mean((1, 2))
        return self.out(self.gamma * y).mean((2, 3))


@pytest.mark.parametrize("channels_last", [False, True], ids=["gamma-C11", "gamma-C-channels-last"])
def test_a_layer_scale_is_sliced_with_the_channels_it_scales(channels_last):
    torch.manual_seed(0)
    net, x = LayerScaled(channels_last).eval(), torch.randn(2, 3, 5, 5)
    (layer,) = find_prunable_layers(net, x)
    kind = "linear_in" if channels_last else "conv_in"
    assert layer.consumers == (Consumer("gamma", "scale", dim=0), Consumer("out", kind))
    keep = {"conv": [0, 2, 5]}
    pruned = prune_channels(net, keep, x)
    assert pruned.gamma.shape == ((3,) if channels_last else (3, 1, 1))
    assert torch.equal(pruned.gamma.flatten(), net.gamma.flatten()[[0, 2, 5]])
    assert isinstance(pruned.gamma, nn.Parameter) and net.gamma.shape[0] == 6
    assert relative_difference(output(pruned, x), output(mask_channels(net, keep, x), x)) < 1e-6


def test_a_parameter_that_is_not_one_factor_per_channel_is_refused():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)
            self.gamma = nn.Parameter(torch.ones(6, 4, 1))

        def forward(self, x):
            return self.out(self.gamma * self.conv(x))

    with pytest.raises(UnsupportedStructureError, match=r"layer 'conv'.*parameter 'gamma' of shape \(6, 4, 1\), which is not one factor per channel"):
        find_prunable_layers(Mixed(), torch.zeros(1, 3, 4, 4))


def torchvision_model(name: str, size: int, **options) -> tuple[nn.Module, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **options).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.05)  # ViT zero-initialises its head
    return model, torch.randn(2, 3, size, size)


# Each builder needs one of the rows: ConvNeXt a layer scale, F.layer_norm (its LayerNorm2d)
# and a LayerNorm over channels-last tokens; ViT a class-token concatenation along the token
# dimension; Swin LayerNorms and a patch merging reached only by pinned residual streams.
@pytest.mark.parametrize(
    "name, size, options, mlp",
    [
        ("convnext_tiny", 32, {}, "features.1.0.block.3"),
        ("vit_b_16", 32, {"image_size": 32}, "encoder.layers.encoder_layer_0.mlp.0"),
        ("swin_t", 32, {}, "features.1.0.mlp.0"),
    ],
)
def test_transformer_builders_prune_their_mlps_in_raise_mode(name, size, options, mlp):
    model, x = torchvision_model(name, size, **options)
    layers = find_prunable_layers(model, x, coupled="group")  # raise mode: nothing unsupported
    assert mlp in [layer.name for layer in layers] and not layers.unsupported
    pinned = [
        skipped for skipped in layers.skipped
        if "normalises over them" in skipped.reason or "tying their channels together" in skipped.reason
    ]
    assert pinned and not any(skipped.unsupported for skipped in pinned)
    scores = {layer.name: torch.rand(layer.channels, generator=torch.Generator().manual_seed(1)) for layer in layers}
    keep = plan_keep(scores, dict.fromkeys(scores, 0.5))
    pruned = prune_channels(model, keep, x, layers=layers)
    assert relative_difference(output(pruned, x), output(mask_channels(model, keep, x, layers=layers), x)) <= 1e-4
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    assert kept < 0.75  # the MLPs hold most of the parameters


def fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_refused_and_partial_analyses_leave_the_model_as_it_was():
    # ShuffleNetV2's channel shuffle stops 19 layers: raise mode lists all of them.
    model, x = torchvision_model("shufflenet_v2_x0_5", 32)
    before = fingerprint(model)
    with pytest.raises(UnsupportedStructureError) as error:
        DirichletSwitches(model, x)
    assert len(error.value.problems) == 19
    assert all(f"'{problem.name}'" in str(error.value) for problem in error.value.problems)
    assert fingerprint(model) == before
    switches = DirichletSwitches(model, x, on_unsupported="skip")
    assert len(switches.layers.unsupported) == 19 and len(switches.layers) == 18
    assert fingerprint(model) == before
