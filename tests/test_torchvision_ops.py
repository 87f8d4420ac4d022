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
from pyro_dirichlet.planning.plan import plan_keep
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


def test_shufflenet_prunes_in_raise_mode_with_its_shuffled_channels_pinned():
    model, x = torchvision_model("shufflenet_v2_x0_5", 32)
    layers = find_prunable_layers(model, x, coupled="group")
    assert "stage2.0.branch2.0" in [layer.name for layer in layers] and not layers.unsupported
    shuffled = {s.name for s in layers.skipped if "starts a channel shuffle" in s.reason}
    assert {"stage2.0.branch1.2", "stage2.0.branch2.5", "stage4.3.branch2.5"} <= shuffled
    scores = {layer.name: torch.rand(layer.channels, generator=torch.Generator().manual_seed(2)) for layer in layers}
    keep = plan_keep(scores, dict.fromkeys(scores, 0.5))
    pruned = prune_channels(model, keep, x, layers=layers)
    assert relative_difference(output(pruned, x), output(mask_channels(model, keep, x, layers=layers), x)) <= 1e-4


def test_a_reshape_that_splits_channels_but_is_no_shuffle_stays_unsupported():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):  # groups of channels reversed: no shuffle
            y = self.conv(x)
            return self.out(y.view(y.shape[0], 2, 2, 4, 4).flip(1).reshape(y.shape[0], 4, 4, 4))

    with pytest.raises(UnsupportedStructureError, match=r"layer 'conv'.*splitting or mixing the channel dimension"):
        find_prunable_layers(Split(), torch.zeros(1, 3, 4, 4))


class TwoUnknown(nn.Module):
    """Two convolutions whose channels meet an operation the table does not know (cumsum)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.c = nn.Conv2d(6, 5, 1)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        x = self.b(torch.cumsum(self.a(x), dim=1))
        x = F.relu(self.c(torch.cumsum(self.bn(x), dim=1)))
        return self.out(x.mean((2, 3)))


def fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_refused_and_partial_analyses_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model, x = TwoUnknown(), torch.randn(2, 3, 8, 8)
    model.train()  # a forward in train mode would move the BatchNorm statistics
    before = fingerprint(model)
    with pytest.raises(UnsupportedStructureError) as error:
        DirichletSwitches(model, x)
    assert [problem.name for problem in error.value.problems] == ["a", "b"]
    assert "the channels of 2 layers cannot be followed" in str(error.value)
    assert "layer 'a'" in str(error.value) and "layer 'b'" in str(error.value)
    assert fingerprint(model) == before
    switches = DirichletSwitches(model, x, on_unsupported="skip")
    assert [layer.name for layer in switches.layers] == ["c"]
    assert [layer.name for layer in switches.layers.unsupported] == ["a", "b"]
    assert fingerprint(model) == before
