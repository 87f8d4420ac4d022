"""First-order Taylor importance: how much the loss moves with each channel's activation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.criteria.magnitude import network_modules
from pyro_dirichlet.criteria.registry import Scores, register_criterion
from pyro_dirichlet.data import BatchSource, iterate_batches
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.structure.attention import ATTENTION_PARTS
from pyro_dirichlet.surgery.attention import AttentionTapHook

__all__ = ["Taylor"]


@register_criterion("taylor")
@dataclass(frozen=True)
class Taylor:
    """First-order Taylor importance (Molchanov et al. 2017): ``E_x |sum_hw a * dL/da|`` per channel.

    The activation ``a`` is each layer's output where its switch would sit; the loss is the
    cross-entropy on ``batches`` minibatches of ``data`` (``None``: all of it, so it sees as
    much data as a one-epoch fit). The network is used in eval mode and its parameters are
    left untouched (no parameter gradients are kept).

    Attributes:
        batches: minibatches to average over, or ``None`` for one pass over ``data``.
        batch_size: examples per minibatch sliced from a ``Split`` (a loader's batches are its own).
        seed: the seed of a ``Split``'s shuffle (a loader's order is its own).
    """

    batches: int | None = 10
    batch_size: int = 128
    seed: int = 0

    def __call__(self, network: nn.Module, layers: Sequence[PrunableLayer], data: BatchSource | None = None) -> Scores:
        if data is None:
            raise TypeError("the taylor criterion needs data: a Split or an iterable of (inputs, targets) batches.")
        modules = network_modules(network)
        was_training = network.training
        network.eval()
        device = next(network.parameters()).device
        sums = {layer.name: torch.zeros(layer.channels, dtype=torch.float64) for layer in layers}
        activations: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(module, inputs, output):
                output.retain_grad()
                activations[name] = output

            return hook

        handles = [
            AttentionTapHook(modules[layer.switch_at], keep(layer.name), ATTENTION_PARTS[layer.kind])
            if layer.kind in ATTENTION_PARTS
            else modules[layer.switch_at].register_forward_hook(keep(layer.name))
            for layer in layers
        ]
        seen = 0
        try:
            generator = torch.Generator().manual_seed(self.seed)
            batches = iterate_batches(data, self.batch_size, shuffle=True, generator=generator, name="data")
            for step, (images, labels, _) in enumerate(batches):
                if step == self.batches:
                    break
                images = images.to(device).requires_grad_(True)  # so activations carry gradients even if weights are frozen
                loss = F.cross_entropy(network(images), labels.to(device), reduction="sum")
                loss.backward()
                for layer in layers:
                    a = activations[layer.name]
                    product = (a * a.grad).narrow(layer.channel_dim, layer.offset, layer.channels)
                    product = product.movedim(layer.channel_dim, 1)  # a Linear's channels are last
                    contribution = product.flatten(2).sum(2) if a.dim() > 2 else product
                    sums[layer.name] += contribution.abs().sum(0).detach().to(torch.float64).cpu()
                seen += len(labels)
        finally:
            for handle in handles:
                handle.remove()
            network.zero_grad(set_to_none=True)
            network.train(was_training)
        return {name: total / max(seen, 1) for name, total in sums.items()}
