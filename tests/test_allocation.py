import pytest
import torch

from pyro_dirichlet.allocation import budget_counts, keep_from_budget, pruned_cost, uniform_counts
from pyro_dirichlet.measure import count_flops, count_parameters


def scores_for(widths, seed=0):
    """Skewed positive scores summing to 1 per layer, like posterior means."""
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for layer, width in widths.items():
        raw = torch.rand(width, generator=generator) ** 3
        scores[layer] = raw / raw.sum()
    return scores


WIDTHS = {"conv1": 6, "conv2": 8, "fc1": 12}


@pytest.mark.parametrize("cost", ["params", "flops"])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_budget_counts_fit_the_budget_and_no_lower_threshold_would(tiny_cnn, tiny_images, cost, budget):
    scores = scores_for(WIDTHS)
    counts = budget_counts(tiny_cnn, scores, tiny_images[:2], budget=budget, cost=cost)
    total = count_parameters(tiny_cnn) if cost == "params" else count_flops(tiny_cnn, tiny_images[:2])
    assert pruned_cost(tiny_cnn, counts, tiny_images[:2], cost) <= budget * total
    assert all(1 <= counts[layer] <= width for layer, width in WIDTHS.items())
    # the next channel in the global ranking (highest normalised score not yet kept) breaks the budget
    normalised = {layer: s * len(s) for layer, s in scores.items()}
    threshold = min(normalised[layer].sort(descending=True).values[counts[layer] - 1] for layer in counts)
    below = [(s[s < threshold].max(), layer) for layer, s in normalised.items() if (s < threshold).any()]
    if below:
        _, layer = max(below)
        grown = {**counts, layer: counts[layer] + 1}
        assert pruned_cost(tiny_cnn, grown, tiny_images[:2], cost) > budget * total


def test_uniform_counts_keep_one_fraction(tiny_cnn, tiny_images):
    counts = uniform_counts(tiny_cnn, WIDTHS, tiny_images[:2], budget=0.5, cost="params")
    fractions = {layer: counts[layer] / width for layer, width in WIDTHS.items()}
    assert max(fractions.values()) - min(fractions.values()) < 0.2


def test_keep_from_budget_returns_top_channels(tiny_cnn, tiny_images):
    scores = scores_for(WIDTHS, seed=3)
    keep = keep_from_budget(tiny_cnn, scores, tiny_images[:2], budget=0.5)
    for layer, kept in keep.items():
        dropped = set(range(WIDTHS[layer])) - set(kept)
        if dropped:
            assert scores[layer][kept].min() >= scores[layer][list(dropped)].max()


@pytest.mark.parametrize("budget", [0.0, 1.5, "half", True])
def test_bad_budget(tiny_cnn, tiny_images, budget):
    with pytest.raises(ValueError, match="budget"):
        budget_counts(tiny_cnn, scores_for(WIDTHS), tiny_images[:2], budget=budget)


def test_impossible_budget_names_the_smallest_achievable(tiny_cnn, tiny_images):
    with pytest.raises(ValueError, match="smallest achievable"):
        budget_counts(tiny_cnn, scores_for(WIDTHS), tiny_images[:2], budget=1e-4, cost="params")
