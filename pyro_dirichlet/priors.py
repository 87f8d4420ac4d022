"""Priors over each layer's switch vector: Dirichlet concentrations or any Pyro distribution on the simplex.

A prior is given in one of three forms, all resolved by :func:`resolve_prior`:

* a number -- the same symmetric Dirichlet concentration for every channel of every layer;
* a mapping ``{layer name: number or vector}`` -- per-layer concentrations (scalar or one per
  channel); layers left out get the default concentration;
* a callable ``prior(layer) -> pyro.distributions.Distribution`` -- any distribution whose
  event is a point on the simplex of the layer's width ("define priors via Pyro models").
  It is called inside the model at every step, so it may build its distribution from
  ``pyro.param`` values or other tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyro_dirichlet.structure import PrunableLayer

__all__ = ["DEFAULT_CONCENTRATION", "PriorSpec", "LayerPrior", "resolve_prior"]

#: The default symmetric concentration. Measured on LeNet-5/MNIST (see analysis/), the
#: prior barely moves a one-epoch posterior at full data size, so the flat Dirichlet(1)
#: -- uniform on the simplex, no preference for sparse or dense switches -- is the
#: honest default; users who want sparsity pass a concentration below 1.
DEFAULT_CONCENTRATION = 1.0

Concentration = Union[float, int, torch.Tensor]
PriorCallable = Callable[[PrunableLayer], dist.Distribution]
PriorSpec = Union[Concentration, Mapping[str, Concentration], PriorCallable]

#: A resolved prior: builds the layer's prior distribution on a device.
LayerPrior = Callable[[torch.device], dist.Distribution]


def _concentration_vector(value: Concentration, layer: PrunableLayer, argument: str) -> torch.Tensor:
    """Check a concentration given for ``layer`` and expand it to one value per channel."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(
            f"{argument} for layer {layer.name!r} must be a number or a tensor of "
            f"concentrations, got {type(value).__name__}."
        )
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    if tensor.dim() == 0:
        tensor = tensor.expand(layer.channels)
    elif tensor.shape != (layer.channels,):
        raise ValueError(
            f"{argument} for layer {layer.name!r} must be a scalar or a vector of its "
            f"{layer.channels} channels, got shape {tuple(tensor.shape)}."
        )
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        raise ValueError(
            f"{argument} for layer {layer.name!r} must be positive and finite, "
            f"got minimum {tensor.min().item():g}."
        )
    return tensor.clone()


def _dirichlet_prior(concentration: torch.Tensor) -> LayerPrior:
    cache: dict[torch.device, torch.Tensor] = {}

    def build(device: torch.device) -> dist.Distribution:
        # Cache the device copy: the model builds every prior at every SVI step.
        if device not in cache:
            cache[device] = concentration.to(device)
        return dist.Dirichlet(cache[device])

    return build


def _check_user_distribution(prior: dist.Distribution, layer: PrunableLayer) -> None:
    if not isinstance(prior, torch.distributions.Distribution):
        raise TypeError(
            f"prior callable must return a pyro.distributions.Distribution for layer "
            f"{layer.name!r}, got {type(prior).__name__}."
        )
    if tuple(prior.event_shape) != (layer.channels,) or tuple(prior.batch_shape) != ():
        raise ValueError(
            f"prior for layer {layer.name!r} must have event shape ({layer.channels},) and "
            f"no batch shape, got event shape {tuple(prior.event_shape)} and batch shape "
            f"{tuple(prior.batch_shape)}."
        )
    if prior.support is not constraints.simplex:
        raise ValueError(
            f"prior for layer {layer.name!r} must be a distribution on the simplex "
            f"(support constraints.simplex), got support {prior.support}."
        )


def _callable_prior(prior: PriorCallable, layer: PrunableLayer) -> LayerPrior:
    def build(device: torch.device) -> dist.Distribution:
        return prior(layer)

    # Fail at construction, not at the first SVI step, when the callable is wrong.
    _check_user_distribution(prior(layer), layer)
    return build


def resolve_prior(prior: PriorSpec, layers: list[PrunableLayer]) -> dict[str, LayerPrior]:
    """Turn a user's prior specification into one prior builder per layer.

    Args:
        prior: a positive number, a mapping from layer name to a positive number or a
            vector of one positive concentration per channel, or a callable
            ``prior(layer) -> Distribution`` over the layer's simplex.
        layers: the prunable layers the switches sit on.

    Returns:
        ``{layer name: build(device) -> Distribution}``.

    Raises:
        ValueError: a concentration that is not positive and finite or has the wrong
            shape, a mapping that names an unknown layer, or a callable whose distribution
            is not over the layer's simplex.

    Example:
        >>> priors = resolve_prior({"conv1": 0.5}, layers)  # doctest: +SKIP
        >>> priors["conv1"](torch.device("cpu")).concentration[:3]  # doctest: +SKIP
        tensor([0.5000, 0.5000, 0.5000])
    """
    if callable(prior) and not isinstance(prior, torch.Tensor):
        return {layer.name: _callable_prior(prior, layer) for layer in layers}
    if isinstance(prior, Mapping):
        known = {layer.name for layer in layers}
        unknown = sorted(set(prior) - known)
        if unknown:
            raise ValueError(
                f"prior names unknown layer(s) {unknown}; the switched layers are {sorted(known)}."
            )
        return {
            layer.name: _dirichlet_prior(
                _concentration_vector(prior.get(layer.name, DEFAULT_CONCENTRATION), layer, "prior")
            )
            for layer in layers
        }
    return {layer.name: _dirichlet_prior(_concentration_vector(prior, layer, "prior")) for layer in layers}
