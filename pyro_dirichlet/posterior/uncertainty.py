"""How sure the posterior is about a pruning decision: mass curves, straddling channels, ranking stability."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pyro_dirichlet.posterior import LayerSummary

__all__ = ["mass_curve", "keep_threshold", "straddling_channels", "top_k_overlap"]


def mass_curve(summary: LayerSummary, levels: Sequence[float] = (0.5, 0.9, 0.99)) -> dict[float, int]:
    """How many channels, taken by decreasing posterior mean, hold each level of the layer's switch mass.

    A layer whose 90% of mass sits in a handful of channels is one the posterior says can be
    pruned hard; a layer needing most of its channels for 90% is not.
    """
    if any(not 0 < level <= 1 for level in levels):
        raise ValueError(f"levels must be fractions in (0, 1], got {list(levels)}.")
    cumulative = np.cumsum(np.sort(summary.mean)[::-1]) / summary.mean.sum()
    return {level: int(min(np.searchsorted(cumulative, level - 1e-12) + 1, len(cumulative))) for level in levels}


def keep_threshold(summary: LayerSummary, keep: Sequence[int]) -> float:
    """The posterior-mean value that separates the kept channels from the dropped ones (their midpoint)."""
    positions = {int(c): i for i, c in enumerate(summary.channels)}
    unknown = [c for c in keep if int(c) not in positions]
    if unknown:
        raise ValueError(f"keep names channels {unknown} that layer {summary.layer!r} does not have.")
    kept = np.zeros(len(summary.channels), dtype=bool)
    kept[[positions[int(c)] for c in keep]] = True
    if kept.all():
        return float(summary.mean.min())
    return float((summary.mean[kept].min() + summary.mean[~kept].max()) / 2)


def straddling_channels(summary: LayerSummary, keep: Sequence[int]) -> list[int]:
    """Channels whose credible interval contains the keep threshold: the decisions the posterior is unsure of."""
    threshold = keep_threshold(summary, keep)
    inside = (summary.hdi_lower <= threshold) & (threshold <= summary.hdi_upper)
    return [int(c) for c in summary.channels[inside]]


def top_k_overlap(first: torch.Tensor, second: torch.Tensor, k: int) -> float:
    """Fraction of the top-``k`` channels two score vectors agree on (1 = same set), e.g. across seeds."""
    if not 1 <= k <= len(first) or len(first) != len(second):
        raise ValueError(f"k must be in [1, {len(first)}] and the score vectors of equal length.")

    def top(scores: torch.Tensor) -> set[int]:
        return set(torch.as_tensor(scores).argsort(descending=True, stable=True)[:k].tolist())

    return len(top(first) & top(second)) / k
