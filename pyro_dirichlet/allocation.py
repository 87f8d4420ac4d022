"""Per-layer keep counts chosen automatically to meet a global parameter or FLOP budget.

The paper sets each layer's width by hand. Here one threshold on the width-normalised
posterior mean ``E[s_c] * C`` -- comparable across layers, 1 being a layer's average
channel -- decides for every layer at once; bisection finds the lowest threshold (the most
channels) whose pruned network fits the budget. :func:`uniform_counts` is the baseline that
keeps the same fraction of every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import nn

from pyro_dirichlet.measure import count_flops, count_parameters
from pyro_dirichlet.plan import plan_keep
from pyro_dirichlet.surgery import prune_channels

__all__ = ["Cost", "budget_counts", "uniform_counts", "pruned_cost", "keep_from_budget"]

Cost = Literal["params", "flops"]


def pruned_cost(network: nn.Module, counts: Mapping[str, int], example_inputs: torch.Tensor, cost: Cost) -> int:
    """Parameters or FLOPs of ``network`` pruned to ``counts`` (which channels does not matter)."""
    keep = {layer: list(range(count)) for layer, count in counts.items()}
    pruned = prune_channels(network, keep, example_inputs)
    return count_parameters(pruned) if cost == "params" else count_flops(pruned, example_inputs)


def _check(budget: float, cost: str) -> None:
    if cost not in ("params", "flops"):
        raise ValueError(f"cost must be 'params' or 'flops', got {cost!r}.")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction in (0, 1] of the network's {cost}, got {budget!r}.")


def _largest_fitting(candidates: list, counts_for: Callable[[object], dict[str, int]], fits: Callable[[dict[str, int]], bool]):
    """Bisection over ``candidates`` ordered from fewest to most channels kept: the last one that fits."""
    low, high = 0, len(candidates) - 1
    if not fits(counts_for(candidates[low])):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(counts_for(candidates[middle])):
            low = middle
        else:
            high = middle - 1
    return candidates[low]


def _allocate(network, example_inputs, widths, candidates, counts_for, budget, cost) -> dict[str, int]:
    _check(budget, cost)
    total = count_parameters(network) if cost == "params" else count_flops(network, example_inputs)
    limit = budget * total

    def fits(counts: dict[str, int]) -> bool:
        return pruned_cost(network, counts, example_inputs, cost) <= limit

    chosen = _largest_fitting(candidates, counts_for, fits)
    if chosen is None:
        smallest = pruned_cost(network, {layer: 1 for layer in widths}, example_inputs, cost) / total
        raise ValueError(
            f"budget {budget:g} of the {cost} cannot be met: keeping one channel per layer already "
            f"costs {smallest:.4g} of them, the smallest achievable."
        )
    return counts_for(chosen)


def budget_counts(
    network: nn.Module,
    scores: Mapping[str, torch.Tensor],
    example_inputs: torch.Tensor,
    *,
    budget: float,
    cost: Cost = "flops",
) -> dict[str, int]:
    """Keep counts for every scored layer from one global threshold on ``score * width``.

    Args:
        network: the network to prune (not modified).
        scores: ``{layer: one score per channel}``, e.g. posterior means (which sum to 1 per
            layer, so ``score * width`` is 1 on average in every layer).
        example_inputs: a batch of inputs to trace and measure the network with.
        budget: the fraction of the network's ``cost`` the pruned network may keep.
        cost: ``"params"`` or ``"flops"`` (as :mod:`pyro_dirichlet.measure` counts them).

    Returns:
        ``{layer: channels to keep}``, at least one per layer, for :func:`plan_keep`.

    Raises:
        ValueError: the budget is not a fraction, or even one channel per layer exceeds it
            (the message gives the smallest achievable fraction).
    """
    normalised = {layer: torch.as_tensor(s, dtype=torch.float64) * len(s) for layer, s in scores.items()}
    widths = {layer: len(s) for layer, s in normalised.items()}
    # Thresholds from the highest score down: each step keeps one more channel somewhere.
    thresholds = torch.cat(list(normalised.values())).unique().flip(0).tolist()

    def counts_for(threshold: float) -> dict[str, int]:
        return {layer: max(1, int((s >= threshold).sum())) for layer, s in normalised.items()}

    return _allocate(network, example_inputs, widths, thresholds, counts_for, budget, cost)


def uniform_counts(
    network: nn.Module,
    widths: Mapping[str, int],
    example_inputs: torch.Tensor,
    *,
    budget: float,
    cost: Cost = "flops",
) -> dict[str, int]:
    """Keep counts that keep the same fraction of every layer, the largest that fits ``budget``."""
    steps = max(widths.values())
    fractions = [i / steps for i in range(1, steps + 1)]

    def counts_for(fraction: float) -> dict[str, int]:
        return {layer: max(1, round(fraction * width)) for layer, width in widths.items()}

    return _allocate(network, example_inputs, dict(widths), fractions, counts_for, budget, cost)


def keep_from_budget(network, scores, example_inputs, *, budget: float, cost: Cost = "flops") -> dict[str, list[int]]:
    """:func:`budget_counts` then :func:`plan_keep`: the channels to keep under a global budget."""
    return plan_keep(scores, budget_counts(network, scores, example_inputs, budget=budget, cost=cost))
