import pyro.distributions as dist
import pytest
import torch

from pyro_dirichlet.priors import resolve_prior
from pyro_dirichlet.structure import find_prunable_layers


@pytest.fixture
def layers(tiny_cnn, tiny_images):
    return find_prunable_layers(tiny_cnn, tiny_images[:2])


CPU = torch.device("cpu")


def test_scalar_prior_is_symmetric_dirichlet_of_each_width(layers):
    priors = resolve_prior(0.5, layers)
    assert set(priors) == {"conv1", "conv2", "fc1"}
    for layer in layers:
        prior = priors[layer.name](CPU)
        assert isinstance(prior, dist.Dirichlet)
        assert torch.equal(prior.concentration, torch.full((layer.channels,), 0.5))


def test_mapping_prior_sets_named_layers_and_defaults_the_rest(layers):
    vector = torch.linspace(0.1, 2.0, 6)
    priors = resolve_prior({"conv1": vector, "fc1": 3}, layers)
    assert torch.allclose(priors["conv1"](CPU).concentration, vector)
    assert torch.equal(priors["fc1"](CPU).concentration, torch.full((12,), 3.0))
    assert torch.equal(priors["conv2"](CPU).concentration, torch.ones(8))


def test_callable_prior_returns_user_distribution(layers):
    priors = resolve_prior(lambda layer: dist.Dirichlet(torch.full((layer.channels,), 0.2)), layers)
    assert torch.equal(priors["conv2"](CPU).concentration, torch.full((8,), 0.2))


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
        (lambda layer: dist.Dirichlet(torch.ones(3)), "event shape"),
        (lambda layer: dist.Normal(torch.zeros(layer.channels), 1.0).to_event(1), "simplex"),
    ],
)
def test_bad_priors_raise_value_error_naming_the_problem(layers, prior, message):
    with pytest.raises(ValueError, match=message):
        resolve_prior(prior, layers)


def test_prior_of_wrong_type_raises_type_error(layers):
    with pytest.raises(TypeError, match="prior"):
        resolve_prior({"conv1": "big"}, layers)
