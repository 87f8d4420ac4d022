"""Importance criteria: one score per channel of each prunable layer, higher is more important.

A criterion is a small callable returning ``{layer name: scores}``, so the Dirichlet
posterior and every baseline feed the same plan (:mod:`pyro_dirichlet.plan`) and surgery
(:mod:`pyro_dirichlet.surgery`) and are compared at equal keep counts. Bind a criterion's
extra arguments with :func:`functools.partial` where a uniform signature is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from pyro_dirichlet.data import Split, minibatches
from pyro_dirichlet.posterior import layer_draws, layer_summaries
from pyro_dirichlet.structure import PrunableLayer

__all__ = ["posterior_mean", "posterior_lower_bound", "top_k_probability", "random_scores", "l1_norm", "batchnorm_scale", "taylor"]

Scores = dict[str, torch.Tensor]


def posterior_mean(posterior: xr.DataTree) -> Scores:
    """Each channel's posterior mean switch value, as ArviZ summarises the posterior draws.

    Args:
        posterior: a switch posterior from :func:`pyro_dirichlet.posterior.sample_posterior`.

    Returns:
        ``{layer name: float64 tensor of one score per channel}`` ordered by the channel
        coordinate.
    """
    return {layer: torch.tensor(summary.mean, dtype=torch.float64) for layer, summary in layer_summaries(posterior).items()}


def posterior_lower_bound(posterior: xr.DataTree, *, ci_prob: float = 0.9) -> Scores:
    """The lower bound of each channel's HDI: ranks channels by how surely they matter.

    A channel with a high but uncertain mean ranks below one whose switch is reliably large.
    """
    return {
        layer: torch.tensor(summary.hdi_lower, dtype=torch.float64)
        for layer, summary in layer_summaries(posterior, ci_prob=ci_prob).items()
    }


def top_k_probability(posterior: xr.DataTree, counts: Mapping[str, int]) -> Scores:
    """The posterior probability that each channel is among its layer's ``counts[layer]`` largest switches.

    Read from the joint draws, so it accounts for how channels trade mass on the simplex: a
    channel is scored by how often the posterior would keep it at this budget, not by its
    average value. Layers missing from ``counts`` are left out.

    Raises:
        ValueError: a count outside ``[1, channels]`` or a layer the posterior does not have.
    """
    draws = layer_draws(posterior)
    unknown = sorted(set(counts) - set(draws))
    if unknown:
        raise ValueError(f"counts names layer(s) {unknown} the posterior does not have; it has {sorted(draws)}.")
    scores = {}
    for layer, k in counts.items():
        samples = torch.as_tensor(draws[layer])
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= samples.shape[1]:
            raise ValueError(f"counts[{layer!r}] must be an integer in [1, {samples.shape[1]}], got {k!r}.")
        top = samples.topk(k, dim=1).indices
        hits = torch.zeros_like(samples, dtype=torch.float64).scatter_(1, top, 1.0)
        # Ties in probability (e.g. channels never in the top k) are broken by the mean, so
        # the ranking below the cut is still meaningful when a plan keeps more channels.
        scores[layer] = hits.mean(0) + 1e-9 * samples.mean(0).to(torch.float64)
    return scores


def random_scores(layers: Sequence[PrunableLayer], *, seed: int = 0) -> Scores:
    """Uniform random scores: the floor any criterion must beat."""
    generator = torch.Generator().manual_seed(seed)
    return {layer.name: torch.rand(layer.channels, generator=generator, dtype=torch.float64) for layer in layers}


def l1_norm(network: nn.Module, layers: Sequence[PrunableLayer]) -> Scores:
    """L1 norm of each output channel's filter (Li et al. 2017, "Pruning filters for efficient ConvNets")."""
    modules = dict(network.named_modules())
    return {
        layer.name: modules[layer.name].weight.detach().abs().flatten(1).sum(1).to(torch.float64).cpu()
        for layer in layers
    }


def batchnorm_scale(network: nn.Module, layers: Sequence[PrunableLayer]) -> Scores:
    """|gamma| of the BatchNorm after each layer: Network Slimming's score, without its sparse training.

    Raises:
        ValueError: a layer has no affine BatchNorm directly after it.
    """
    modules = dict(network.named_modules())
    scores = {}
    for layer in layers:
        norm = modules[layer.switch_at]
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.weight is None:
            raise ValueError(f"layer {layer.name!r} has no affine BatchNorm after it, so it has no BatchNorm scale to rank by.")
        scores[layer.name] = norm.weight.detach().abs().to(torch.float64).cpu()
    return scores


def taylor(network: nn.Module, layers: Sequence[PrunableLayer], data: Split, *, batches: int = 10, batch_size: int = 128, seed: int = 0) -> Scores:
    """First-order Taylor importance (Molchanov et al. 2017): ``E_x |sum_hw a * dL/da|`` per channel.

    The activation ``a`` is each layer's output where its switch would sit; the loss is the
    cross-entropy on ``batches`` minibatches of ``data``. The network is used in eval mode
    and its parameters are left untouched (no parameter gradients are kept).
    """
    modules = dict(network.named_modules())
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    sums = {layer.name: torch.zeros(layer.channels, dtype=torch.float64) for layer in layers}
    activations: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            activations[name] = output

        return hook

    handles = [modules[layer.switch_at].register_forward_hook(keep(layer.name)) for layer in layers]
    seen = 0
    try:
        generator = torch.Generator().manual_seed(seed)
        for step, (_, images, labels) in enumerate(minibatches(data, batch_size, shuffle=True, generator=generator)):
            if step == batches:
                break
            images = images.to(device).requires_grad_(True)  # so activations carry gradients even if weights are frozen
            loss = F.cross_entropy(network(images), labels.to(device), reduction="sum")
            loss.backward()
            for layer in layers:
                a = activations[layer.name]
                contribution = (a * a.grad).flatten(2).sum(2) if a.dim() > 2 else a * a.grad
                sums[layer.name] += contribution.abs().sum(0).detach().to(torch.float64).cpu()
            seen += len(labels)
    finally:
        for handle in handles:
            handle.remove()
        network.zero_grad(set_to_none=True)
        network.train(was_training)
    return {name: total / max(seen, 1) for name, total in sums.items()}
