"""Priors written as Pyro models: hyper-parameters with guides of their own, fitted, checkpointed, reset."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_dirichlet.data import Split
from pyro_dirichlet.infer.checkpoint import FitCheckpoint
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer.priors import PriorModel
from pyro_dirichlet.infer.switches import DirichletSwitches, switch_site

pytestmark = pytest.mark.usefixtures("one_thread")

LOC = "AutoGuideList.1.locs.alpha"


def planted(n=512):
    """A hidden layer of 16 units of which only units 0-3 reach the output, and inputs it labels itself."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        network[3].weight[:, 4:] = 0
    images = torch.randn(n, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = network(images).argmax(1)
    return network, Split(images, labels)


@PriorModel
def shared_alpha(layers):
    alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


@PriorModel
def learnable_scale(layers):
    """A hyper-prior with a learnable rate as well: pyro.param inside the prior."""
    rate = pyro.param("prior.rate", torch.tensor(2.0), constraint=dist.constraints.positive)
    alpha = pyro.sample("alpha", dist.Gamma(2.0, rate))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


def quiet(**kwargs):
    # The paper's fit (guide at 1, constant rate): the hierarchical tests measure one epoch's movement.
    return FitConfig(**{"epochs": 1, "progress": False, "device": "cpu", "init_concentration": 1.0, "lr_decay": 1.0, **kwargs})


def test_a_shared_gamma_concentration_is_inferred_with_the_default_elbo():
    network, data = planted()
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    result = fit(switches, data, quiet(epochs=5, batch_size=64))
    store = pyro.get_param_store()
    # Four of sixteen units carry the signal: the posterior is sparse, so the shared
    # concentration moves from its prior (mean 1) far below 1. Measured: exp(loc) = 0.11.
    assert torch.exp(store[LOC]).item() < 0.3
    assert store["AutoGuideList.1.scales.alpha"].item() < 0.5  # and is sure of it (prior sd in log space ~0.8)
    concentration = result.concentrations["1"]
    assert set(concentration.argsort(descending=True)[:3].tolist()) <= {0, 1, 2, 3}


def test_a_second_fit_starts_from_the_initial_hyper_guide():
    network, data = planted(128)
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    first = fit(switches, data, quiet(epochs=2, batch_size=64))
    loc = pyro.get_param_store()[LOC].item()
    second = fit(switches, data, quiet(epochs=2, batch_size=64))
    assert second.elbo == first.elbo and pyro.get_param_store()[LOC].item() == loc


def test_resume_restores_every_param_bit_for_bit(tmp_path):
    network, data = planted(128)
    switches = DirichletSwitches(network, data.images[:2], prior=learnable_scale, layer_gain=False)
    path = tmp_path / "fit.ckpt"
    fit(switches, data, quiet(epochs=2, batch_size=32), checkpoint=path)
    assert sorted(FitCheckpoint.load(path).params) == sorted(
        ["1.switch.concentration", "prior.rate", LOC, "AutoGuideList.1.scales.alpha"]
    )
    resumed = fit(switches, data, quiet(epochs=4, batch_size=32), checkpoint=path)
    after_resume = {name: value.detach().clone() for name, value in pyro.get_param_store().named_parameters()}
    pyro.clear_param_store()
    uninterrupted = fit(switches, data, quiet(epochs=4, batch_size=32))
    assert resumed.elbo == uninterrupted.elbo
    for name, value in pyro.get_param_store().named_parameters():
        assert torch.equal(after_resume[name], value), name
    assert pyro.param("prior.rate").item() != 2.0  # the learnable prior parameter was fitted


def test_delta_hyper_guide_gives_a_point_estimate():
    network, data = planted(128)
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    fit(switches, data, quiet(epochs=2, batch_size=64, hyper_guide="delta"))
    names = [name for name in pyro.get_param_store() if name.startswith("AutoGuideList")]
    assert names == ["AutoGuideList.1.alpha"]


def test_a_discrete_hyper_latent_is_refused_naming_the_site():
    @PriorModel
    def discrete(layers):
        k = pyro.sample("k", dist.Poisson(3.0))
        return {layer.name: dist.Dirichlet((k + 1).expand(layer.channels)) for layer in layers}

    network, data = planted(64)
    switches = DirichletSwitches(network, data.images[:2], prior=discrete)
    with pytest.raises(ValueError, match="prior site 'k' is discrete \\(Poisson\\).*guide="):
        fit(switches, data, quiet())
    with pytest.raises(ValueError, match="hyper_guide must be one of \\['delta', 'normal'\\], got 'laplace'"):
        quiet(hyper_guide="laplace")


def test_a_user_guide_is_fitted_and_read():
    network, data = planted(128)
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    name = switch_site("1")

    def guide(images, labels=None, **kwargs):
        rate = pyro.param("q.alpha", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("alpha", dist.Gamma(rate, 1.0))
        phi = pyro.param("q.phi", torch.full((16,), 2.0), constraint=dist.constraints.positive)
        pyro.sample(name, dist.Dirichlet(phi))

    result = fit(switches, data, quiet(epochs=2, batch_size=64), guide=guide)
    assert torch.equal(result.concentrations["1"], pyro.param("q.phi").detach())
    assert not torch.equal(result.concentrations["1"], torch.full((16,), 2.0))

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="no sample site '1.switch'"):
        fit(switches, data, quiet(epochs=1, batch_size=64), guide=lambda *args, **kwargs: pyro.sample("alpha", dist.Gamma(1.0, 1.0)))
    with pytest.raises(ValueError, match="no sample site 'alpha', a latent site of the prior"):
        fit(switches, data, quiet(epochs=1, batch_size=64), guide=lambda *args, **kwargs: pyro.sample(name, dist.Dirichlet(torch.ones(16))))
    with pytest.raises(ValueError, match="samples '1.switch' from Normal; pruning reads Dirichlet"):
        fit(switches, data, quiet(epochs=1, batch_size=64), guide=lambda *args, **kwargs: [
            pyro.sample("alpha", dist.Gamma(1.0, 1.0)), pyro.sample(name, dist.Normal(torch.zeros(16), 1.0).to_event(1))])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CPU suite checks the hand-off on the meta device)")
def test_a_hierarchical_fit_runs_on_cuda_with_priors_built_there():
    captured = torch.ones(16)  # a CPU tensor in the prior's closure, moved to the fit device inside it

    @PriorModel
    def prior(layers):
        alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
        return {layer.name: dist.Dirichlet(alpha * captured.to(torch.get_default_device())) for layer in layers}

    network, data = planted(128)
    switches = DirichletSwitches(network, data.images[:2], prior=prior)
    result = fit(switches, data, FitConfig(epochs=1, batch_size=64, progress=False, device="cuda"))
    assert result.device.startswith("cuda") and all(torch.isfinite(torch.tensor(result.elbo)))
    assert pyro.get_param_store()[LOC].device.type == "cuda"
    assert result.posterior(num_samples=50)["posterior"]["alpha"].shape == (1, 50)
