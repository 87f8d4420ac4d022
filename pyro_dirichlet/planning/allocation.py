"""Per-layer keep counts chosen automatically to meet a global parameter or FLOP budget.

The paper sets each layer's width by hand. Here one threshold on the width-normalised
posterior mean ``E[s_c] * C`` -- comparable across layers, 1 being a layer's average
channel -- decides for every layer at once; bisection finds the lowest threshold (the most
channels) whose pruned network fits the budget. :func:`uniform_counts` is the baseline that
keeps the same fraction of every layer.

Each bisection step prices a candidate from the dependency graph (:class:`CostModel`: which
modules shrink with which layer, and by how much), not by pruning a copy of the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pyro_dirichlet.measure import count_flops, count_parameters
from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.structure import PrunableLayer, find_prunable_layers
from pyro_dirichlet.structure.attention import ATTENTION_PARTS
from pyro_dirichlet.structure.foreign import RESPONSE_NORM, layer_base, linear_features, qualified_class
from pyro_dirichlet.surgery import prune_channels

__all__ = ["COSTS", "Cost", "CostModel", "DEFAULT_COST", "budget_counts", "uniform_counts", "pruned_cost", "keep_from_budget"]

Cost = Literal["params", "flops"]
#: What a budget limits, in the order the CLI lists them.
COSTS: tuple[str, ...] = ("flops", "params")
#: FLOPs unless told otherwise: a budget is mostly asked of inference time, which FLOPs follow.
DEFAULT_COST: Cost = "flops"


def pruned_cost(network: nn.Module, counts: Mapping[str, int], example_inputs: torch.Tensor, cost: Cost) -> int:
    """Parameters or FLOPs of ``network`` pruned to ``counts``, measured on a pruned copy.

    Which channels are kept does not matter. This is the slow reference :class:`CostModel`
    is exact against.
    """
    keep = {layer: list(range(count)) for layer, count in counts.items()}
    pruned = prune_channels(network, keep, example_inputs)
    return count_parameters(pruned) if cost == "params" else count_flops(pruned, example_inputs)


@dataclass(frozen=True)
class _Sliced:
    """One module that shrinks with some layers: what its weight and bias hold, and where."""

    kind: Literal["conv", "grouped", "linear", "batchnorm", "attention", "query_key"]
    out_width: int  # output channels/features (a BatchNorm's or depthwise conv's channels)
    in_width: int  # input channels/features per group (1 for a depthwise conv; 0 for a BatchNorm)
    window: int  # kernel positions of a conv; 2 for attention (two rows or columns a channel); 1 otherwise
    positions: int  # output positions per example that each weight is applied at (FLOPs)
    biases: int  # bias-like vectors of length out_width (conv/linear bias; BN weight and bias)


class CostModel:
    """Parameters or FLOPs of a network pruned to given keep counts, from its dependency graph.

    Pruning layer ``l`` to ``k`` channels shrinks its members' outputs and every consumer's
    inputs; a module's parameters and its FLOPs (``FlopCounterMode``'s convention, as
    :func:`pyro_dirichlet.measure.count_flops` counts them: two per multiply-accumulate of a
    Conv2d or Linear weight) depend only on those widths. So the cost of any keep counts is
    the network's measured cost minus what the shrunken modules lose -- exact, and no copy
    of the network is pruned or traced. One forward pass records each module's output size.

    Args:
        network: the network (not modified).
        layers: its prunable layers, from :func:`~pyro_dirichlet.structure.find_prunable_layers`.
        example_inputs: a batch of inputs; the first example is run once.
        cost: ``"params"`` or ``"flops"``.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> layers = find_prunable_layers(net, torch.zeros(1, 4))
        >>> CostModel(net, layers, torch.zeros(1, 4), "params")({"0": 3})  # (4+1)*3 + (3+1)*2
        23
    """

    def __init__(
        self, network: nn.Module, layers: Sequence[PrunableLayer], example_inputs: torch.Tensor, cost: Cost
    ) -> None:
        if cost not in ("params", "flops"):
            raise ValueError(f"cost must be 'params' or 'flops', got {cost!r}.")
        self.cost = cost
        self.layers = {layer.name: layer for layer in layers}
        self.total = count_parameters(network) if cost == "params" else count_flops(network, example_inputs)
        # A per-channel scale parameter (kind "scale", a ConvNeXt layer scale) is not priced:
        # one parameter and one multiply per channel, next to the layers around it.
        # Priced units by name: modules, and an attention's sites (its values, its queries and
        # keys), each a separate unit of the one module.
        owners: dict[str, tuple[str, str | None]] = {}
        for layer in layers:
            for name in _priced(layer):
                owners[name] = (layer.switch_at, ATTENTION_PARTS[layer.kind]) if layer.kind in ATTENTION_PARTS else (name, None)
            for consumer in layer.consumers:
                if consumer.kind != "scale":
                    owners[consumer.name] = (consumer.name, None)
        modules = dict(network.named_modules())
        positions = _output_positions(network, {name: modules[owner] for name, (owner, _) in owners.items()}, example_inputs)
        self.modules = {
            name: _sliced(modules[owner], positions[name], part) for name, (owner, part) in sorted(owners.items())
        }

    def __call__(self, counts: Mapping[str, int]) -> int:
        """The cost of the network with layer ``l`` keeping ``counts[l]`` channels."""
        unknown = sorted(set(counts) - set(self.layers))
        if unknown:
            raise ValueError(f"counts name {unknown}, not among the layers {sorted(self.layers)}")
        out_width = {name: m.out_width for name, m in self.modules.items()}
        in_width = {name: m.in_width for name, m in self.modules.items()}
        for name, count in counts.items():
            layer = self.layers[name]
            dropped = layer.channels - count
            for name in _priced(layer):
                out_width[name] -= dropped  # (a fused projection's other parts stay)
            for consumer in layer.consumers:
                if consumer.kind == "scale":
                    continue
                if consumer.kind in ("batchnorm", "depthwise", "grouped", "response_norm", "linear_out"):
                    out_width[consumer.name] -= dropped * consumer.features_per_channel
                else:
                    in_width[consumer.name] -= dropped * consumer.features_per_channel
        lost = 0
        for name, module in self.modules.items():
            lost += _cost(module, module.out_width, module.in_width, self.cost)
            lost -= _cost(module, out_width[name], in_width[name], self.cost)
        return self.total - lost


def _priced(layer: PrunableLayer) -> tuple[str, ...]:
    """The units whose output width is the layer's channel count: its members, or an attention site."""
    return (layer.name,) if layer.kind in ATTENTION_PARTS else layer.members


def _sliced(module: nn.Module, positions: int, part: str | None = None) -> _Sliced:
    biases = int(getattr(module, "bias", None) is not None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        affine = sum(getattr(module, p) is not None for p in ("weight", "bias"))
        return _Sliced("batchnorm", module.num_features, 0, 1, positions, affine)
    if isinstance(module, nn.Conv2d):
        window = math.prod(module.kernel_size)
        if module.groups > 1:  # depthwise or grouped: whole groups go, each group's inputs stay
            return _Sliced("grouped", module.out_channels, module.in_channels // module.groups, window, positions, biases)
        return _Sliced("conv", module.out_channels, module.in_channels, window, positions, biases)
    if _is_linear(module):
        features_in, features_out = linear_features(module)
        return _Sliced("linear", features_out, features_in, 1, positions, biases)
    if qualified_class(type(module)) == RESPONSE_NORM:  # a weight and a bias per channel, priced like a BatchNorm's
        return _Sliced("batchnorm", module.weight.numel(), 0, 1, positions, 2)
    if isinstance(module, nn.MultiheadAttention):
        # A value channel is a row of the input projection (and its bias) and a column of
        # out_proj; a query/key channel a query row and a key row (and their biases); each
        # embed_dim wide. The site's "out width" is its channels.
        bias = int(module.in_proj_bias is not None)
        if part == "query_key":
            return _Sliced("query_key", module.embed_dim, module.embed_dim, 2, positions, 2 * bias)
        return _Sliced("attention", module.embed_dim, module.embed_dim, 2, positions, bias)
    raise TypeError(f"cannot price module {type(module).__name__}")  # structure slices no other


def _is_linear(module: nn.Module) -> bool:
    """A Linear, a subclass, or a layer computing what one does (HF's Conv1D, its weight stored (in, out))."""
    return isinstance(module, nn.Linear) or layer_base(module) is nn.Linear


def _cost(module: _Sliced, out_width: int, in_width: int, cost: Cost) -> int:
    weights = out_width * in_width * module.window
    if cost == "flops":
        return 2 * weights * module.positions
    return weights + module.biases * out_width


def _output_positions(network: nn.Module, modules: dict[str, nn.Module], example_inputs: torch.Tensor) -> dict[str, int]:
    """Per module, how many output positions one example gives it (``H*W``; tokens of a Linear)."""
    positions: dict[str, int] = {}

    def record(name):
        def hook(module, args, output):
            if isinstance(module, nn.MultiheadAttention):
                # (output, weights): every token of the one example, whichever layout
                positions[name] = math.prod(output[0].shape[:-1])
                return
            shape = output.shape
            per_channel = shape[1:-1] if _is_linear(module) else shape[2:]
            positions[name] = math.prod(per_channel)

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    modes = {module: module.training for module in network.modules()}
    try:
        with torch.no_grad():
            network.eval()(example_inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return positions


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


def _allocate(network, example_inputs, widths, candidates, counts_for, budget, cost, layers, price) -> dict[str, int]:
    _check(budget, cost)
    if price is None:
        price = CostModel(network, layers, example_inputs, cost)
    elif price.cost != cost:
        raise ValueError(f"price counts {price.cost!r}, but the budget is of the {cost!r}.")
    limit = budget * price.total

    def fits(counts: dict[str, int]) -> bool:
        return price(counts) <= limit

    chosen = _largest_fitting(candidates, counts_for, fits)
    if chosen is None:
        smallest = price({layer.name: layer.block for layer in layers if layer.name in widths}) / price.total
        raise ValueError(
            f"budget {budget:g} of the {cost} cannot be met: keeping one channel (or group) per layer already "
            f"costs {smallest:.4g} of them, the smallest achievable."
        )
    return counts_for(chosen)


def budget_counts(
    network: nn.Module,
    scores: Mapping[str, torch.Tensor],
    example_inputs: torch.Tensor,
    *,
    budget: float,
    cost: Cost = DEFAULT_COST,
    layers: Sequence[PrunableLayer] | None = None,
    price: CostModel | None = None,
) -> dict[str, int]:
    """Keep counts for every scored layer from one global threshold on ``score * width``.

    Args:
        network: the network to prune (not modified).
        scores: ``{layer: one score per channel}``, e.g. posterior means (which sum to 1 per
            layer, so ``score * width`` is 1 on average in every layer).
        example_inputs: a batch of inputs to trace and measure the network with.
        budget: the fraction of the network's ``cost`` the pruned network may keep.
        cost: ``"params"`` or ``"flops"`` (as :mod:`pyro_dirichlet.measure` counts them).
        layers: the network's prunable layers from
            :func:`~pyro_dirichlet.structure.find_prunable_layers`, if the caller has them
            (e.g. ``DirichletSwitches(...).layers``); None traces the network once here.
        price: the network's :class:`CostModel` for ``cost`` over ``layers``, if the caller
            keeps one (:class:`pyro_dirichlet.Pruner` does, for budget after budget); None
            builds it here (a forward pass and a cost count).

    Returns:
        ``{layer: channels to keep}``, at least one per layer, for :func:`plan_keep`.

    Raises:
        ValueError: the budget is not a fraction, or even one channel per layer exceeds it
            (the message gives the smallest achievable fraction).
    """
    _check(budget, cost)
    if layers is None:
        layers = find_prunable_layers(network, example_inputs, layers=list(scores))
    blocks = {layer.name: layer.block for layer in layers if layer.name in scores}
    normalised = {}
    for layer, s in scores.items():
        s = torch.as_tensor(s, dtype=torch.float64) * len(s)
        block = blocks.get(layer, 1)
        # A block (the group of a grouped convolution) goes whole: its channels share its mean.
        normalised[layer] = s.reshape(-1, block).mean(dim=1).repeat_interleave(block)
    widths = {layer: len(s) for layer, s in normalised.items()}
    # Thresholds from the highest score down: each step keeps one more channel somewhere.
    thresholds = torch.cat(list(normalised.values())).unique().flip(0).tolist()

    def counts_for(threshold: float) -> dict[str, int]:
        return {
            layer: max(blocks.get(layer, 1), int((s >= threshold).sum())) for layer, s in normalised.items()
        }

    return _allocate(network, example_inputs, widths, thresholds, counts_for, budget, cost, layers, price)


def uniform_counts(
    network: nn.Module,
    widths: Mapping[str, int],
    example_inputs: torch.Tensor,
    *,
    budget: float,
    cost: Cost = DEFAULT_COST,
    layers: Sequence[PrunableLayer] | None = None,
    price: CostModel | None = None,
) -> dict[str, int]:
    """Keep counts that keep the same fraction of every layer, the largest that fits ``budget``.

    ``layers`` and ``price`` as in :func:`budget_counts`.
    """
    _check(budget, cost)
    if layers is None:
        layers = find_prunable_layers(network, example_inputs, layers=list(widths))
    blocks = {layer.name: layer.block for layer in layers}
    steps = max(widths.values())
    fractions = [i / steps for i in range(1, steps + 1)]

    def counts_for(fraction: float) -> dict[str, int]:
        # rounded to whole blocks where a layer feeds a grouped convolution
        return {
            layer: (b := blocks.get(layer, 1)) * max(1, round(fraction * width / b))
            for layer, width in widths.items()
        }

    return _allocate(network, example_inputs, dict(widths), fractions, counts_for, budget, cost, layers, price)


def keep_from_budget(
    network: nn.Module,
    scores: Mapping[str, torch.Tensor],
    example_inputs: torch.Tensor,
    *,
    budget: float,
    cost: Cost = DEFAULT_COST,
    layers: Sequence[PrunableLayer] | None = None,
) -> dict[str, list[int]]:
    """:func:`budget_counts` then :func:`plan_keep`: the channels to keep under a global budget."""
    if layers is None:
        layers = find_prunable_layers(network, example_inputs, layers=list(scores))
    counts = budget_counts(network, scores, example_inputs, budget=budget, cost=cost, layers=layers)
    return plan_keep(scores, counts, blocks={layer.name: layer.block for layer in layers})
