"""Criteria read from the weights alone: each channel's filter L1 norm and its BatchNorm scale."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pyro_dirichlet.criteria.registry import Scores, register_criterion
from pyro_dirichlet.data import BatchSource
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.structure.attention import ATTENTION_PARTS
from pyro_dirichlet.surgery.slicing import is_transposed_linear

__all__ = ["BatchNormScale", "L1Norm", "network_modules"]


def network_modules(network: nn.Module) -> dict[str, nn.Module]:
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
    # Hugging Face's Conv1D stores its weight (in, out); a fused projection's channels are a slice.
    weight = module.weight.T if is_transposed_linear(module) else module.weight
    return weight.narrow(0, layer.offset, layer.channels)


@register_criterion("l1-norm")
@dataclass(frozen=True)
class L1Norm:
    """L1 norm of each output channel's filter (Li et al. 2017, "Pruning filters for efficient ConvNets")."""

    def __call__(self, network: nn.Module, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores:
        modules = network_modules(network)
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
        modules = network_modules(network)
        scores = {}
        for layer in layers:
            norm = modules[layer.switch_at]
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.weight is None:
                raise ValueError(f"layer {layer.name!r} has no affine BatchNorm after it, so it has no BatchNorm scale to rank by.")
            scores[layer.name] = norm.weight.detach().abs().to(torch.float64).cpu()
        return scores
