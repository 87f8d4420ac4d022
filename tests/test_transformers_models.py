"""Hugging Face transformers' models, built from tiny random configs (no download): torch.fx
cannot trace them, so the structure analysis reads the graph ``torch.export`` records
(:mod:`pyro_dirichlet.structure.exported`), with every attention block one node. It finds the
MLP hidden neurons of every block (BERT's intermediate, ViT's ``mlp.fc1``, GPT-2's ``Conv1D``
``c_fc``, LLaMA's gate and up projections together) and the heads of the attention classes in
:data:`~pyro_dirichlet.structure.hf_attention.HEAD_LAYOUTS` (whole key/value groups under
grouped-query attention); the pruned model's logits equal those of the model with the same
channels masked. A model neither torch.fx nor torch.export can follow is traced scope by scope
(:mod:`pyro_dirichlet.structure.scopes`). The plain-torch tests run without transformers; the
others skip, saying why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.structure import UnsupportedStructureError, find_prunable_layers
from pyro_dirichlet.surgery import mask_channels, prune_channels


def logits(net: nn.Module, x: torch.Tensor | tuple) -> torch.Tensor:
    with torch.no_grad():
        out = net.eval()(*x) if isinstance(x, tuple) else net.eval()(x)
    return out.logits if hasattr(out, "logits") else out


def random_half(layers) -> dict:
    generator = torch.Generator().manual_seed(0)
    scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
    return plan_keep(scores, dict.fromkeys(scores, 0.5), blocks={layer.name: layer.block for layer in layers})


# --- plain torch: what the library code does, without transformers ------------------------------


class Gate(nn.Module):
    """Control flow on a tensor's values: torch.fx cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x):
        if x.sum() > 0:
            return self.proj(x)
        return -self.proj(x)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 6)

    def forward(self, x):
        x = x + self.gate(x)
        return x + self.fc2(torch.relu(self.fc1(x)))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        if x.abs().max() > 100:  # the model's own forward cannot be traced either
            x = x / 100
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def test_a_model_torch_fx_cannot_trace_is_analysed_block_by_block():
    torch.manual_seed(0)
    net, x = Untraceable().eval(), torch.randn(2, 5, 6)
    with pytest.raises(UnsupportedStructureError, match="leave module"):
        find_prunable_layers(net, x)
    layers = find_prunable_layers(net, x, on_unsupported="skip")
    assert [layer.name for layer in layers] == ["blocks.0.fc1", "blocks.1.fc1"]
    assert [c.name for c in layers[0].consumers] == ["blocks.0.fc2"]
    unsupported = {layer.name for layer in layers.unsupported}
    assert {"blocks.0.gate.proj", "blocks.0.fc2", "head"} <= unsupported
    keep = random_half(layers)
    pruned = prune_channels(net, keep, x, layers=layers)
    assert pruned.blocks[0].fc1.out_features == pruned.blocks[0].fc2.in_features == 8
    torch.testing.assert_close(logits(pruned, x), logits(mask_channels(net, keep, x, layers=layers), x))


class SizeBranch(nn.Module):
    """Control flow on a size: torch.fx cannot trace it, torch.export (static shapes) can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 16), nn.Linear(16, 6), nn.Linear(6, 3)

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 2
        return self.head(x + self.fc2(torch.relu(self.fc1(x))))


def test_a_model_torch_fx_cannot_trace_is_analysed_from_its_exported_graph():
    from pyro_dirichlet.structure.scopes import trace_model

    torch.manual_seed(0)
    net, x = SizeBranch().eval(), torch.randn(2, 5, 6)
    graph = trace_model(net, (x,))
    assert graph.gm.meta["exported"]
    assert {n.target for n in graph.gm.graph.nodes if n.op == "call_module"} == {"fc1", "fc2", "head"}
    (layer,) = find_prunable_layers(net, x)  # raise mode: fc2 and head are left whole by design
    assert (layer.name, [c.name for c in layer.consumers]) == ("fc1", ["fc2"])
    keep = random_half([layer])
    pruned = prune_channels(net, keep, x, layers=[layer])
    assert pruned.fc2.in_features == 8
    torch.testing.assert_close(logits(pruned, x), logits(mask_channels(net, keep, x, layers=[layer]), x))


def test_a_layer_named_inside_a_scope_is_found_by_its_model_name():
    net, x = Untraceable().eval(), torch.randn(2, 5, 6)
    (layer,) = find_prunable_layers(net, x, layers=["blocks.1.fc1"])
    assert layer.switch_at == "blocks.1.fc1"


# --- transformers --------------------------------------------------------------------------------

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install transformers: the 'coverage' extra)"
)


def bert():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, num_labels=3,
    )
    return transformers.BertForSequenceClassification(config), torch.randint(0, 50, (2, 7))


def vit():
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, num_labels=3,
    )
    return transformers.ViTForImageClassification(config), torch.randn(2, 3, 32, 32)


def gpt2():
    config = transformers.GPT2Config(
        vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, use_cache=False,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config), torch.randint(0, 50, (2, 7))


# (builder, the MLP hidden layer of block 0, the layer that reads it)
MODELS = {
    "bert": (bert, "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"),
    "vit": (vit, "vit.layers.0.mlp.fc1", "vit.layers.0.mlp.fc2"),
    "gpt2": (gpt2, "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_mlp_neurons_of_a_transformer_prune_and_pruned_equals_masked(name):
    build, hidden, reader = MODELS[name]
    torch.manual_seed(0)
    net, x = build()
    net.eval()
    layers = find_prunable_layers(net, x)  # raise mode: every layer is a site, or left whole by design
    assert hidden in [layer.name for layer in layers]
    layer = next(layer for layer in layers if layer.name == hidden)
    assert [c.name for c in layer.consumers] == [reader]
    keep = random_half(layers)
    pruned = prune_channels(net, keep, x, layers=layers)
    got, expected = logits(pruned, x), logits(mask_channels(net, keep, x, layers=layers), x)
    assert got.shape == logits(net, x).shape
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in net.parameters())
    assert kept < 0.95
    # the reader's input width shrank with the hidden layer
    weight = pruned.get_submodule(reader).weight
    assert len(keep[hidden]) in weight.shape


def llama():
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config), torch.randint(1, 64, (2, 7))


def distilbert():
    config = transformers.DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=48, num_labels=3)
    return transformers.DistilBertForSequenceClassification(config), torch.randint(0, 50, (2, 7))


def swin():
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=3,
    )
    net = transformers.SwinForImageClassification(config)
    for name, parameter in net.named_parameters():  # position biases that differ from head to head
        if name.endswith("relative_position_bias_table"):
            torch.nn.init.normal_(parameter)
    return net, torch.randn(2, 3, 32, 32)


def whisper():
    from benchmarks.transformers_population import build

    net, x, _ = build("whisper", 2, 0)
    return net, x


# (builder, block 0's attention, its query, key, value and output projections)
HEADS = {
    # a cross-attention: keys and values from the encoder, viewed as num_heads heads
    "whisper": (whisper, "model.decoder.layers.0.encoder_attn", "q_proj", "k_proj", "v_proj", "out_proj"),
    "swin": (swin, "swin.encoder.layers.0.blocks.0.attention", "q_proj", "k_proj", "v_proj", "o_proj"),  # a bias per head
    "bert": (bert, "bert.encoder.layer.0.attention", "self.query", "self.key", "self.value", "output.dense"),
    "distilbert": (distilbert, "distilbert.transformer.layer.0.attention", "q_lin", "k_lin", "v_lin", "out_lin"),
    "vit": (vit, "vit.layers.0.attention", "q_proj", "k_proj", "v_proj", "o_proj"),
    "llama": (llama, "model.layers.0.self_attn", "q_proj", "k_proj", "v_proj", "o_proj"),  # 2 query heads per key/value head
}


def test_gpt2s_heads_are_the_value_third_of_its_fused_projection():
    torch.manual_seed(0)
    net, x = gpt2()
    net.eval()
    layers = find_prunable_layers(net, x)
    site = next(layer for layer in layers if layer.name == "transformer.h.0.attn.c_attn")
    assert (site.channels, site.offset, site.block) == (32, 64, 8)
    assert [(c.name, c.kind, c.offset) for c in site.consumers] == [
        ("transformer.h.0.attn.c_attn", "linear_out", 0), ("transformer.h.0.attn.c_attn", "linear_out", 32),
        ("transformer.h.0.attn.c_proj", "linear_in", 0)]
    keep = {layer.name: torch.arange(layer.block, 2 * layer.block) for layer in layers}  # head 1 of each block
    pruned = prune_channels(net, keep, x, layers=layers)
    attention, original = pruned.transformer.h[0].attn, net.transformer.h[0].attn
    assert (attention.split_size, attention.num_heads, attention.c_attn.nf, attention.c_proj.nx) == (8, 1, 24, 8)
    head = torch.cat([torch.arange(8, 16) + offset for offset in (0, 32, 64)])  # its query, key and value
    assert torch.equal(attention.c_attn.weight, original.c_attn.weight[:, head])
    got, expected = logits(pruned, x), logits(mask_channels(net, keep, x, layers=layers), x)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    assert not torch.allclose(expected, logits(net, x), atol=1e-4)
    # A switch scales the value third only: folded into c_attn's columns, it is what the hook computes.
    from pyro_dirichlet.repair.calibrate import scaled_channels
    from pyro_dirichlet.surgery import fold_scales

    scales = {site.name: torch.linspace(0.5, 2.0, site.channels)}
    with scaled_channels(net, [site], scales):
        hooked = logits(net, x)
    torch.testing.assert_close(logits(fold_scales(net, scales, x, layers=[site]), x), hooked)
    assert not torch.allclose(hooked, logits(net, x), atol=1e-4)


@pytest.mark.parametrize("name", HEADS)
def test_attention_heads_prune_whole_and_pruned_equals_masked(name):
    build, block, *paths = HEADS[name]
    q, k, v, o = (f"{block}.{path}" for path in paths)
    torch.manual_seed(0)
    net, x = build()
    net.eval()
    layers = find_prunable_layers(net, x)
    site = next(layer for layer in layers if layer.name == v)
    query, value = net.get_submodule(q), net.get_submodule(v)
    head_dim, per_value = site.block, query.out_features // value.out_features
    assert site.channels == value.out_features and site.channels // head_dim >= 2
    assert [c.name for c in site.consumers][:3] == [q, k, o]
    skipped = {layer.name: layer.reason for layer in layers.skipped}
    assert all(f"pruned in whole heads as the site '{v}'" in skipped[name] for name in (q, k, o))
    # Every site keeps its second block (head, or key/value group) only.
    keep = {layer.name: torch.arange(layer.block, 2 * layer.block) for layer in layers}
    pruned = prune_channels(net, keep, x, layers=layers)
    widths = [pruned.get_submodule(name) for name in (q, k, v, o)]
    assert [m.out_features for m in widths[:3]] == [per_value * head_dim, head_dim, head_dim]
    assert widths[3].in_features == per_value * head_dim
    rows = slice(per_value * head_dim, 2 * per_value * head_dim)  # the query heads the second key/value head serves
    assert torch.equal(widths[0].weight, query.weight[rows]) and torch.equal(widths[3].weight, net.get_submodule(o).weight[:, rows])
    if name == "swin":  # the second head's column of the relative position bias table stays
        table = "relative_position_bias.relative_position_bias_table"
        original = net.get_submodule(block).get_submodule(table.rpartition(".")[0]).relative_position_bias_table
        assert torch.equal(pruned.get_submodule(block).get_parameter(table), original[:, 1:2])
    got, expected = logits(pruned, x), logits(mask_channels(net, keep, x, layers=layers), x)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    assert not torch.allclose(expected, logits(net, x), atol=1e-4)  # the masked heads mattered


def test_gpt2s_transposed_conv1d_is_sliced_along_its_stored_axes():
    torch.manual_seed(0)
    net, x = gpt2()
    layers = [layer for layer in find_prunable_layers(net.eval(), x) if ".mlp." in layer.name]
    keep = {layer.name: torch.arange(0, layer.channels, 4) for layer in layers}
    pruned = prune_channels(net, keep, x, layers=layers)
    mlp = pruned.transformer.h[0].mlp
    assert (mlp.c_fc.nx, mlp.c_fc.nf) == (32, 32) and mlp.c_fc.weight.shape == (32, 32)
    assert (mlp.c_proj.nx, mlp.c_proj.nf) == (32, 32) and mlp.c_proj.bias.shape == (32,)


def test_a_dirichlet_fit_of_a_small_llama_runs_on_random_tokens():
    # A causal LM as Hugging Face returns it (a ModelOutput): the switch sites are the gated
    # MLPs' hidden units (gate and up together), the likelihood the next-token loss.
    import torch.nn.functional as F

    from pyro_dirichlet import DirichletSwitches, FitConfig, fit
    from pyro_dirichlet.infer.likelihoods import loss_likelihood

    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(0)
    net = transformers.LlamaForCausalLM(config).eval()
    tokens = torch.randint(1, 64, (32, 8), generator=torch.Generator().manual_seed(0))

    def next_token_loss(logits, ids):
        per_token = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        return per_token.reshape(len(ids), -1).sum(1)

    switches = DirichletSwitches(net, tokens[:2], likelihood=loss_likelihood(next_token_loss))
    assert [layer.name for layer in switches.layers] == [
        "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.gate_proj",
        "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.gate_proj"]
    assert switches.layers[1].members == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")
    assert [consumer.name for consumer in switches.layers[1].consumers] == ["model.layers.0.mlp.down_proj"]
    assert switches.layers[0].block == 8  # the value channels go in whole heads
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    result = fit(switches, [(tokens[i:i + 8], tokens[i:i + 8]) for i in range(0, 32, 8)],
                 FitConfig(epochs=2, batch_size=8, data_size=32, progress=False))
    assert result.steps == 8 and all(torch.isfinite(torch.tensor(result.elbo)))
    assert {name: c.shape for name, c in result.concentrations.items()} == {
        "model.layers.0.self_attn.v_proj": (16,), "model.layers.0.mlp.gate_proj": (48,),
        "model.layers.1.self_attn.v_proj": (16,), "model.layers.1.mlp.gate_proj": (48,)}
    # The fit moved the concentrations and left the language model as it was.
    assert any(not torch.allclose(c, c[0]) for c in result.concentrations.values())
    assert all(torch.equal(p, before[name]) for name, p in net.named_parameters())


def _pruned_population_model(name: str):
    """Population model ``name`` with its MLP layers pruned to different widths (a quarter, a half)."""
    from benchmarks.transformers_population import build

    model, x, _ = build(name, 2, 0)
    layers = find_prunable_layers(model, x, on_unsupported="skip")
    generator = torch.Generator().manual_seed(0)
    scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
    counts = {name: max(1, s.numel() // (2 if i % 2 else 4)) for i, (name, s) in enumerate(scores.items())}
    blocks = {layer.name: layer.block for layer in layers}
    return prune_channels(model, plan_keep(scores, counts, blocks=blocks), x, layers=layers).eval(), x


def _outputs(model, x):
    with torch.no_grad():
        out = model(*x) if isinstance(x, tuple) else model(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "resnet", "swin", "t5", "whisper"])
def test_a_pruned_model_saves_and_reloads_through_save_pretrained(name, tmp_path):
    import json

    from pyro_dirichlet import from_pretrained, save_pretrained

    pruned, x = _pruned_population_model(name)
    save_pretrained(pruned, tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())["pyro_dirichlet_pruned_widths"]
    assert recorded and len({tuple(widths.values()) for widths in recorded.values()}) > 1  # blocks of their own widths
    again = from_pretrained(tmp_path)
    assert type(again) is type(pruned)
    assert torch.equal(_outputs(again, x), _outputs(pruned, x))
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}


def test_from_pretrained_refuses_what_does_not_fit(tmp_path):
    import json

    from pyro_dirichlet import from_pretrained, save_pretrained

    with pytest.raises(FileNotFoundError, match="pruned.safetensors"):
        from_pretrained(tmp_path)
    pruned, _ = _pruned_population_model("llama")
    save_pretrained(pruned, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in [
        ({"architectures": ["Module"]}, "names no transformers model class"),
        ({"pyro_dirichlet_pruned_widths": {"model.norm": {"in_features": 1, "out_features": 1}}}, "narrows 'model.norm'"),
        ({"pyro_dirichlet_pruned_widths": {}}, "does not fit the model"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        save_pretrained(nn.Linear(2, 2), tmp_path)
