"""Random scores: the floor every criterion must beat."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pyro_dirichlet.criteria.registry import Scores, register_criterion
from pyro_dirichlet.data import BatchSource
from pyro_dirichlet.structure import PrunableLayer

__all__ = ["RandomScores"]


@register_criterion("random")
@dataclass(frozen=True)
class RandomScores:
    """Uniform random scores from ``seed``: the floor any criterion must beat."""

    seed: int = 0

    def __call__(self, network: nn.Module | None, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores:
        generator = torch.Generator().manual_seed(self.seed)
        return {layer.name: torch.rand(layer.channels, generator=generator, dtype=torch.float64) for layer in layers}
