"""Switch draws from fitted Dirichlet guides as plain arrays, before ArviZ sees them.

Kept apart from the package's ``__init__`` so that :mod:`~pyro_dirichlet.posterior.fitted`
(the whole posterior of a fit) and :func:`~pyro_dirichlet.posterior.sample_posterior` share
one sampler without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyro.distributions as dist
import torch

from pyro_dirichlet.infer.switches import switch_site

__all__ = ["channel_dim", "switch_draws"]


def channel_dim(layer_name: str) -> str:
    """The channel dimension of a layer's switch variable, e.g. ``"features.0"`` -> ``"features_0_channel"``."""
    return f"{layer_name.replace('.', '_')}_channel"


def switch_draws(
    concentrations: Mapping[str, torch.Tensor], *, num_samples: int, seed: int, channels: Mapping[str, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, np.ndarray]]:
    """:func:`sample_posterior`'s draws before they become a DataTree: ``(1, draws, channels)``
    arrays by site name, their dims and their channel coordinates."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer of at least 2, got {num_samples!r}.")
    if not concentrations:
        raise ValueError("concentrations is empty: there is no switch to sample.")
    draws, dims, coords = {}, {}, {}
    # A forked RNG: summarising a posterior must not shift the user's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = {
            name: dist.Dirichlet(c.detach().to("cpu", torch.float64)).sample((num_samples,))
            for name, c in concentrations.items()
        }
    for name, sample in samples.items():
        variable, dim = switch_site(name), channel_dim(name)
        draws[variable] = sample.numpy()[None]  # one chain
        dims[variable] = [dim]
        coords[dim] = np.asarray(channels[name]) if channels and name in channels else np.arange(sample.shape[-1])
    return draws, dims, coords
