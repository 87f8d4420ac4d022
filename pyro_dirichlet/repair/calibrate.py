"""Calibration after pruning: refit BatchNorm statistics and one scale per kept channel, then fold.

Whatever criterion chose the channels, the pruned network's activations have shifted: the
BatchNorms normalise by statistics of channels that are gone, and each kept channel now
carries some of what its dropped neighbours did. :func:`calibrate` gives every criterion the
same cheap repair: with the network frozen it fits one multiplicative scale per kept channel
(initialised at 1, at the switch points, where the Dirichlet fit puts its ``s_c * C``) by
cross-entropy on training data, then folds the scales into the weights with
:func:`pyro_dirichlet.surgery.fold_scales`. The result is a plain smaller ``nn.Module``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dirichlet.data import BatchSource, Split, iterate_batches
from pyro_dirichlet.precision import LIBRARY_PRECISION, autocast, check_precision
from pyro_dirichlet.structure import PrunableLayer, find_prunable_layers
from pyro_dirichlet.surgery import fold_scales
from pyro_dirichlet.structure.attention import ATTENTION_PARTS
from pyro_dirichlet.surgery.attention import AttentionTapHook

__all__ = ["CalibrationConfig", "Calibration", "calibrate", "recalibrate_batchnorm", "mean_loss", "scaled_channels"]


@dataclass(frozen=True)
class CalibrationConfig:
    """How much data and optimisation calibration gets.

    The defaults give the scales what the default SVI fit gets (one epoch at batch 128),
    so a criterion compared with calibration is compared at the Dirichlet fit's data cost.

    Attributes:
        steps: Adam steps on the scales; ``None``: one pass over the data.
        batch_size: examples per step (and per BatchNorm statistics batch).
        lr: Adam learning rate of the scales.
        batchnorm_batches: minibatches used to re-estimate BatchNorm running statistics
            (``0``: leave them as they are).
        check_batches: minibatches, fixed by ``seed``, on which the loss is measured before
            and after; a step that does not lower it is undone.
        seed: the seed of every shuffle.
        precision: the forward passes' precision, ``"fp32"``, ``"bf16"`` or ``"auto"``
            (:mod:`pyro_dirichlet.precision`); the scales, BatchNorm's statistics and the
            losses stay float32.
    """

    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-2
    batchnorm_batches: int = 50
    check_batches: int = 8
    seed: int = 0
    precision: str = LIBRARY_PRECISION

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0):
            raise ValueError(f"steps must be a non-negative int or None, got {self.steps!r}.")
        for name in ("batch_size", "check_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if isinstance(self.batchnorm_batches, bool) or not isinstance(self.batchnorm_batches, int) or self.batchnorm_batches < 0:
            raise ValueError(f"batchnorm_batches must be a non-negative int, got {self.batchnorm_batches!r}.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}.")


@dataclass
class Calibration:
    """What :func:`calibrate` returns.

    Attributes:
        network: the calibrated network, scales folded into its weights (a new module).
        scales: ``{layer: the fitted scale of each kept channel}`` (all ones if undone).
        loss_before: mean cross-entropy on the check batches before calibration.
        loss_after: the same after; never above ``loss_before``.
        batchnorm_recalibrated: whether re-estimated BatchNorm statistics were kept.
        scales_kept: whether the fitted scales were kept (they lowered the loss).
    """

    network: nn.Module
    scales: dict[str, Tensor]
    loss_before: float
    loss_after: float
    batchnorm_recalibrated: bool
    scales_kept: bool


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


def _batches(data: BatchSource, config: CalibrationConfig, count: int | None, salt: int) -> Iterator[tuple[Tensor, Tensor]]:
    # A Split is shuffled by the seed (a different order per use); a loader's order is its own.
    generator = torch.Generator().manual_seed(config.seed + salt)
    batches = iterate_batches(data, config.batch_size, shuffle=True, generator=generator, name="data")
    for step, (images, labels, _) in enumerate(batches):
        if step == count:
            return
        yield images, labels


def mean_loss(network: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], precision: str = LIBRARY_PRECISION) -> float:
    """Mean cross-entropy of ``network`` (in eval mode, no gradients, forward in ``precision``) over ``batches``, summed in float32."""
    device = _device(network)
    was_training = network.training
    network.eval()
    total = count = 0
    try:
        with torch.no_grad():
            for images, labels in batches:
                with autocast(precision, device):
                    scores = network(images.to(device))
                total += F.cross_entropy(scores.float(), labels.to(device), reduction="sum").item()
                count += len(labels)
    finally:
        network.train(was_training)
    return total / count


def recalibrate_batchnorm(network: nn.Module, batches: Sequence[tuple[Tensor, Tensor]] | Iterator,
                          precision: str = LIBRARY_PRECISION) -> nn.Module:
    """A copy of ``network`` whose BatchNorm running statistics are re-estimated on ``batches``.

    Every BatchNorm's statistics are reset and accumulated as a plain average over the
    batches (``momentum=None``) with the rest of the network in eval mode; weights are not
    touched. A network without BatchNorm comes back as an unchanged copy. The forward runs
    in ``precision``; the statistics accumulate in float32 (BatchNorm's buffers).
    """
    network = copy.deepcopy(network).eval()
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return network
    device = _device(network)
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad(), autocast(precision, device):
        for images, _ in batches:
            network(images.to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        norm.eval()
    return network


@contextmanager
def scaled_channels(network: nn.Module, layers: Sequence[PrunableLayer], scales: dict[str, Tensor]):
    """Multiply channel ``c`` at each layer's switch points by ``scales[layer][c]`` -- what fold_scales bakes in.

    Forward hooks for the duration of the block; ``network`` is unchanged afterwards. Layers
    without an entry in ``scales`` are left alone. Calibration fits the scales through it,
    :func:`pyro_dirichlet.criteria.removal_cost.removal_cost` zeroes one channel at a time with it.
    """
    modules = dict(network.named_modules())

    def hook(layer: PrunableLayer, scale: Tensor):
        def multiply(module, inputs, output):
            # Channels are dimension 1 of a conv's output, the last of a Linear's (also of
            # its (N, T, C) token outputs) and of an attention's values and queries.
            return layer.scaled(output, scale)

        return multiply

    handles = []
    for layer in layers:
        if layer.name not in scales:
            continue
        for point in layer.multiply_points:
            if layer.kind in ATTENTION_PARTS:
                part = ATTENTION_PARTS[layer.kind]
                handles.append(AttentionTapHook(modules[point], hook(layer, scales[layer.name]), part))
            else:
                handles.append(modules[point].register_forward_hook(hook(layer, scales[layer.name])))
    try:
        yield network
    finally:
        for handle in handles:
            handle.remove()


def calibrate(
    network: nn.Module,
    data: BatchSource,
    example_inputs: Tensor,
    config: CalibrationConfig = CalibrationConfig(),
    *,
    layers: Sequence[PrunableLayer] | None = None,
) -> Calibration:
    """Calibrate a pruned ``network`` on ``data``: BatchNorm statistics, then per-channel scales, folded.

    Each part is kept only if it lowers the mean cross-entropy on ``config.check_batches``
    fixed minibatches of ``data``, so calibration never makes the network worse on the
    data it saw. The network's own weights are frozen throughout; ``network`` itself is not
    modified.

    Args:
        network: the pruned network (any network with prunable layers).
        data: labelled training examples: a ``Split`` or any iterable of ``(inputs, targets)``
            batches such as a ``DataLoader``.
        example_inputs: a batch of inputs to trace the network with.
        config: data, steps and learning rate (:class:`CalibrationConfig`).
        layers: the layers whose channels get a scale; ``None``: every prunable layer.

    Returns:
        A :class:`Calibration` with the calibrated network and what was done.

    Example:
        >>> calibrated = calibrate(small, data.train, images[:2]).network  # doctest: +SKIP
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
    if isinstance(data, Split) and len(data) == 0:
        raise ValueError("data must hold at least one labelled training example, got an empty Split.")
    if not isinstance(config, CalibrationConfig):
        raise TypeError(f"config must be a CalibrationConfig, got {type(config).__name__}.")
    layers = list(find_prunable_layers(network, example_inputs) if layers is None else layers)
    check = list(_batches(data, config, config.check_batches, salt=1))
    if not check:
        raise ValueError("data yielded no batches to calibrate on.")
    current = copy.deepcopy(network).eval()
    loss_before = best = mean_loss(current, check, config.precision)

    recalibrated = False
    if config.batchnorm_batches and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in current.modules()):
        candidate = recalibrate_batchnorm(current, _batches(data, config, config.batchnorm_batches, salt=2),
                                          config.precision)
        loss = mean_loss(candidate, check, config.precision)
        if loss < best:
            current, best, recalibrated = candidate, loss, True

    device = _device(current)
    flags = [parameter.requires_grad for parameter in current.parameters()]
    for parameter in current.parameters():
        parameter.requires_grad_(False)
    scales = {layer.name: torch.ones(layer.channels, device=device, requires_grad=True) for layer in layers}
    optimizer = torch.optim.Adam(scales.values(), lr=config.lr)
    with scaled_channels(current, layers, scales):
        for images, labels in _batches(data, config, config.steps, salt=3):
            optimizer.zero_grad(set_to_none=True)
            with autocast(config.precision, device):
                scores = current(images.to(device))
            F.cross_entropy(scores.float(), labels.to(device)).backward()
            optimizer.step()
        fitted = {name: scale.detach().clone() for name, scale in scales.items()}
        loss = mean_loss(current, check, config.precision)
    for parameter, flag in zip(current.parameters(), flags):
        parameter.requires_grad_(flag)

    kept = loss < best
    if kept:
        current, best = fold_scales(current, fitted, example_inputs, layers=layers), loss
    else:
        fitted = {name: torch.ones_like(scale) for name, scale in fitted.items()}
    return Calibration(current.eval(), fitted, loss_before, best, recalibrated, kept)
