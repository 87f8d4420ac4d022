"""Pruning plans: which channels each layer keeps, given importance scores and a target width."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

__all__ = ["Target", "per_layer", "plan_keep", "keep_counts"]

#: Per-layer target: an ``int`` is a number of channels to keep, a ``float`` in (0, 1] a
#: fraction of the layer's width. Layers left out are kept whole. A bare ``float`` in (0, 1]
#: is one fraction for every layer (``0.5``: keep half of each layer's channels).
Target = Mapping[str, int | float] | float


def per_layer(target: Target, layers: Iterable[str]) -> dict[str, int | float]:
    """``target`` as a mapping: a global fraction applies to every layer in ``layers``.

    Example:
        >>> per_layer(0.5, ["conv1", "fc1"])
        {'conv1': 0.5, 'fc1': 0.5}
    """
    if isinstance(target, Mapping):
        return dict(target)
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise TypeError(f"target must be a mapping {{layer: count or fraction}} or one fraction, got {target!r}.")
    if not (math.isfinite(target) and 0 < target <= 1):
        raise ValueError(f"a global target must be a fraction in (0, 1] of every layer, got {target!r}.")
    return {layer: float(target) for layer in layers}


def keep_counts(
    widths: Mapping[str, int], target: Target, *, blocks: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Resolve ``target`` into a channel count per layer named in it.

    A fraction rounds to the nearest count but never below one channel: a layer is never
    emptied. A layer with a block size (``blocks``, e.g. ``PrunableLayer.block`` of a layer
    feeding a grouped convolution) rounds its count, a fraction's or an int's, to the nearest
    multiple of the block, never below one block.

    Raises:
        ValueError: an unknown layer, a count outside ``[1, width]``, or a fraction outside (0, 1].
    """
    target = per_layer(target, widths)
    unknown = sorted(set(target) - set(widths))
    if unknown:
        raise ValueError(f"target names unknown layer(s) {unknown}; the prunable layers are {sorted(widths)}.")
    counts = {}
    for layer, value in target.items():
        width = widths[layer]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"target for layer {layer!r} must be an int count or a float fraction, got {value!r}.")
        if isinstance(value, int):
            if not 1 <= value <= width:
                raise ValueError(
                    f"target for layer {layer!r} keeps {value} channels, but it must keep between 1 and its width {width}."
                )
            counts[layer] = value
        else:
            if not (math.isfinite(value) and 0 < value <= 1):
                raise ValueError(f"target fraction for layer {layer!r} must be in (0, 1], got {value}.")
            counts[layer] = max(1, round(value * width))
    for layer, block in (blocks or {}).items():
        if layer in counts and block > 1:
            if widths[layer] % block:
                raise ValueError(f"layer {layer!r} has width {widths[layer]}, not a multiple of its block {block}.")
            counts[layer] = max(block, block * round(counts[layer] / block))
    return counts


def plan_keep(
    scores: Mapping[str, torch.Tensor], target: Target, *, blocks: Mapping[str, int] | None = None
) -> dict[str, list[int]]:
    """Keep each named layer's highest-scoring channels.

    Args:
        scores: ``{layer: one score per channel}`` from an importance criterion.
        target: counts or fractions per layer (see :data:`Target`).
        blocks: ``{layer: block size}`` for layers whose channels go in aligned blocks
            (``PrunableLayer.block``); such a layer keeps its blocks of highest total score,
            its count rounded to whole blocks. Layers left out go channel by channel.

    Returns:
        ``{layer: sorted indices of the channels to keep}`` for the layers in ``target``;
        ties go to the lower channel index.

    Example:
        >>> plan_keep({"fc1": torch.tensor([0.1, 0.5, 0.4])}, {"fc1": 2})
        {'fc1': [1, 2]}
    """
    widths = {layer: int(torch.as_tensor(score).numel()) for layer, score in scores.items()}
    blocks = dict(blocks or {})
    counts = keep_counts(widths, target, blocks=blocks)
    keep = {}
    for layer, count in counts.items():
        score = torch.as_tensor(scores[layer], dtype=torch.float64).flatten()
        if not bool(torch.isfinite(score).all()):
            raise ValueError(f"scores for layer {layer!r} contain NaN or infinite values.")
        block = blocks.get(layer, 1)
        order = torch.sort(-score.reshape(-1, block).sum(dim=1), stable=True).indices
        chosen = order[: count // block].reshape(-1, 1) * block + torch.arange(block)
        keep[layer] = sorted(chosen.reshape(-1).tolist())
    return keep
