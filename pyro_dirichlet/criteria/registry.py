"""The criterion protocol and the registry that finds criteria by name (torch only).

Every criterion has one shape, :class:`Criterion`: ``criterion(network, layers, data)``
returns ``{layer name: scores}``, so the Dirichlet posterior and every baseline feed the
same plan (:mod:`pyro_dirichlet.planning`) and surgery (:mod:`pyro_dirichlet.surgery`) and
are compared at equal keep counts. What a criterion needs beyond that (a seed, a fitted
posterior, a budget) it takes when it is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from pyro_dirichlet.data import BatchSource
from pyro_dirichlet.structure import PrunableLayer

__all__ = ["CRITERIA", "Criterion", "Scores", "get_criterion", "register_criterion"]

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
