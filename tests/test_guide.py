"""The variational family on its own: the Dirichlet guide's parameters, draws and state, and the guide fit builds."""

from dataclasses import replace

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



@PriorModel
def shared(layers):
    """One Gamma(2, 2) concentration for every layer: a prior with a latent site of its own."""
    alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


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


def test_state_dict_holds_each_log_concentration_and_reads_the_param_store(switches, tiny_images):
    guide = DirichletGuide(switches.layers)
    state = guide.state_dict()
    assert list(state) == [f"sites.{name}.switch.concentration_unconstrained" for name in ("conv1", "conv2", "fc1")]
    assert torch.equal(state["sites.conv1.switch.concentration_unconstrained"], torch.full((6,), DEFAULT_INIT_CONCENTRATION).log())
    guide.initialise()
    # a checkpoint or a saved posterior puts values back in the param store; the state_dict reads them from there
    pyro.get_param_store()["fc1.switch.concentration"] = torch.arange(1.0, 13.0)
    fitted = guide.state_dict()
    assert torch.equal(fitted["sites.fc1.switch.concentration_unconstrained"], torch.arange(1.0, 13.0).log())
    assert torch.equal(guide.concentrations()["fc1"], torch.arange(1.0, 13.0).log().exp())

    pyro.clear_param_store()
    other = DirichletGuide(switches.layers)
    other.initialise()
    other.load_state_dict(fitted)
    assert torch.equal(pyro.get_param_store()["fc1.switch.concentration"], torch.arange(1.0, 13.0).log().exp())
    trace = poutine.trace(other).get_trace(tiny_images)
    assert torch.equal(trace.nodes["fc1.switch"]["fn"].concentration, torch.arange(1.0, 13.0).log().exp())

    other.reset()
    assert not any(name.endswith(".concentration") for name in pyro.get_param_store())
    other.initialise()  # after a reset the guide starts again from init_concentration
    assert torch.equal(other.concentrations()["fc1"], torch.full((12,), DEFAULT_INIT_CONCENTRATION).log().exp())


def test_dotted_layer_names_keep_their_param_names_inside_an_autoguide_list(tiny_cnn, tiny_images):
    network = torch.nn.Sequential(torch.nn.Sequential(tiny_cnn))  # layers "0.0.conv1", ...

    switches = DirichletSwitches(network, tiny_images[:2], prior=shared)
    guide = make_guide(switches, hyper_guide="delta")
    guide(tiny_images)
    switch_params = sorted(name for name in pyro.get_param_store() if name.endswith(".concentration"))
    assert switch_params == ["0.0.conv1.switch.concentration", "0.0.conv2.switch.concentration", "0.0.fc1.switch.concentration"]
    assert "0._guide.sites.0.0.conv1.switch.concentration_unconstrained" in guide.state_dict()


def test_layer_names_that_cannot_each_have_a_concentration_are_refused(switches):
    layer = switches.layers[0]
    with pytest.raises(ValueError, match="layers name 'conv1' twice"):
        DirichletGuide([layer, layer])
    with pytest.raises(ValueError, match="lies below 'conv1.switch.concentration', another layer's"):
        DirichletGuide([layer, replace(layer, name="conv1.switch.concentration.inner")])


@pytest.mark.parametrize("value, error", [(0.0, ValueError), (float("inf"), ValueError), (True, TypeError), ("1", TypeError)])
def test_bad_init_concentration_names_the_argument(switches, value, error):
    with pytest.raises(error, match="init_concentration"):
        DirichletGuide(switches.layers, init_concentration=value)


def test_make_guide_adds_an_autoguide_only_for_latent_sites(tiny_cnn, tiny_images, switches):
    assert isinstance(make_guide(switches), DirichletGuide)

    hierarchical = DirichletSwitches(tiny_cnn, tiny_images[:2], prior=shared)
    guide = make_guide(hierarchical, hyper_guide="delta")
    assert isinstance(guide, AutoGuideList) and isinstance(guide[1], AutoDelta)
    trace = poutine.trace(guide).get_trace(tiny_images)
    assert {"alpha", "conv1.switch", "conv2.switch", "fc1.switch"} <= set(trace.stochastic_nodes)
    with pytest.raises(ValueError, match="hyper_guide must be one of \\['delta', 'normal'\\], got 'flow'"):
        make_guide(hierarchical, hyper_guide="flow")


def test_an_svi_step_moves_the_guide_modules_own_parameters(switches, tiny_images):
    guide = DirichletGuide(switches.layers)
    before = {key: value.clone() for key, value in guide.state_dict().items()}  # state_dict shares memory
    svi = pyro.infer.SVI(switches.model, guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.TraceMeanField_ELBO())
    svi.step(tiny_images[:4], torch.zeros(4, dtype=torch.long))
    store = dict(pyro.get_param_store().named_parameters())
    for key, value in guide.state_dict(keep_vars=True).items():
        name = key.removeprefix("sites.").removesuffix("_unconstrained")
        assert value is store[name]  # one tensor: the optimizer steps the module's parameter
        assert not torch.equal(value, before[key])


def test_the_parameters_follow_the_inputs_device(switches):
    guide = DirichletGuide(switches.layers)
    guide.initialise("meta")  # the device a GPU fit would name; meta needs no GPU
    assert {value.device.type for _, value in pyro.get_param_store().named_parameters()} == {"meta"}
    assert {value.device.type for value in guide.state_dict().values()} == {"meta"}
