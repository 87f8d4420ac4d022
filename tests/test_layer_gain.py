"""DirichletSwitches(layer_gain=True): one learned gain per switched layer, next to the switches."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_dirichlet.data import Split
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer.guide import load_guide
from pyro_dirichlet.infer.switches import DirichletSwitches, gain_param


def _labels_of(network, images):
    with torch.no_grad():
        return network.eval()(images).argmax(1)


def test_gains_start_at_one_and_leave_the_model_unchanged(tiny_cnn, tiny_images):
    pyro.clear_param_store()
    labels = _labels_of(tiny_cnn, tiny_images)
    plain = DirichletSwitches(tiny_cnn, tiny_images[:2], layer_gain=False)
    gained = DirichletSwitches(tiny_cnn, tiny_images[:2], layer_gain=True)
    trace = poutine.trace(plain.model).get_trace(tiny_images, labels)
    replayed = poutine.trace(poutine.replay(gained.model, trace=trace)).get_trace(tiny_images, labels)
    torch.testing.assert_close(replayed.nodes["_RETURN"]["value"], trace.nodes["_RETURN"]["value"], rtol=0, atol=0)
    params = [name for name, node in replayed.nodes.items() if node["type"] == "param"]
    assert sorted(params) == sorted(gain_param(layer.name) for layer in gained.layers)
    assert all(pyro.param(name).item() == 1.0 for name in params)
    assert not any(node["type"] == "param" for node in trace.nodes.values())  # the default model has none


def test_a_gain_multiplies_its_layers_channel_scales(tiny_cnn, tiny_images):
    pyro.clear_param_store()
    labels = _labels_of(tiny_cnn, tiny_images)
    gained = DirichletSwitches(tiny_cnn, tiny_images[:2], layer_gain=True)
    gained.create_model_params()
    layer = gained.layers[0].name
    pyro.get_param_store()[gain_param(layer)] = torch.tensor(2.5)
    trace = poutine.trace(gained.model).get_trace(tiny_images, labels)
    values = {l.name: trace.nodes[f"{l.name}.switch"]["value"] for l in gained.layers}
    values[layer] = values[layer] * 2.5
    with gained.switched(values) as network:
        expected = network(tiny_images)
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], expected)
    with pytest.raises(TypeError, match="layer_gain"):
        DirichletSwitches(tiny_cnn, tiny_images[:2], layer_gain="yes")


def test_a_fit_learns_the_gains_and_the_saved_posterior_restores_them(tiny_cnn, tiny_images):
    pyro.clear_param_store()
    images = torch.randn(256, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    data = Split(images, _labels_of(tiny_cnn, images))
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2], layer_gain=True)
    result = fit(switches, data, FitConfig(epochs=5, batch_size=32, progress=False, device="cpu"))
    gains = {layer.name: pyro.param(gain_param(layer.name)).item() for layer in switches.layers}
    assert all(value > 0 for value in gains.values())
    assert any(abs(value - 1.0) > 1e-3 for value in gains.values()), gains  # learned, not left at 1
    tree = result.posterior(num_samples=20, seed=0)
    saved = set(tree["guide_parameters"].data_vars)
    assert {gain_param(layer.name) for layer in switches.layers} <= saved
    pyro.clear_param_store()
    load_guide(tree, DirichletSwitches(tiny_cnn, tiny_images[:2], layer_gain=True))
    assert {layer.name: pyro.param(gain_param(layer.name)).item() for layer in switches.layers} == gains
    pyro.clear_param_store()


def test_channel_gains_scale_each_channel_and_fold_into_the_pruned_network(tiny_cnn, tiny_images):
    from pyro_dirichlet.posterior import layer_gains
    from pyro_dirichlet.pruning import switch_scales

    pyro.clear_param_store()
    labels = _labels_of(tiny_cnn, tiny_images)
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2], gain="channel")
    assert switches.gain == "channel" and DirichletSwitches(tiny_cnn, tiny_images[:2]).gain == "channel"  # the default
    switches.create_model_params()
    layer = switches.layers[0]
    scale = torch.linspace(0.5, 2.0, layer.channels)
    pyro.get_param_store()[gain_param(layer.name)] = scale
    trace = poutine.trace(switches.model).get_trace(tiny_images, labels)
    values = {l.name: trace.nodes[f"{l.name}.switch"]["value"] for l in switches.layers}
    values[layer.name] = values[layer.name] * scale
    with switches.switched(values) as network:
        expected = network(tiny_images)
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], expected)

    images = torch.randn(128, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    result = fit(switches, Split(images, _labels_of(tiny_cnn, images)), FitConfig(epochs=2, batch_size=32, progress=False, device="cpu"))
    gains = layer_gains(result.posterior(num_samples=20, seed=0))
    assert gains[layer.name].shape == (layer.channels,) and (gains[layer.name] > 0).all()
    means = {name: phi / phi.sum() for name, phi in result.concentrations.items()}
    folded = switch_scales(means, gains)[layer.name]
    expected_fold = (means[layer.name] * layer.channels * torch.as_tensor(gains[layer.name], dtype=means[layer.name].dtype)).float()
    torch.testing.assert_close(folded, expected_fold)
    with pytest.raises(ValueError, match="not both"):
        DirichletSwitches(tiny_cnn, tiny_images[:2], gain="channel", layer_gain=True)
    with pytest.raises(ValueError, match="gain must be one of"):
        DirichletSwitches(tiny_cnn, tiny_images[:2], gain="per-unit")
    pyro.clear_param_store()
