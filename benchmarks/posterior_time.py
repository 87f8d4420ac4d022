"""Seconds to draw a switch posterior and summarise it with HDIs, for every switch of a network.

The concentrations are synthetic (log-normal around 1, seeded), shaped like a fit of the
network's switched layers; drawing and summarising cost the same whatever their values.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from benchmarks.workloads import Workload
from pyro_dirichlet.measure import Stopwatch
from pyro_dirichlet.posterior import layer_summaries, sample_posterior
from pyro_dirichlet.structure import find_prunable_layers

__all__ = ["PosteriorTiming", "measure_posterior"]


@dataclass(frozen=True)
class PosteriorTiming:
    """Seconds of ``sample_posterior`` and of ``layer_summaries`` (ArviZ summary with HDIs), per repeat.

    Attributes:
        model: registry name.
        layers: switched layers.
        channels: switches in all (one per channel or feature).
        num_samples: draws per switch.
        sample_seconds: ``sample_posterior`` per repeat.
        summary_seconds: ``layer_summaries`` (which runs ``summary_table``) per repeat.
        total_seconds: median over repeats of their sum.
    """

    model: str
    layers: int
    channels: int
    num_samples: int
    sample_seconds: list[float]
    summary_seconds: list[float]
    total_seconds: float

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "layers": self.layers,
            "channels": self.channels,
            "num_samples": self.num_samples,
            "sample_seconds": self.sample_seconds,
            "summary_seconds": self.summary_seconds,
            "total_seconds": self.total_seconds,
        }


def measure_posterior(workload: Workload, *, num_samples: int, repeats: int) -> PosteriorTiming:
    """Draw ``num_samples`` of every switch of the workload's network and summarise them, ``repeats`` times.

    One untimed round first: ArviZ and xarray load lazily on their first call.
    """
    network = workload.build()
    layers = find_prunable_layers(network, workload.data.train.images[:2])
    generator = torch.Generator().manual_seed(0)
    concentrations = {layer.name: torch.randn(layer.channels, generator=generator).exp() for layer in layers}

    def once() -> tuple[float, float]:
        with Stopwatch() as sampling:
            posterior = sample_posterior(concentrations, num_samples=num_samples, seed=0)
        with Stopwatch() as summarising:
            summaries = layer_summaries(posterior)
        assert len(summaries) == len(layers)
        return sampling.seconds, summarising.seconds

    once()
    times = [once() for _ in range(repeats)]
    return PosteriorTiming(
        model=workload.name,
        layers=len(layers),
        channels=sum(layer.channels for layer in layers),
        num_samples=num_samples,
        sample_seconds=[sample for sample, _ in times],
        summary_seconds=[summary for _, summary in times],
        total_seconds=statistics.median(sample + summary for sample, summary in times),
    )
