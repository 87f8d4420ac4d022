import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION, PriorModel, resolve_prior
from pyro_dirichlet.structure import find_prunable_layers


@pytest.fixture
def layers(tiny_cnn, tiny_images):
    return find_prunable_layers(tiny_cnn, tiny_images[:2])


CPU = torch.device("cpu")


@PriorModel
def shared_alpha(layers):
    """One Gamma-distributed concentration shared by every layer."""
    alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


def test_scalar_prior_is_symmetric_dirichlet_of_each_width(layers):
    priors = resolve_prior(0.5, layers)(CPU)
    assert set(priors) == {"conv1", "conv2", "fc1"}
    for layer in layers:
        assert isinstance(priors[layer.name], dist.Dirichlet)
        assert torch.equal(priors[layer.name].concentration, torch.full((layer.channels,), 0.5))


def test_mapping_prior_sets_named_layers_and_defaults_the_rest(layers):
    vector = torch.linspace(0.1, 2.0, 6)
    priors = resolve_prior({"conv1": vector, "fc1": 3}, layers)
    assert priors.fixed and priors.latent_sites == ()
    built = priors(CPU)
    assert torch.allclose(built["conv1"].concentration, vector)
    assert torch.equal(built["fc1"].concentration, torch.full((12,), 3.0))
    assert torch.equal(built["conv2"].concentration, torch.full((8,), DEFAULT_CONCENTRATION))


def test_callable_prior_returns_user_distribution(layers):
    priors = resolve_prior(lambda layer: dist.Dirichlet(torch.full((layer.channels,), 0.2)), layers)
    assert not priors.fixed and priors.latent_sites == ()
    assert torch.equal(priors(CPU)["conv2"].concentration, torch.full((8,), 0.2))


def test_prior_model_runs_once_with_one_shared_site(layers):
    priors = resolve_prior(shared_alpha, layers)
    assert [(site.name, site.discrete, site.distribution) for site in priors.latent_sites] == [("alpha", False, "Gamma")]
    trace = poutine.trace(priors).get_trace(CPU)
    alpha = trace.nodes["alpha"]["value"]
    # every layer's Dirichlet is built from the one draw of alpha
    for layer in layers:
        assert torch.equal(trace.nodes["_RETURN"]["value"][layer.name].concentration, alpha.expand(layer.channels))


def test_per_layer_callable_may_sample_its_own_sites(layers):
    def per_layer(layer):
        alpha = pyro.sample(f"{layer.name}.alpha", dist.Gamma(2.0, 2.0))
        return dist.Dirichlet(alpha.expand(layer.channels))

    priors = resolve_prior(per_layer, layers)
    assert [site.name for site in priors.latent_sites] == ["conv1.alpha", "conv2.alpha", "fc1.alpha"]


def test_checking_a_prior_creates_no_param_and_draws_from_no_stream(layers):
    def learnable(layers):
        scale = pyro.param("prior.scale", torch.tensor(0.5), constraint=dist.constraints.positive)
        return {layer.name: dist.Dirichlet(scale.expand(layer.channels)) for layer in layers}

    before = torch.get_rng_state()
    resolve_prior(PriorModel(learnable), layers)
    assert "prior.scale" not in pyro.get_param_store()
    assert torch.equal(torch.get_rng_state(), before)


def test_prior_tensors_are_built_on_the_fit_device(layers):
    # The meta device stands in for a GPU: no values, but every tensor says where it lives.
    captured = torch.ones(6)  # a CPU tensor in a closure, as a user would write it

    @PriorModel
    def model(layers):
        alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
        priors = {layer.name: dist.Dirichlet(alpha * torch.ones(layer.channels)) for layer in layers}
        priors["conv1"] = dist.Dirichlet(captured)
        return priors

    priors = resolve_prior(model, layers)
    meta = torch.device("meta")
    with pyro.validation_enabled(False):
        trace = poutine.trace(priors).get_trace(meta)
    assert trace.nodes["alpha"]["value"].device == meta  # Gamma(2.0, 2.0) from Python numbers
    built = trace.nodes["_RETURN"]["value"]
    assert {d.concentration.device for d in built.values()} == {meta}  # conv1's CPU tensor moved


def test_arithmetic_between_a_closure_tensor_and_the_fit_device_is_explained(layers):
    # Found on a GPU (H200): alpha is drawn on the fit device, the closure's tensor stays on the
    # CPU, and PyTorch refuses the product. The meta device fails the same way on any machine.
    captured = torch.ones(6)

    @PriorModel
    def mixed(layers):
        alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
        return {layer.name: dist.Dirichlet(alpha * (captured if layer.name == "conv1" else torch.ones(layer.channels))) for layer in layers}

    priors = resolve_prior(mixed, layers)  # on the CPU nothing is mixed
    with pytest.raises(ValueError, match=r"combines tensors on two devices .*torch.device\('meta'\).*\.to\(torch.get_default_device\(\)\)"):
        with pyro.validation_enabled(False):
            priors(torch.device("meta"))

    @PriorModel
    def moved(layers):
        alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
        here = torch.get_default_device()  # the fit device, inside the prior
        return {layer.name: dist.Dirichlet(alpha * (captured.to(here) if layer.name == "conv1" else torch.ones(layer.channels)))
                for layer in layers}

    with pyro.validation_enabled(False):
        built = poutine.trace(resolve_prior(moved, layers)).get_trace(torch.device("meta")).nodes["_RETURN"]["value"]
    assert {d.concentration.device.type for d in built.values()} == {"meta"}


def test_a_non_dirichlet_prior_on_another_device_is_refused(layers):
    captured = {layer.name: torch.ones(layer.channels) for layer in layers}  # CPU tensors in a closure
    other = resolve_prior(lambda layer: dist.TransformedDistribution(dist.Dirichlet(captured[layer.name]), []), layers)
    assert other(CPU)["fc1"].base_dist.concentration is captured["fc1"]
    with pytest.raises(ValueError, match="'conv1.switch' holds tensors on \\['cpu'\\] but the fit runs on meta"):
        with pyro.validation_enabled(False):
            other(torch.device("meta"))


@pytest.mark.parametrize(
    "prior, message",
    [
        (0.0, "positive"),
        (-1.0, "positive"),
        (float("nan"), "positive"),
        (float("inf"), "positive"),
        ({"conv1": torch.ones(5)}, "scalar or a vector of its 6 channels"),
        ({"conv1": torch.tensor([1.0, 1, 1, 1, 1, -1])}, "positive"),
        ({"nope": 1.0}, "unknown layer"),
        (lambda layer: dist.Dirichlet(torch.ones(3)), "'conv1.switch' must have event shape \\(6,\\)"),
        (lambda layer: dist.Normal(torch.zeros(layer.channels), 1.0).to_event(1), "'conv1.switch' must be a distribution on the simplex"),
        (PriorModel(lambda layers: {"conv1": dist.Dirichlet(torch.ones(6))}), "switched layers \\['conv1', 'conv2', 'fc1'\\], got \\['conv1'\\]"),
        (PriorModel(lambda layers: [dist.Dirichlet(torch.ones(6))]), "got list"),
        (PriorModel(lambda layers: {l.name: dist.Dirichlet(torch.ones(l.channels + 1)) for l in layers}), "'conv1.switch' must have event shape"),
        (PriorModel(lambda layers: {l.name: dist.Dirichlet(torch.full((l.channels,), float("inf"))) for l in layers}), "'conv1.switch' has a non-finite concentration"),
        (lambda layer: dist.Dirichlet(pyro.sample(f"{layer.name}.alpha", dist.Gamma(float("nan"), 1.0)).expand(layer.channels)), "'conv1.alpha' has a non-finite concentration"),
        (lambda layer: dist.Dirichlet(pyro.sample(f"{layer.name}.alpha", dist.LogNormal(1000.0, 1.0)).expand(layer.channels)), "'conv1.alpha' drew a non-finite value"),
        (PriorModel(lambda layers: {l.name: dist.Dirichlet(a.expand(l.channels)) for a in [pyro.sample("obs", dist.Gamma(2.0, 1.0))] for l in layers}), "'obs'.*rename it"),
        (lambda layer: dist.Dirichlet(pyro.sample("alpha", dist.Gamma(2.0, 1.0)).expand(layer.channels)), "samples one site name twice .*alpha.*PriorModel"),
    ],
)
def test_bad_priors_raise_value_error_naming_the_problem(layers, prior, message):
    with pytest.raises(ValueError, match=message):
        resolve_prior(prior, layers)


def test_prior_of_wrong_type_raises_type_error(layers):
    with pytest.raises(TypeError, match="prior for layer 'conv1' must be a number"):
        resolve_prior({"conv1": "big"}, layers)
    with pytest.raises(TypeError, match="'conv1.switch' must be a pyro.distributions.Distribution, got float"):
        resolve_prior(lambda layer: 0.5, layers)
    with pytest.raises(TypeError, match="PriorModel needs a function"):
        PriorModel(3)


def test_a_prior_model_may_read_layer_metadata(layers):
    # Wider layers get a sparser prior: the concentration falls with the width.
    @PriorModel
    def by_width(layers):
        return {layer.name: dist.Dirichlet(torch.full((layer.channels,), 6.0 / layer.channels)) for layer in layers}

    built = resolve_prior(by_width, layers)(CPU)
    assert {name: round(d.concentration[0].item(), 3) for name, d in built.items()} == {"conv1": 1.0, "conv2": 0.75, "fc1": 0.5}
