"""Inference latency and peak memory of a network pruned to its registry widths, against the unpruned one.

The pruned network comes from :func:`pyro_dirichlet.prune_channels` keeping a seeded random
choice of each layer's channels at the registry's ``default_keep`` widths (the Dirichlet
paper's widths for VGG-16): which channels are kept does not change the cost. Both networks
run plainly (eval mode, ``torch.no_grad``, the default memory layout, nothing fused), in this
one process, alternating. Peak memory is :func:`pyro_dirichlet.measure.peak_memory_bytes` of
one forward pass on the batch, after warm-up passes: the most bytes of
tensors held at once beyond the weights and the input (the activations) -- on the CPU from
torch.profiler's allocation records, on CUDA from ``torch.cuda.max_memory_allocated``. The
weights are reported apart as ``weight_bytes`` (float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.workloads import Workload
from pyro_dirichlet.measure import count_flops, count_parameters, latency_seconds, peak_memory_bytes
from pyro_dirichlet.structure import find_prunable_layers
from pyro_dirichlet.surgery import prune_channels

__all__ = ["InferenceTiming", "measure_inference", "pruned_copy"]


def pruned_copy(network: nn.Module, widths: dict[str, int], example: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """``network`` pruned to ``widths`` (units kept per layer), keeping a seeded random choice of channels."""
    generator = torch.Generator().manual_seed(seed)
    channels = {layer.name: layer.channels for layer in find_prunable_layers(network, example)}
    keep = {name: torch.randperm(channels[name], generator=generator)[:kept].sort().values for name, kept in widths.items()}
    return prune_channels(network, keep, example).eval()


@dataclass(frozen=True)
class InferenceTiming:
    """Latency and peak memory per batch size, unpruned (``full``) and pruned.

    Attributes:
        model: registry name.
        widths: units kept per pruned layer.
        parameters: ``{"full": n, "pruned": n}``.
        flops: FLOPs per example, ``{"full": n, "pruned": n}``.
        seconds: ``{"full": {batch: median seconds}, "pruned": {...}}``.
        peak_bytes: ``{"full": {batch: bytes}, "pruned": {...}}``; see the module docstring.
        memory_measure: what ``peak_bytes`` counts on this device.
    """

    model: str
    widths: dict[str, int]
    parameters: dict[str, int]
    flops: dict[str, int]
    seconds: dict[str, dict[int, float]]
    peak_bytes: dict[str, dict[int, int]]
    memory_measure: str

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "widths": self.widths,
            "parameters": self.parameters,
            "weight_bytes": {name: 4 * count for name, count in self.parameters.items()},
            "flops": self.flops,
            # JSON keys are strings: the batch sizes become "1", "256".
            "seconds": {name: {str(b): s for b, s in per.items()} for name, per in self.seconds.items()},
            "peak_bytes": {name: {str(b): m for b, m in per.items()} for name, per in self.peak_bytes.items()},
            "memory_measure": self.memory_measure,
        }


def measure_inference(workload: Workload, *, batches: tuple[int, ...], repeats: int, device: str) -> InferenceTiming:
    """Median forward seconds and peak memory of the full and the pruned network, per batch size."""
    full = workload.build().eval()
    example = workload.data.train.images[:2]
    pruned = pruned_copy(full, workload.default_keep, example)
    networks = {"full": full.to(device), "pruned": pruned.to(device)}
    generator = torch.Generator().manual_seed(0)
    shape = tuple(workload.data.train.images.shape[1:])
    seconds: dict[str, dict[int, float]] = {name: {} for name in networks}
    peaks: dict[str, dict[int, int]] = {name: {} for name in networks}
    for batch in batches:
        images = torch.randn(batch, *shape, generator=generator).to(device)
        for name, network in networks.items():

            def forward(network: nn.Module = network) -> None:
                with torch.no_grad():
                    network(images)

            seconds[name][batch] = latency_seconds(network, images, repeats=repeats, warmup=2, device=device)
            peaks[name][batch] = peak_memory_bytes(forward, device=device)
    on_cuda = torch.device(device).type == "cuda"
    return InferenceTiming(
        model=workload.name,
        widths=dict(workload.default_keep),
        parameters={name: count_parameters(network) for name, network in networks.items()},
        flops={name: count_flops(network, example) for name, network in networks.items()},
        seconds=seconds,
        peak_bytes=peaks,
        memory_measure="peak bytes of CUDA tensors allocated during one forward, beyond those alive before"
        if on_cuda
        else "peak bytes of tensors alive at once during one forward (torch.profiler records), beyond those alive before",
    )
