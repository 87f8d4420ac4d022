"""The oracle every ranking is measured against: what removing each channel alone costs.

A criterion is good when the channels it ranks low are the ones the network can lose. The
direct measurement of that is the *removal cost* of a channel: the increase of the mean
cross-entropy on held-out data when that channel alone is zeroed at its switch points
(every member's, for a coupling group; the same places the Dirichlet switches and the
calibration scales act, :func:`pyro_dirichlet.repair.calibrate.scaled_channels`). It is exact --
no Taylor expansion -- and costs one forward pass over the data per channel, so it is a
measuring instrument for studies and checks, not a criterion for large networks.

A channel whose removal changes no logit of any example is *inert* (a ReLU unit that never
fires, a channel nothing downstream reads): every sensible ranking puts it below every
channel that matters.

    effects = removal_effects(network, layers, data.validation)
    effects.cost["conv1"]      # float64, one loss increase per channel
    effects.inert["conv1"]     # bool, True where removal changes no output
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from tqdm.auto import tqdm

from pyro_dirichlet.repair.calibrate import scaled_channels
from pyro_dirichlet.data import BatchSource, iterate_batches
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.structure.attention import ATTENTION_PARTS

__all__ = ["RemovalEffects", "removal_cost", "removal_effects"]


@dataclass(frozen=True)
class RemovalEffects:
    """What removing each channel alone does, per layer.

    Attributes:
        cost: ``{layer: float64 tensor}``, the mean cross-entropy increase (nats) on the data
            when the channel alone is zeroed; negative where the network does better without it.
        inert: ``{layer: bool tensor}``, True where zeroing the channel changes no logit of
            any example (to float32 rounding: at most ``tolerance`` in absolute value).
        baseline_loss: the unmodified network's mean cross-entropy on the same data.
        examples: how many examples the effects were measured on.
    """

    cost: dict[str, Tensor]
    inert: dict[str, Tensor]
    baseline_loss: float
    examples: int


def removal_effects(
    network: nn.Module,
    layers: Sequence[PrunableLayer],
    data: BatchSource,
    *,
    max_examples: int | None = 2000,
    batch_size: int = 128,
    tolerance: float = 1e-6,
    progress: bool = False,
) -> RemovalEffects:
    """Remove each channel of each layer alone and measure the loss increase on ``data``.

    Args:
        network: the trained network; run in eval mode without gradients, left as it was.
        layers: its prunable layers (:func:`~pyro_dirichlet.structure.find_prunable_layers`).
        data: labelled held-out examples (a ``Split`` or an iterable of batches); the first
            ``max_examples`` are read once and kept, in order.
        max_examples: how many examples to measure on (``None``: all of ``data``).
        batch_size: examples per forward pass (the graph path keeps every intermediate value of one batch).
        tolerance: the largest absolute logit change that still counts as none (inert).
        progress: a progress bar over the channels.

    Raises:
        ValueError: ``data`` yields no examples, or ``max_examples``/``batch_size`` is not positive.

    Example:
        >>> effects = removal_effects(net, find_prunable_layers(net, x[:2]), data.validation)  # doctest: +SKIP
        >>> int(effects.inert["fc1"].sum())  # units that never fire  # doctest: +SKIP
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
    for name, value in (("max_examples", max_examples), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    device = next(iter(network.parameters()), torch.empty(0)).device
    batches = _held_batches(data, batch_size, max_examples, device)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            reference = [network(images).float() for images, _ in batches]
            examples = sum(len(labels) for _, labels in batches)
            baseline = _summed_loss(reference, batches) / examples
            cost, inert = {}, {}
            total = sum(layer.channels for layer in layers)
            tails = _Tails(network, layers)
            with tqdm(total=total, desc="removal cost", unit="channel", disable=not progress, leave=False) as bar:
                for layer in layers:
                    losses = torch.zeros(layer.channels, dtype=torch.float64)
                    changes = torch.zeros(layer.channels, dtype=torch.float64)
                    for (images, labels), old in zip(batches, reference):
                        for channel, logits in enumerate(tails.without_each_channel(layer, images)):
                            losses[channel] += float(F.cross_entropy(logits, labels, reduction="sum"))
                            changes[channel] = max(float(changes[channel]), float((logits - old).abs().max()))
                    cost[layer.name] = losses / examples - baseline
                    inert[layer.name] = changes <= tolerance
                    bar.update(layer.channels)
    finally:
        network.train(was_training)
    return RemovalEffects(cost=cost, inert=inert, baseline_loss=baseline, examples=examples)


def removal_cost(
    network: nn.Module, layers: Sequence[PrunableLayer], data: BatchSource, **options
) -> dict[str, Tensor]:
    """``{layer: loss increase per channel}``: :func:`removal_effects`'s ``cost`` alone (same options)."""
    return removal_effects(network, layers, data, **options).cost


class _Tails:
    """Runs the network with one channel zeroed, recomputing only what comes after the channel.

    Where the network traces with ``torch.fx`` and the layer has one switch point, the graph
    is run once per batch with every value recorded, then once per channel from the switch
    point on (``Interpreter.run(initial_env=...)`` skips every node given a value): a
    late layer's channels cost a fraction of a forward pass each. Otherwise (untraceable
    networks, coupling groups, attention sites) every channel gets a whole forward pass
    under :func:`~pyro_dirichlet.repair.calibrate.scaled_channels`. Both give the same logits.
    """

    def __init__(self, network: nn.Module, layers: Sequence[PrunableLayer]) -> None:
        self.network, self.layers = network, list(layers)
        try:
            self.graph: fx.GraphModule | None = fx.symbolic_trace(network)
        except Exception:  # any network fx cannot follow takes the slow path
            self.graph = None
        self._images: Tensor | None = None
        self._values: dict[fx.Node, object] = {}

    def _node(self, layer: PrunableLayer) -> fx.Node | None:
        if self.graph is None or layer.kind in ATTENTION_PARTS or len(layer.multiply_points) != 1 or layer.offset:
            return None
        calls = [node for node in self.graph.graph.nodes if node.op == "call_module" and node.target == layer.switch_points[0]]
        return calls[0] if len(calls) == 1 else None

    def _record(self, images: Tensor) -> dict[fx.Node, object]:
        if self._images is not images:
            values: dict[fx.Node, object] = {}

            class Recorder(fx.Interpreter):
                def run_node(self, node: fx.Node) -> object:
                    values[node] = result = super().run_node(node)
                    return result

            Recorder(self.graph).run(images)
            self._images, self._values = images, values
        return self._values

    def without_each_channel(self, layer: PrunableLayer, images: Tensor):
        """Yield the logits (float32) with channel 0, 1, ... of ``layer`` zeroed, in turn."""
        node = self._node(layer)
        if node is None:
            for channel in range(layer.channels):
                scale = torch.ones(layer.channels, device=images.device)
                scale[channel] = 0.0
                with scaled_channels(self.network, [layer], {layer.name: scale}):
                    yield self.network(images).float()
            return
        values = self._record(images)
        order = list(self.graph.graph.nodes)
        before = {n: values[n] for n in order[: order.index(node)]}
        output = values[node]
        shape = layer.broadcast_shape(output.dim())
        for channel in range(layer.channels):
            mask = torch.ones(layer.channels, device=output.device, dtype=output.dtype)
            mask[channel] = 0.0
            env = {**before, node: output * mask.view(shape)}
            yield fx.Interpreter(self.graph).run(images, initial_env=env).float()


def _held_batches(data: BatchSource, batch_size: int, limit: int | None, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    held, count = [], 0
    for batch in iterate_batches(data, batch_size, shuffle=False, name="data"):
        take = batch.inputs if limit is None else batch.inputs[: limit - count]
        held.append((take.to(device), batch.targets[: len(take)].to(device)))
        count += len(take)
        if limit is not None and count >= limit:
            break
    if count == 0:
        raise ValueError("data yielded no examples to measure removal costs on.")
    return held


def _summed_loss(logits: list[Tensor], batches: list[tuple[Tensor, Tensor]]) -> float:
    return sum(float(F.cross_entropy(out, labels, reduction="sum")) for out, (_, labels) in zip(logits, batches))
