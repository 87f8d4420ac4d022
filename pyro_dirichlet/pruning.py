"""Dirichlet pruning in one call: posterior mean -> plan -> fold the switch scales -> surgery."""

from __future__ import annotations

import torch
import xarray as xr
from torch import nn

from pyro_dirichlet.importance import posterior_mean
from pyro_dirichlet.plan import Target, plan_keep
from pyro_dirichlet.surgery import fold_scales, prune_channels

__all__ = ["prune_by_posterior_mean", "switch_scales"]


def switch_scales(means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``E[s_c] * C`` per channel: the factor the switch applies at its posterior mean (1 at the prior mean)."""
    return {layer: (mean * mean.numel()).to(torch.float32) for layer, mean in means.items()}


def prune_by_posterior_mean(
    network: nn.Module,
    posterior: xr.DataTree,
    target: Target,
    example_inputs: torch.Tensor,
    *,
    fold: bool = True,
) -> tuple[nn.Module, dict[str, list[int]]]:
    """Prune ``network`` to ``target``, keeping each layer's channels of highest posterior mean.

    With ``fold=True`` (the default) every channel of a switched layer is first scaled by its
    posterior-mean switch value times the layer width, ``E[s_c] * C``, folded into the
    weights: the pruned network is then the switched network at the posterior mean, which
    is what the fit optimised, rather than the unswitched network with channels removed.
    On LeNet-5/MNIST this is worth several points of accuracy before fine-tuning at tight
    budgets (measured in ``analysis/``).

    Args:
        network: the trained network (not modified).
        posterior: the fitted switch posterior (ArviZ DataTree).
        target: channels to keep per layer, counts or fractions (see :func:`plan_keep`).
        example_inputs: a batch of inputs to trace the network with.
        fold: fold ``E[s_c] * C`` into the kept channels' weights.

    Returns:
        ``(pruned network, keep)`` where ``keep`` maps each pruned layer to the original
        indices of the channels it kept.
    """
    scores = posterior_mean(posterior)
    keep = plan_keep(scores, target)
    if fold:
        network = fold_scales(network, switch_scales(scores), example_inputs)
    return prune_channels(network, keep, example_inputs), keep
