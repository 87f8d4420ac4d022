"""Pyro's share of an SVI step: ``fit``'s steps against the same step written in plain torch.

The plain-torch step (:class:`TorchSVI`) does what ``fit`` does, without Pyro: a
reparameterised Dirichlet sample of every switch from ``exp(log concentration)``, the same
switch multiply (:meth:`DirichletSwitches.switched`, the same hooks) under the same
:func:`~pyro_dirichlet.infer.fit.network_context` (fast pooling on the CPU), the
categorical log-likelihood scaled to the data size, the closed-form Dirichlet KL to the
prior, and one Adam step per layer's log-concentrations (as ``pyro.optim.Adam`` keeps one
``torch.optim.Adam`` per parameter). Whatever ``fit``'s steps cost beyond it -- tracing,
the param store, the ELBO's bookkeeping, the progress bar -- is
Pyro's (and ``fit``'s) overhead.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pyro
import torch
from torch.distributions import Dirichlet, kl_divergence
from torch.nn import functional as F

from benchmarks.workloads import Workload
from pyro_dirichlet.data import Split, minibatches
from pyro_dirichlet.infer.fit import FitConfig, fit, network_context
from pyro_dirichlet.infer.guide import DEFAULT_INIT_CONCENTRATION
from pyro_dirichlet.measure import Stopwatch
from pyro_dirichlet.infer.switches import DirichletSwitches

__all__ = ["StepOverhead", "TorchSVI", "measure_overhead"]


class TorchSVI:
    """The SVI step of :func:`pyro_dirichlet.fit` in plain torch (no Pyro), for comparison.

    Args:
        switches: the frozen network with its switched layers and priors.
        size: the data size the minibatch log-likelihood is scaled to.
        lr: Adam's learning rate on the log-concentrations.
        init_concentration: the guide's initial concentration of every channel.

    Example:
        >>> step = TorchSVI(switches, size=55000)  # doctest: +SKIP
        >>> loss = step(images, labels)  # doctest: +SKIP
    """

    def __init__(self, switches: DirichletSwitches, *, size: int, lr: float = 0.1,
                 init_concentration: float = DEFAULT_INIT_CONCENTRATION) -> None:
        device = next(switches.network.parameters()).device
        self.switches = switches
        self.size = size
        self.log_concentration = {
            layer.name: torch.full((layer.channels,), math.log(init_concentration), device=device, requires_grad=True)
            for layer in switches.layers
        }
        self.prior = {layer.name: switches.priors(device)[layer.name].concentration for layer in switches.layers}
        self.optimizers = [torch.optim.Adam([value], lr=lr) for value in self.log_concentration.values()]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One step on a minibatch; returns the loss (the negative ELBO estimate)."""
        concentration = {name: value.exp() for name, value in self.log_concentration.items()}
        switch = {name: Dirichlet(value, validate_args=False).rsample() for name, value in concentration.items()}
        with self.switches.switched(switch) as network, network_context(FitConfig(), images.device):
            logits = network(images)
        log_likelihood = -F.cross_entropy(logits.float(), labels, reduction="sum") * (self.size / len(labels))
        kl = sum(
            kl_divergence(Dirichlet(concentration[name], validate_args=False), Dirichlet(self.prior[name], validate_args=False))
            for name in concentration
        )
        loss = kl - log_likelihood
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss.item()  # fit reads every step's ELBO too


@dataclass(frozen=True)
class StepOverhead:
    """Seconds per SVI step through ``fit`` and in plain torch, and Pyro's share.

    Attributes:
        model: registry name.
        batch_size: images per step.
        steps: steps per timed run.
        svi_step_seconds: ``fit``'s seconds per step, one value per repeat.
        torch_step_seconds: the plain-torch step's seconds per step, one value per repeat.
        overhead_fraction: median over repeats of ``(svi - torch) / svi``.
    """

    model: str
    batch_size: int
    steps: int
    svi_step_seconds: list[float]
    torch_step_seconds: list[float]
    overhead_fraction: float

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "svi_step_seconds": self.svi_step_seconds,
            "torch_step_seconds": self.torch_step_seconds,
            "svi_step_seconds_median": statistics.median(self.svi_step_seconds),
            "torch_step_seconds_median": statistics.median(self.torch_step_seconds),
            "pyro_overhead_fraction": self.overhead_fraction,
        }


def _fit_seconds_per_step(switches: DirichletSwitches, data: Split, batch_size: int, device: str, size: int) -> float:
    pyro.clear_param_store()
    config = FitConfig(epochs=1, batch_size=batch_size, seed=0, device=device, progress=False, effective_data_size=size)
    result = fit(switches, data, config)
    return result.seconds / result.steps


def _torch_seconds_per_step(switches: DirichletSwitches, data: Split, batch_size: int, device: str, size: int) -> float:
    step = TorchSVI(switches, size=size)
    generator = torch.Generator().manual_seed(0)
    batches = list(minibatches(data, batch_size, shuffle=True, generator=generator))
    with Stopwatch(device) as watch:
        for _, images, labels in batches:
            step(images, labels)
    return watch.seconds / len(batches)


def measure_overhead(workload: Workload, *, steps: int, repeats: int, device: str) -> StepOverhead:
    """``repeats`` alternating runs of ``steps`` SVI steps through ``fit`` and in plain torch.

    Both see the same minibatches of the workload's train split, already on ``device``,
    and the same frozen network; each kind runs one untimed step first (lazy initialisation).
    """
    batch = workload.batch_size
    data = workload.data.train
    data = Split(data.images[: steps * batch], data.labels[: steps * batch]).to(device)
    warmup = Split(data.images[:batch], data.labels[:batch])
    size = len(workload.data.train)
    switches = DirichletSwitches(workload.build(), data.images[:2].cpu()).to(device)
    _fit_seconds_per_step(switches, warmup, batch, device, size)
    _torch_seconds_per_step(switches, warmup, batch, device, size)
    svi, plain = [], []
    for _ in range(repeats):
        svi.append(_fit_seconds_per_step(switches, data, batch, device, size))
        plain.append(_torch_seconds_per_step(switches, data, batch, device, size))
    return StepOverhead(
        model=workload.name,
        batch_size=batch,
        steps=math.ceil(len(data) / batch),
        svi_step_seconds=svi,
        torch_step_seconds=plain,
        overhead_fraction=statistics.median((s - t) / s for s, t in zip(svi, plain)),
    )
