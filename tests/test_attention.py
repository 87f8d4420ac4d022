"""Attention value channels as switch sites: analysis, surgery, masking, folding and the fit's switch."""

from __future__ import annotations

import copy
import doctest
import io

import pytest
import torch
from torch import nn

import pyro_dirichlet.structure.attention
import pyro_dirichlet.surgery.attention
from pyro_dirichlet import DirichletSwitches
from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.structure import UnsupportedStructureError, find_prunable_layers
from pyro_dirichlet.surgery import (
    PrunedMultiheadAttention,
    fold_scales,
    mask_channels,
    prune_channels,
    slice_attention,
)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max().detach() / b.abs().max().detach())


def output(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


class Block(nn.Module):
    """A pre-norm self-attention block, called as torchvision's EncoderBlock calls it."""

    def __init__(self, embed: int = 16, heads: int = 4, batch_first: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed)
        self.attention = nn.MultiheadAttention(embed, heads, batch_first=batch_first, bias=bias)
        self.head = nn.Linear(embed, 3)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        y, _ = self.attention(y, y, y, need_weights=False)
        x = x + y
        return self.head(x.mean(dim=1 if self.batch_first else 0))


class MaskedBlock(Block):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).triu(1))
        self.hidden = nn.Linear(16, 16)  # a layer that stays prunable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        y, _ = self.attention(y, y, y, attn_mask=self.mask, need_weights=False)
        return self.head(torch.relu(self.hidden((x + y).mean(dim=1))))


def small_vit(layers: int = 2) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision VisionTransformer small enough for the default suite."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=16, num_layers=layers, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    ).eval()
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.05)  # ViT zero-initialises its head
    return model, torch.randn(3, 3, 32, 32)


def fingerprint(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("module", [pyro_dirichlet.structure.attention, pyro_dirichlet.surgery.attention])
def test_docstring_examples(module):
    assert doctest.testmod(module, extraglobs={"torch": torch, "nn": nn}).failed == 0


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_weights, average", [(False, True), (True, True), (True, False)])
def test_the_replacement_computes_what_multihead_attention_computes_at_full_width(batch_first, bias, need_weights, average):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first, bias=bias).eval()
    query, key = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    if not batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    expected = attention(query, key, key, need_weights=need_weights, average_attn_weights=average)
    for replacement in (PrunedMultiheadAttention.sharing(attention), slice_attention(attention)):
        got = replacement.eval()(query, key, key, need_weights=need_weights, average_attn_weights=average)
        assert relative_difference(got[0], expected[0]) <= 1e-6
        if need_weights:
            assert torch.allclose(got[1], expected[1], atol=1e-6)
        else:
            assert got[1] is None
    unbatched = torch.randn(5, 16)
    got, expected = slice_attention(attention).eval()(unbatched, unbatched, unbatched), attention(unbatched, unbatched, unbatched)
    assert relative_difference(got[0], expected[0]) <= 1e-6 and torch.allclose(got[1], expected[1], atol=1e-6)


def test_sliced_queries_and_keys_equal_attention_with_the_dropped_queries_zeroed():
    torch.manual_seed(5)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    keep = torch.tensor([1, 2, 3, 6, 12, 14])  # head 2 keeps none: its weights are uniform
    pruned = slice_attention(attention, query_key=keep)
    masked = copy.deepcopy(attention)
    with torch.no_grad():
        dropped = torch.ones(16, dtype=torch.bool)
        dropped[keep] = False
        masked.in_proj_weight[:16][dropped] = 0  # the queries alone: keys meet zeros
        masked.in_proj_bias[:16][dropped] = 0
    x = torch.randn(2, 6, 16)
    assert pruned.query_widths == (3, 1, 0, 2) and pruned.in_proj_weight.shape == (2 * 6 + 16, 16)
    for need_weights in (False, True):
        got, expected = pruned(x, x, x, need_weights=need_weights), masked(x, x, x, need_weights=need_weights)
        assert relative_difference(got[0], expected[0]) <= 1e-6
    assert torch.allclose(got[1], expected[1], atol=1e-6)


def test_sliced_attention_equals_attention_with_the_dropped_values_zeroed():
    torch.manual_seed(1)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    keep = torch.tensor([0, 1, 2, 5, 9, 10, 11])  # head 3 keeps none: it contributes nothing
    pruned = slice_attention(attention, values=keep)
    masked = copy.deepcopy(attention)
    with torch.no_grad():
        dropped = torch.ones(16, dtype=torch.bool)
        dropped[keep] = False
        masked.in_proj_weight[32:][dropped] = 0
        masked.in_proj_bias[32:][dropped] = 0
    x = torch.randn(2, 6, 16)
    assert pruned.value_widths == (3, 1, 3, 0) and pruned.out_proj.in_features == 7
    assert relative_difference(pruned(x, x, x)[0], masked(x, x, x)[0]) <= 1e-6


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_hand_built_attention_block_prunes_exactly(batch_first, seed):
    torch.manual_seed(seed)
    model = Block(batch_first=batch_first).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    before = fingerprint(model)
    layers = find_prunable_layers(model, x)
    assert [(layer.name, layer.kind, layer.channels) for layer in layers] == [
        ("attention", "attention", 16), ("attention.query_key", "query_key", 16)
    ]
    generator = torch.Generator().manual_seed(seed)
    keep = {
        "attention": torch.randperm(16, generator=generator)[: 1 + seed * 5],
        "attention.query_key": torch.randperm(16, generator=generator)[: 12 - seed * 5],
    }
    for chosen in ({"attention": keep["attention"]}, {"attention.query_key": keep["attention.query_key"]}, keep):
        pruned = prune_channels(model, chosen, x)
        assert relative_difference(output(pruned, x), output(mask_channels(model, chosen, x), x)) <= 1e-4
    assert isinstance(pruned.attention, PrunedMultiheadAttention)
    assert sum(pruned.attention.value_widths) == len(keep["attention"])
    assert sum(pruned.attention.query_widths) == len(keep["attention.query_key"])
    assert relative_difference(output(pruned, x), output(mask_channels(model, keep, x), x)) <= 1e-4
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert type(model.attention) is nn.MultiheadAttention


def test_a_bad_keep_set_for_an_attention_is_refused_with_its_name():
    model, x = Block().eval(), torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"keep\['attention'\] has index 16, out of range"):
        prune_channels(model, {"attention": [0, 16]}, x)
    with pytest.raises(ValueError, match=r"keep\['attention'\] is empty"):
        prune_channels(model, {"attention": []}, x)
    with pytest.raises(ValueError, match=r"keep\['attention.query_key'\] lists channels \[3\]"):
        prune_channels(model, {"attention.query_key": [3, 3]}, x)


def test_attention_called_with_a_mask_is_reported_not_raised_and_refused_by_name():
    model, x = MaskedBlock().eval(), torch.randn(2, 5, 16)
    found = find_prunable_layers(model, x, on_unsupported="raise")
    assert [layer.name for layer in found] == ["hidden"]
    skipped = [layer for layer in found.skipped if layer.name.startswith("attention")]
    assert [layer.name for layer in skipped] == ["attention", "attention.query_key"]
    assert all(layer.unsupported and "attn_mask" in layer.reason for layer in skipped)
    with pytest.raises(UnsupportedStructureError, match="attn_mask"):
        find_prunable_layers(model, x, layers=["attention"])


def test_the_switch_scales_the_values_as_folding_the_scales_does():
    torch.manual_seed(2)
    model, x = Block().eval(), torch.randn(2, 5, 16)
    expected = output(model, x)
    switches = DirichletSwitches(model, x)
    sites = ["attention", "attention.query_key"]
    neutral = dict.fromkeys(sites, torch.full((16,), 1 / 16))
    with switches.switched(neutral) as network:
        assert relative_difference(network(x), expected) <= 1e-5
    for chosen in ([sites[0]], [sites[1]], sites):
        values = {site: torch.distributions.Dirichlet(torch.ones(16)).sample() for site in chosen}
        with switches.switched(values) as network:
            got = network(x)
        folded = fold_scales(model, {site: value * 16 for site, value in values.items()}, x)
        assert relative_difference(got, output(folded, x)) <= 1e-5
        assert relative_difference(got, expected) > 1e-3  # the switch reached the channels
    assert "forward" not in vars(model.attention)  # the module is itself again after the block


def test_the_switch_gives_each_particle_its_own_values():
    torch.manual_seed(3)
    model, x = Block().eval(), torch.randn(2, 5, 16)
    switches = DirichletSwitches(model, x)
    rows = {site: torch.distributions.Dirichlet(torch.ones(16)).sample((3,)) for site in ("attention", "attention.query_key")}
    with switches.switched(rows) as network:
        stacked = network(x.repeat(3, 1, 1))
    for particle in range(3):
        with switches.switched({site: row[particle] for site, row in rows.items()}) as network:
            assert relative_difference(stacked[2 * particle: 2 * particle + 2], network(x)) <= 1e-5


def test_a_small_vit_prunes_attention_and_mlps_exactly_and_round_trips_its_state_dict():
    model, x = small_vit()
    layers = find_prunable_layers(model, x, coupled="group")  # raise mode
    kinds = {layer.name: layer.kind for layer in layers}
    assert kinds["encoder.layers.encoder_layer_0.self_attention"] == "attention"
    assert kinds["encoder.layers.encoder_layer_0.self_attention.query_key"] == "query_key"
    assert kinds["encoder.layers.encoder_layer_1.mlp.0"] == "linear"
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
        keep = plan_keep(scores, dict.fromkeys(scores, 0.25 + 0.25 * seed))
        pruned = prune_channels(model, keep, x, layers=layers)
        expected = output(mask_channels(model, keep, x, layers=layers), x)
        assert relative_difference(output(pruned, x), expected) <= 1e-4
    # the last one again from its state dict, into the same structure
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = small_vit()
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.zero_()
    rebuilt = prune_channels(fresh, keep, x, layers=layers)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert torch.equal(output(rebuilt, x), output(pruned, x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_small_vit_on_cuda_prunes_there_and_equals_its_mask():
    model, x = small_vit()
    model, x = model.cuda(), x.cuda()
    layers = find_prunable_layers(model, x, coupled="group")
    generator = torch.Generator().manual_seed(0)
    scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
    keep = plan_keep(scores, dict.fromkeys(scores, 0.5))
    pruned = prune_channels(model, keep, x, layers=layers)
    assert {parameter.device.type for parameter in pruned.parameters()} == {"cuda"}
    assert any(isinstance(module, PrunedMultiheadAttention) for module in pruned.modules())
    expected = output(mask_channels(model, keep, x, layers=layers), x)
    # cuDNN and cuBLAS may sum in TF32 on this device: a looser bound than the CPU's 1e-4.
    assert relative_difference(output(pruned, x), expected) <= 1e-3


def test_a_small_vit_switched_at_the_prior_mean_is_the_network():
    model, x = small_vit()
    switches = DirichletSwitches(model, x, coupled="group")
    assert any(layer.kind == "attention" for layer in switches.layers)
    neutral = {layer.name: torch.full((layer.channels,), 1 / layer.channels) for layer in switches.layers}
    with switches.switched(neutral) as network:
        assert relative_difference(output(network, x), output(model, x)) <= 1e-5


@pytest.mark.slow
def test_vit_b_16_loses_at_least_45_percent_of_its_parameters_at_half_width():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(image_size=32, num_classes=10).eval()
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.05)
    x = torch.randn(2, 3, 32, 32)
    layers = find_prunable_layers(model, x, coupled="group")
    generator = torch.Generator().manual_seed(0)
    scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
    keep = plan_keep(scores, dict.fromkeys(scores, 0.5))
    pruned = prune_channels(model, keep, x, layers=layers)
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    assert kept <= 0.55  # values alone: 0.587; with queries and keys: about half
    assert relative_difference(output(pruned, x), output(mask_channels(model, keep, x, layers=layers), x)) <= 1e-4


def test_the_cost_model_prices_attention_value_channels_exactly():
    from pyro_dirichlet.planning.allocation import CostModel
    from pyro_dirichlet.measure import count_flops, count_parameters

    for model, x in (small_vit(), (Block(batch_first=False).eval(), torch.randn(5, 2, 16))):
        layers = find_prunable_layers(model, x, coupled="group")
        generator = torch.Generator().manual_seed(0)
        scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
        keep = plan_keep(scores, dict.fromkeys(scores, 0.3))
        pruned = prune_channels(model, keep, x, layers=layers)
        counts = {name: len(kept) for name, kept in keep.items()}
        assert CostModel(model, layers, x, "params")(counts) == count_parameters(pruned)
        assert CostModel(model, layers, x, "flops")(counts) == count_flops(pruned, x)
        assert count_flops(pruned, x) < count_flops(model, x)  # attention's projections are counted


def test_criteria_and_calibration_scales_reach_the_values():
    from pyro_dirichlet.repair.calibrate import scaled_channels
    from pyro_dirichlet.criteria import get_criterion

    torch.manual_seed(4)
    model, x = Block().eval(), torch.randn(4, 5, 16)
    layers = find_prunable_layers(model, x)
    l1 = get_criterion("l1-norm")(model, layers)
    weight = model.attention.in_proj_weight.detach().abs().double()
    assert torch.allclose(l1["attention"], weight[32:].sum(1))
    assert torch.allclose(l1["attention.query_key"], weight[:16].sum(1) + weight[16:32].sum(1))
    taylor = get_criterion("taylor", batches=1, batch_size=4)(model, layers, [(x, torch.tensor([0, 1, 2, 0]))])
    for site in ("attention", "attention.query_key"):
        assert taylor[site].shape == (16,) and bool(taylor[site].gt(0).any())
    assert "forward" not in vars(model.attention)
    scales = {"attention": torch.rand(16), "attention.query_key": torch.rand(16)}
    with scaled_channels(model, layers, scales):
        got = output(model, x)
    assert relative_difference(got, output(fold_scales(model, scales, x), x)) <= 1e-5


@pytest.mark.parametrize("vectorize", [False, True])
def test_a_fit_learns_the_attention_switches(vectorize):
    from pyro_dirichlet.infer.fit import FitConfig, fit

    torch.manual_seed(6)
    model, x = Block().eval(), torch.randn(8, 5, 16)
    labels = output(model, x).argmax(-1)
    switches = DirichletSwitches(model, x[:2])
    config = FitConfig(
        epochs=2, batch_size=8, lr=0.1, num_particles=2, vectorize_particles=vectorize, data_size=8,
        seed=0, device="cpu", progress=False,
    )
    result = fit(switches, [(x, labels)], config)
    assert all(torch.isfinite(torch.as_tensor(value)) for value in result.elbo)
    for site in ("attention", "attention.query_key"):
        concentration = result.concentrations[site]
        assert concentration.shape == (16,) and not torch.allclose(concentration, concentration[0].expand(16))
    assert "forward" not in vars(model.attention)
