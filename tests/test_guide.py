"""The variational family on its own: the Dirichlet guide's parameters, draws and state, and the guide fit builds."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuideList

from pyro_dirichlet.infer.guide import DEFAULT_INIT_CONCENTRATION, DirichletGuide, concentration_param, make_guide
from pyro_dirichlet.infer.priors import PriorModel
from pyro_dirichlet.infer.switches import DirichletSwitches


@pytest.fixture
def switches(tiny_cnn, tiny_images):
    return DirichletSwitches(tiny_cnn, tiny_images[:2])


def test_guide_declares_one_positive_concentration_per_layer_stored_as_its_log(switches):
    guide = DirichletGuide(switches.layers, init_concentration=2.5)
    guide.initialise()
    store = pyro.get_param_store()
    assert sorted(store) == ["conv1.switch.concentration", "conv2.switch.concentration", "fc1.switch.concentration"]
    for layer in switches.layers:
        assert torch.equal(store[concentration_param(layer.name)], torch.full((layer.channels,), 2.5))
        # Adam steps on log(phi): relative changes of each concentration
        unconstrained = dict(store.named_parameters())[concentration_param(layer.name)]
        torch.testing.assert_close(unconstrained, torch.full((layer.channels,), 2.5).log())


def test_guide_samples_each_switch_from_its_dirichlet(switches, tiny_images):
    guide = DirichletGuide(switches.layers)
    guide.initialise()
    pyro.get_param_store()["fc1.switch.concentration"] = torch.arange(1.0, 13.0)
    trace = poutine.trace(guide).get_trace(tiny_images)
    site = trace.nodes["fc1.switch"]
    assert isinstance(site["fn"], dist.Dirichlet)
    torch.testing.assert_close(site["fn"].concentration, torch.arange(1.0, 13.0))  # exp(log phi): equal to rounding
    values = trace.nodes["_RETURN"]["value"]
    assert sorted(values) == ["conv1.switch", "conv2.switch", "fc1.switch"]  # site names, as autoguides return
    assert torch.allclose(values["conv2.switch"].sum(), torch.tensor(1.0)) and (values["conv2.switch"] > 0).all()


def test_state_round_trip_reset_and_missing_state(switches):
    guide = DirichletGuide(switches.layers)
    with pytest.raises(RuntimeError, match="no concentration for layers \\['conv1', 'conv2', 'fc1'\\]: run fit"):
        guide.state()
    guide.initialise()
    state = {name: value * 3 for name, value in guide.state().items()}
    guide.load_state(state)
    # stored as log phi: exp(log(30)) need not give 30 back bit for bit
    assert all(torch.allclose(guide.concentrations()[name], state[name], rtol=1e-6, atol=0) for name in state)
    guide.reset()
    assert not any(name.endswith(".concentration") for name in pyro.get_param_store())
    guide.initialise()  # after a reset the guide starts again from init_concentration
    assert torch.allclose(guide.concentrations()["conv1"], torch.full((6,), DEFAULT_INIT_CONCENTRATION), rtol=1e-6, atol=0)


@pytest.mark.parametrize("value, error", [(0.0, ValueError), (float("inf"), ValueError), (True, TypeError), ("1", TypeError)])
def test_bad_init_concentration_names_the_argument(switches, value, error):
    with pytest.raises(error, match="init_concentration"):
        DirichletGuide(switches.layers, init_concentration=value)


def test_make_guide_adds_an_autoguide_only_for_latent_sites(tiny_cnn, tiny_images, switches):
    assert isinstance(make_guide(switches), DirichletGuide)

    @PriorModel
    def shared(layers):
        alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
        return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}

    hierarchical = DirichletSwitches(tiny_cnn, tiny_images[:2], prior=shared)
    guide = make_guide(hierarchical, hyper_guide="delta")
    assert isinstance(guide, AutoGuideList) and isinstance(guide[1], AutoDelta)
    trace = poutine.trace(guide).get_trace(tiny_images)
    assert {"alpha", "conv1.switch", "conv2.switch", "fc1.switch"} <= set(trace.stochastic_nodes)
    with pytest.raises(ValueError, match="hyper_guide must be one of \\['delta', 'normal'\\], got 'flow'"):
        make_guide(hierarchical, hyper_guide="flow")
