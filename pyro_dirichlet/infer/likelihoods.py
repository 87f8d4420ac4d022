"""Likelihoods: the distribution of a batch's targets given the switched network's outputs.

:class:`~pyro_dirichlet.infer.switches.DirichletSwitches` observes the targets under its
data plate with whatever its ``likelihood`` returns: a callable ``likelihood(outputs,
targets) -> distribution`` whose batch shape is the batch (one distribution per example;
the rest of the outputs' dimensions are event dimensions). Built in: class labels
(``"categorical"``, the default), regression (``"normal"``, a fixed or a learned scale),
multi-label targets (``"bernoulli"``), and a tempered loss (:func:`loss_likelihood`, a
Gibbs likelihood) for tasks with no natural distribution of their targets.

Example:
    >>> switches = DirichletSwitches(net, x[:2], likelihood="normal")  # doctest: +SKIP
    >>> switches = DirichletSwitches(net, x[:2], likelihood=NormalLikelihood(scale=None))  # learned  # doctest: +SKIP
    >>> switches = DirichletSwitches(net, x[:2], likelihood=loss_likelihood(per_pixel_loss, 0.5))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = [
    "LIKELIHOODS",
    "SCALE_PARAM",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "Likelihood",
    "LikelihoodSpec",
    "LossLikelihood",
    "NormalLikelihood",
    "check_batch_shape",
    "describe",
    "is_learnable",
    "loss_likelihood",
    "resolve_likelihood",
]

Likelihood: TypeAlias = Callable[[Tensor, "Tensor | None"], Distribution]
"""``likelihood(outputs, targets) -> distribution`` of the targets; ``targets`` is ``None``
when the model samples them (posterior predictive draws)."""

#: Param-store name of :class:`NormalLikelihood`'s learned scale.
SCALE_PARAM = "likelihood.scale"
#: A loss likelihood's temperature unless told otherwise: the loss as it is, neither sharpened nor flattened.
UNTEMPERED = 1.0


@dataclass(frozen=True)
class CategoricalLikelihood:
    """Class labels: ``Categorical(logits=outputs)``, the outputs ``(batch, classes)`` logits."""

    name = "categorical"
    learnable = False

    def __call__(self, outputs: Tensor, targets: Tensor | None = None) -> Distribution:
        return dist.Categorical(logits=outputs)


@dataclass(frozen=True)
class NormalLikelihood:
    """Regression: ``Normal(outputs, scale)``, independent over every output dimension.

    Attributes:
        scale: the noise's standard deviation; ``None`` learns it, as the positive
            ``pyro.param`` :data:`SCALE_PARAM` (fitted with the guide, saved in the
            checkpoint and in the posterior's ``guide_parameters``).
        init_scale: the learned scale's starting value.
    """

    scale: float | None = 1.0
    init_scale: float = 1.0
    name = "normal"

    def __post_init__(self) -> None:
        for field, value in (("scale", self.scale), ("init_scale", self.init_scale)):
            if value is None and field == "scale":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"NormalLikelihood.{field} must be a positive finite number{' or None (learned)' if field == 'scale' else ''}, got {value!r}.")

    @property
    def learnable(self) -> bool:
        """Whether the likelihood declares a ``pyro.param`` (the learned scale)."""
        return self.scale is None

    def __call__(self, outputs: Tensor, targets: Tensor | None = None) -> Distribution:
        if self.scale is None:
            scale = pyro.param(SCALE_PARAM, lambda: torch.tensor(float(self.init_scale), device=outputs.device), constraint=constraints.positive)
        else:
            scale = torch.tensor(float(self.scale), device=outputs.device)
        return dist.Normal(outputs, scale).to_event(outputs.dim() - 1)


@dataclass(frozen=True)
class BernoulliLikelihood:
    """Multi-label targets: ``Bernoulli(logits=outputs)`` per output, the targets 0/1 floats of the outputs' shape."""

    name = "bernoulli"
    learnable = False

    def __call__(self, outputs: Tensor, targets: Tensor | None = None) -> Distribution:
        return dist.Bernoulli(logits=outputs).to_event(outputs.dim() - 1)


@dataclass(frozen=True)
class LossLikelihood:
    """A tempered loss as a log-likelihood (a Gibbs posterior): ``log p(y | x, s) = -loss(net_s(x), y) / temperature``.

    Not a distribution of the targets, so nothing can be drawn from it (no posterior
    predictive); its log-density is a :class:`pyro.distributions.Unit` factor per example,
    as ``pyro.factor`` observes.

    Attributes:
        loss: ``loss(outputs, targets)``, one value per example (``reduction="none"``); an
            example's further dimensions (pixels of a segmentation) are summed.
        temperature: the loss is divided by it: below 1 sharpens the likelihood, above 1
            flattens it toward the prior.
    """

    loss: Callable[[Tensor, Tensor], Tensor]
    temperature: float = UNTEMPERED
    name = "loss"
    learnable = False

    def __call__(self, outputs: Tensor, targets: Tensor | None = None) -> Distribution:
        if targets is None:
            raise ValueError("a loss likelihood has no distribution of the targets to draw them from; it needs the targets.")
        loss = self.loss(outputs, targets)
        if not isinstance(loss, Tensor):
            raise TypeError(f"the loss of loss_likelihood must return a tensor, got {type(loss).__name__}.")
        if loss.dim() > 1:
            loss = loss.flatten(1).sum(1)
        return dist.Unit(-loss / self.temperature)


def loss_likelihood(loss_fn: Callable[[Tensor, Tensor], Tensor], temperature: float = UNTEMPERED) -> LossLikelihood:
    """A Gibbs likelihood from any per-example loss: :class:`LossLikelihood`.

    Args:
        loss_fn: ``loss_fn(outputs, targets)`` with one value per example, e.g.
            ``functools.partial(F.cross_entropy, reduction="none")`` for segmentation maps.
        temperature: positive; the log-likelihood is ``-loss / temperature``.

    Example:
        >>> likelihood = loss_likelihood(lambda out, y: (out - y).abs().sum(1), temperature=0.1)
        >>> likelihood(torch.zeros(3, 2), torch.ones(3, 2)).log_factor
        tensor([-20., -20., -20.])
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (outputs, targets) -> per-example loss, got {type(loss_fn).__name__}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
    return LossLikelihood(loss_fn, float(temperature))


#: Built-in likelihoods by the name ``DirichletSwitches(likelihood=...)`` takes.
LIKELIHOODS: dict[str, Callable[[], Likelihood]] = {
    "categorical": CategoricalLikelihood,
    "normal": NormalLikelihood,
    "bernoulli": BernoulliLikelihood,
}

LikelihoodSpec: TypeAlias = "str | Likelihood"
"""What ``DirichletSwitches(likelihood=...)`` accepts: a name of :data:`LIKELIHOODS` or a callable."""


def resolve_likelihood(spec: LikelihoodSpec) -> Likelihood:
    """The likelihood a spec names: a built-in by name, or the callable itself.

    Raises:
        ValueError: an unknown name (the known ones are listed).
        TypeError: neither a name nor a callable.
    """
    if isinstance(spec, str):
        if spec not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)} or a callable (outputs, targets) -> distribution, got {spec!r}.")
        return LIKELIHOODS[spec]()
    if not callable(spec):
        raise TypeError(f"likelihood must be a name or a callable (outputs, targets) -> distribution, got {type(spec).__name__}.")
    return spec


def describe(likelihood: Likelihood) -> str:
    """A short name of a likelihood for messages: the built-in's name, or the callable's."""
    name = getattr(likelihood, "name", None)
    if isinstance(name, str):
        return repr(name)
    return getattr(likelihood, "__qualname__", type(likelihood).__qualname__)


def is_learnable(likelihood: Likelihood) -> bool:
    """Whether the likelihood may declare ``pyro.param`` sites (a user's callable is assumed to)."""
    return bool(getattr(likelihood, "learnable", True))


def check_batch_shape(likelihood: Likelihood, distribution: object, outputs: Tensor, expected: torch.Size) -> None:
    """Refuse a likelihood's distribution that is not one distribution per example.

    Raises:
        TypeError: the likelihood returned something other than a distribution.
        ValueError: its batch shape is not ``expected``; the message names the likelihood
            and both shapes.
    """
    if not isinstance(distribution, Distribution):
        raise TypeError(f"likelihood {describe(likelihood)} must return a pyro distribution, got {type(distribution).__name__}.")
    if distribution.batch_shape != expected:
        raise ValueError(
            f"likelihood {describe(likelihood)} returned batch shape {tuple(distribution.batch_shape)} for network "
            f"outputs of shape {tuple(outputs.shape)}, but its batch shape must be the batch {tuple(expected)} "
            "(one distribution per example; declare the other dimensions as event dimensions with .to_event)."
        )
