import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.planning.allocation import (
    CostModel,
    budget_counts,
    keep_from_budget,
    pruned_cost,
    uniform_counts,
)
from pyro_dirichlet.measure import count_flops, count_parameters
from pyro_dirichlet.structure import find_prunable_layers


class Mixed(nn.Module):
    """BatchNorm at a switch, a concatenation into a depthwise conv, a residual group, flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1, bias=False)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.res1 = nn.Conv2d(10, 12, 1)
        self.res2 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc1 = nn.Linear(12 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.dw(torch.cat([self.a(x), self.b(x)], 1)))
        y = self.res1(x)
        y = y + self.res2(F.relu(y))
        y = F.adaptive_avg_pool2d(y, 4).flatten(1)
        return self.fc2(F.relu(self.fc1(y)))


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


@pytest.mark.parametrize("cost", ["params", "flops"])
def test_uniform_counts_keep_one_fraction_the_largest_that_fits(tiny_cnn, tiny_images, cost):
    example = tiny_images[:2]
    counts = uniform_counts(tiny_cnn, WIDTHS, example, budget=0.5, cost=cost)
    total = count_parameters(tiny_cnn) if cost == "params" else count_flops(tiny_cnn, example)
    assert pruned_cost(tiny_cnn, counts, example, cost) <= 0.5 * total
    fractions = {layer: counts[layer] / width for layer, width in WIDTHS.items()}
    assert max(fractions.values()) - min(fractions.values()) < 0.2
    # every uniform candidate that keeps more channels no longer fits
    steps = max(WIDTHS.values())
    for i in range(1, steps + 1):
        candidate = {layer: max(1, round(i / steps * w)) for layer, w in WIDTHS.items()}
        if candidate != counts and all(candidate[layer] >= counts[layer] for layer in WIDTHS):
            assert pruned_cost(tiny_cnn, candidate, example, cost) > 0.5 * total


@pytest.mark.parametrize("cost", ["params", "flops"])
@pytest.mark.parametrize("net_name", ["tiny_cnn", "mixed"])
def test_cost_model_equals_the_cost_of_a_pruned_copy(tiny_cnn, tiny_images, net_name, cost):
    torch.manual_seed(1)
    net, example = (tiny_cnn, tiny_images[:2]) if net_name == "tiny_cnn" else (Mixed(), torch.randn(2, 3, 16, 16))
    layers = find_prunable_layers(net, example, coupled="group")
    if net_name == "mixed":
        assert {layer.name for layer in layers} == {"stem", "a", "b", "res1", "fc1"}
    price = CostModel(net, layers, example, cost)
    assert price({}) == price.total == (count_parameters(net) if cost == "params" else count_flops(net, example))
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        counts = {
            layer.name: int(torch.randint(1, layer.channels + 1, (1,), generator=generator))
            for layer in layers
        }
        assert price(counts) == pruned_cost(net, counts, example, cost), counts


def test_cost_model_rejects_an_unknown_layer(tiny_cnn, tiny_images):
    price = CostModel(tiny_cnn, find_prunable_layers(tiny_cnn, tiny_images[:2]), tiny_images[:2], "params")
    with pytest.raises(ValueError, match=r"\['fc2'\]"):
        price({"fc2": 1})


def test_budget_allocation_traces_once_and_not_at_all_with_layers(tiny_cnn, tiny_images, count_traces):
    example = tiny_images[:2]
    scores = scores_for(WIDTHS)
    counts = budget_counts(tiny_cnn, scores, example, budget=0.4, cost="flops")
    assert count_traces() == 1  # the bisection prices candidates without tracing
    layers = find_prunable_layers(tiny_cnn, example)
    assert count_traces() == 2
    assert budget_counts(tiny_cnn, scores, example, budget=0.4, cost="flops", layers=layers) == counts
    assert uniform_counts(tiny_cnn, WIDTHS, example, budget=0.4, layers=layers)
    assert keep_from_budget(tiny_cnn, scores, example, budget=0.4, layers=layers)
    assert count_traces() == 2


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


class GroupedBlock(nn.Module):
    """conv -> BN -> ReLU -> grouped conv (4 groups) -> BN -> ReLU -> conv -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.bn_a = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn_b = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn_b(self.b(F.relu(self.bn_a(self.a(x))))))
        return self.fc(F.adaptive_avg_pool2d(self.c(x), 1).flatten(1))


@pytest.mark.parametrize("cost", ["params", "flops"])
def test_grouped_convolutions_are_priced_and_allocated_in_whole_groups(cost):
    torch.manual_seed(0)
    net, example = GroupedBlock(), torch.randn(2, 3, 8, 8)
    layers = find_prunable_layers(net, example)
    assert {layer.name: layer.block for layer in layers} == {"a": 4, "c": 1}
    price = CostModel(net, layers, example, cost)
    for counts in ({"a": 4}, {"a": 12, "c": 3}, {"c": 1}):
        assert price(counts) == pruned_cost(net, counts, example, cost)
    scores = scores_for({"a": 16, "c": 8}, seed=2)
    counts = budget_counts(net, scores, example, budget=0.5, cost=cost, layers=layers)
    assert counts["a"] % 4 == 0
    assert pruned_cost(net, counts, example, cost) <= 0.5 * price.total
    keep = keep_from_budget(net, scores, example, budget=0.5, cost=cost, layers=layers)
    groups = {i // 4 for i in keep["a"]}
    assert len(keep["a"]) == counts["a"] and set(keep["a"]) == {4 * g + j for g in groups for j in range(4)}
    uniform = uniform_counts(net, {"a": 16, "c": 8}, example, budget=0.5, cost=cost, layers=layers)
    assert uniform["a"] % 4 == 0 and pruned_cost(net, uniform, example, cost) <= 0.5 * price.total
