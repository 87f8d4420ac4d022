"""Importance criteria: one score per channel of each prunable layer, higher is more important.

A criterion is a small callable so that any score -- the Dirichlet posterior or a baseline --
feeds the same plan (:mod:`pyro_dirichlet.plan`) and surgery (:mod:`pyro_dirichlet.surgery`).
"""

from __future__ import annotations

import torch
import xarray as xr

from pyro_dirichlet.posterior import layer_summaries

__all__ = ["posterior_mean"]


def posterior_mean(posterior: xr.DataTree) -> dict[str, torch.Tensor]:
    """Each channel's posterior mean switch value, as ArviZ summarises the posterior draws.

    Args:
        posterior: a switch posterior from :func:`pyro_dirichlet.posterior.sample_posterior`.

    Returns:
        ``{layer name: float64 tensor of one score per channel}`` ordered by the channel
        coordinate.
    """
    return {
        layer: torch.tensor(summary.mean, dtype=torch.float64)
        for layer, summary in layer_summaries(posterior).items()
    }
