"""Importance criteria: one score per channel of each prunable layer, higher is more important.

Every criterion has one shape, :class:`Criterion`: ``criterion(network, layers, data)``
returns ``{layer name: scores}``, so the Dirichlet posterior and every baseline feed the
same plan (:mod:`pyro_dirichlet.plan`) and surgery (:mod:`pyro_dirichlet.surgery`) and are
compared at equal keep counts. What a criterion needs beyond that (a seed, a fitted
posterior, a budget) it takes when it is built. Criteria are found by name in a registry::

    scores = get_criterion("l1-norm")(network, layers, data)
    scores = get_criterion("taylor", batches=20)(network, layers, data.train)

The baselines here need only torch; the posterior criteria live in
:mod:`pyro_dirichlet.posterior_criteria` and are imported the first time one is asked for,
so ranking by L1-norm never loads Pyro or ArviZ.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.data import BatchSource, iterate_batches
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.structure.attention import ATTENTION_PARTS
from pyro_dirichlet.surgery.attention import AttentionTapHook

__all__ = [
    "CRITERIA",
    "BatchNormScale",
    "Criterion",
    "L1Norm",
    "RandomScores",
    "Scores",
    "Taylor",
    "get_criterion",
    "register_criterion",
]

Scores = dict[str, torch.Tensor]


@runtime_checkable
class Criterion(Protocol):
    """Scores every channel of every layer in ``layers``: ``{layer name: float64 tensor}``, higher = keep.

    Args:
        network: the trained network; a criterion must not modify it.
        layers: the prunable layers to score (from :func:`pyro_dirichlet.structure.find_prunable_layers`).
        data: examples for criteria that look at activations or gradients (a ``Split`` or
            any iterable of ``(inputs, targets)`` batches, e.g. a ``DataLoader``); others ignore it.
    """

    def __call__(self, network: nn.Module, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores: ...


C = TypeVar("C", bound=Callable[..., Criterion])


class _Registry(Mapping[str, Callable[..., Criterion]]):
    """Criterion factories by name; an entry given as ``"module:attribute"`` is imported on first lookup.

    The lazy entries are why listing or using the torch-only criteria never imports the
    posterior's dependencies.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Callable[..., Criterion] | str] = {}

    def add(self, name: str, factory: Callable[..., Criterion] | str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a criterion name must be a non-empty string, got {name!r}.")
        known = self._entries.get(name)
        # Re-registering the same class (a module imported twice) is harmless; a second
        # criterion under a taken name would silently change every study that names it.
        if known is not None and not isinstance(known, str) and _qualname(known) != _qualname(factory):
            raise ValueError(f"criterion name {name!r} is already registered to {_qualname(known)}; pick another name.")
        self._entries[name] = factory

    def __getitem__(self, name: str) -> Callable[..., Criterion]:
        factory = self._entries[name]
        if isinstance(factory, str):
            module, attribute = factory.split(":")
            factory = getattr(importlib.import_module(module), attribute)
            self._entries[name] = factory
        return factory

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _qualname(factory: object) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


#: Every registered criterion: ``{name: factory}``; ``factory(**options)`` builds a :class:`Criterion`.
CRITERIA = _Registry()


def register_criterion(name: str) -> Callable[[C], C]:
    """Class decorator: make a criterion available as ``get_criterion(name)``.

    Example:
        >>> @register_criterion("width")
        ... class Width:
        ...     def __call__(self, network, layers, data=None):
        ...         return {layer.name: torch.full((layer.channels,), float(layer.channels)) for layer in layers}
    """

    def add(factory: C) -> C:
        CRITERIA.add(name, factory)
        return factory

    return add


def get_criterion(name: str, **options: Any) -> Criterion:
    """The criterion registered as ``name``, built with ``options`` (e.g. ``seed=1``, ``posterior=...``).

    Raises:
        ValueError: no criterion is registered under ``name``.
    """
    if name not in CRITERIA:
        raise ValueError(f"criterion name {name!r} is not registered; known criteria: {sorted(CRITERIA)}.")
    return CRITERIA[name](**options)


def _modules(network: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
    return dict(network.named_modules())


def _output_weight(module: nn.Module, layer: PrunableLayer) -> torch.Tensor:
    """The weight rows that make each channel: a layer's own, an attention's value rows, or
    its query and key rows side by side (a query/key channel is the pair)."""
    if layer.kind == "attention":
        return module.in_proj_weight[2 * module.embed_dim:]
    if layer.kind == "query_key":
        queries, keys, _ = module.in_proj_weight.chunk(3)
        return torch.cat([queries, keys], dim=1)
    return module.weight


@register_criterion("random")
@dataclass(frozen=True)
class RandomScores:
    """Uniform random scores from ``seed``: the floor any criterion must beat."""

    seed: int = 0

    def __call__(self, network: nn.Module | None, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores:
        generator = torch.Generator().manual_seed(self.seed)
        return {layer.name: torch.rand(layer.channels, generator=generator, dtype=torch.float64) for layer in layers}


@register_criterion("l1-norm")
@dataclass(frozen=True)
class L1Norm:
    """L1 norm of each output channel's filter (Li et al. 2017, "Pruning filters for efficient ConvNets")."""

    def __call__(self, network: nn.Module, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores:
        modules = _modules(network)
        return {
            layer.name: _output_weight(modules[layer.switch_at if layer.kind in ATTENTION_PARTS else layer.name], layer).detach().abs().flatten(1).sum(1).to(torch.float64).cpu()
            for layer in layers
        }


@register_criterion("batchnorm-scale")
@dataclass(frozen=True)
class BatchNormScale:
    """|gamma| of the BatchNorm after each layer: Network Slimming's score, without its sparse training.

    Raises:
        ValueError: a layer has no affine BatchNorm directly after it.
    """

    def __call__(self, network: nn.Module, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores:
        modules = _modules(network)
        scores = {}
        for layer in layers:
            norm = modules[layer.switch_at]
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.weight is None:
                raise ValueError(f"layer {layer.name!r} has no affine BatchNorm after it, so it has no BatchNorm scale to rank by.")
            scores[layer.name] = norm.weight.detach().abs().to(torch.float64).cpu()
        return scores


@register_criterion("taylor")
@dataclass(frozen=True)
class Taylor:
    """First-order Taylor importance (Molchanov et al. 2017): ``E_x |sum_hw a * dL/da|`` per channel.

    The activation ``a`` is each layer's output where its switch would sit; the loss is the
    cross-entropy on ``batches`` minibatches of ``data`` (``None``: all of it, so it sees as
    much data as a one-epoch fit). The network is used in eval mode and its parameters are
    left untouched (no parameter gradients are kept).

    Attributes:
        batches: minibatches to average over, or ``None`` for one pass over ``data``.
        batch_size: examples per minibatch sliced from a ``Split`` (a loader's batches are its own).
        seed: the seed of a ``Split``'s shuffle (a loader's order is its own).
    """

    batches: int | None = 10
    batch_size: int = 128
    seed: int = 0

    def __call__(self, network: nn.Module, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores:
        if data is None:
            raise TypeError("the taylor criterion needs data: a Split or an iterable of (inputs, targets) batches.")
        modules = _modules(network)
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

        handles = [
            AttentionTapHook(modules[layer.switch_at], keep(layer.name), ATTENTION_PARTS[layer.kind])
            if layer.kind in ATTENTION_PARTS
            else modules[layer.switch_at].register_forward_hook(keep(layer.name))
            for layer in layers
        ]
        seen = 0
        try:
            generator = torch.Generator().manual_seed(self.seed)
            batches = iterate_batches(data, self.batch_size, shuffle=True, generator=generator, name="data")
            for step, (images, labels, _) in enumerate(batches):
                if step == self.batches:
                    break
                images = images.to(device).requires_grad_(True)  # so activations carry gradients even if weights are frozen
                loss = F.cross_entropy(network(images), labels.to(device), reduction="sum")
                loss.backward()
                for layer in layers:
                    a = activations[layer.name]
                    product = (a * a.grad).movedim(layer.channel_dim, 1)  # a Linear's channels are last
                    contribution = product.flatten(2).sum(2) if a.dim() > 2 else product
                    sums[layer.name] += contribution.abs().sum(0).detach().to(torch.float64).cpu()
                seen += len(labels)
        finally:
            for handle in handles:
                handle.remove()
            network.zero_grad(set_to_none=True)
            network.train(was_training)
        return {name: total / max(seen, 1) for name, total in sums.items()}


# The posterior criteria: named here, imported from their module on first use.
for _name, _attribute in (
    ("posterior-mean", "PosteriorMean"),
    ("posterior-lower-bound", "PosteriorLowerBound"),
    ("top-k-probability", "TopKProbability"),
):
    CRITERIA.add(_name, f"pyro_dirichlet.posterior_criteria:{_attribute}")


_MOVED = {"posterior_mean", "posterior_lower_bound", "top_k_probability"}


def __getattr__(name: str):
    # The posterior scores moved to their own module (they need ArviZ); old imports still work.
    if name in _MOVED:
        return getattr(importlib.import_module("pyro_dirichlet.posterior_criteria"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
