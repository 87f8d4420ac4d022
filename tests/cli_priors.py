"""Prior models a test names on the command line (``--prior-model cli_priors:NAME``): one good, the others each wrong in one way."""

import pyro
import pyro.distributions as dist
import torch

from pyro_dirichlet.infer.priors import PriorModel


def shared_alpha(layers):
    """A plain function: one Gamma(2, 2) concentration shared by every layer."""
    alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


@PriorModel
def wrong_layers(layers):
    return {"conv1": dist.Dirichlet(torch.ones(20))}


@PriorModel
def wrong_shape(layers):
    return {layer.name: dist.Dirichlet(torch.ones(layer.channels + 1)) for layer in layers}


@PriorModel
def discrete(layers):
    k = pyro.sample("k", dist.Poisson(3.0))
    return {layer.name: dist.Dirichlet((k + 1).expand(layer.channels)) for layer in layers}


@PriorModel
def non_finite(layers):
    alpha = pyro.sample("alpha", dist.Gamma(float("inf"), 2.0))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


NOT_CALLABLE = 0.5


def raises(layers):
    """Fails at once."""
    return {layer.name: 1 / 0 for layer in layers}


def raises_later(layers):
    """Fails on its fifth call, in the middle of SVI."""
    raises_later.calls = getattr(raises_later, "calls", 0) + 1
    if raises_later.calls > 4:
        raise ValueError("a hyper-parameter went out of range")
    return shared_alpha(layers)


def takes_nothing():
    """Not callable with the layers."""
    return {}
