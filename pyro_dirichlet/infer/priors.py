"""Priors over each layer's switch vector: Dirichlet concentrations, or Pyro models of distributions on the simplex.

A prior is given in one of four forms, all resolved by :func:`resolve_prior`:

* a number -- the same symmetric Dirichlet concentration for every channel of every layer;
* a mapping ``{layer name: number or vector}`` -- per-layer concentrations (scalar or one per
  channel); layers left out get the default concentration;
* a callable ``prior(layer) -> pyro.distributions.Distribution`` -- any distribution whose
  event is a point on the simplex of the layer's width ("define priors via Pyro models").
  It is called inside the model at every step, so it may build its distribution from
  ``pyro.param`` values, other tensors, or its own ``pyro.sample`` sites (named per layer);
* a :class:`PriorModel` ``prior_model(layers) -> {layer name: distribution}``: a Pyro model
  of every layer's prior at once, run once per model run, so its ``pyro.sample`` sites may
  be global hyper-parameters shared across layers (``alpha ~ Gamma(2, 2)``, then
  ``Dirichlet(alpha.expand(C))`` for every layer) and its ``pyro.param`` sites learnable
  prior parameters.

The sample sites of a prior other than the switches ("latent sites") get a guide of their
own in :func:`pyro_dirichlet.infer.fit.fit` (an autoguide). Whatever a prior builds is built
on the fit's device: it runs under ``torch.device(device)``, and a Dirichlet built on
another device is moved.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints

from pyro_dirichlet.structure import PrunableLayer

__all__ = ["DEFAULT_CONCENTRATION", "LatentSite", "PriorModel", "PriorModelError", "PriorSpec", "LayerPrior", "SwitchPriors", "resolve_prior"]

#: The default symmetric concentration: sparse. Why (``analysis/ranking_quality.py``): once a
#: fit runs long enough for the posterior's total concentration to grow, the Dirichlet KL
#: pulls a channel the likelihood does not see (a unit that never fires) towards the prior
#: *mean* when the prior concentration is at least 1/2 -- into the middle of the ranking,
#: above useful channels -- and towards zero when it is below 1/2. Measured on a BN ResNet
#: whose head has 14 never-firing units: under Dirichlet(1) they end at concentrations
#: above the live units' median, under Dirichlet(0.1) at 0.11, the bottom of the ranking.
DEFAULT_CONCENTRATION = 0.1

Concentration = Union[float, int, torch.Tensor]
PriorCallable = Callable[[PrunableLayer], dist.Distribution]
PriorModelFunction = Callable[[list[PrunableLayer]], Mapping[str, dist.Distribution]]


@dataclass(frozen=True)
class PriorModel:
    """A Pyro model of every switched layer's prior at once (usable as a decorator).

    ``fn(layers)`` receives the switched :class:`~pyro_dirichlet.structure.PrunableLayer`
    list and returns ``{layer name: distribution on that layer's simplex}`` for every layer.
    It runs once per model run, so a ``pyro.sample`` site in it is one latent shared by
    every layer that uses it, and a ``pyro.param`` one learnable value.

    Example:
        >>> @PriorModel
        ... def shared_alpha(layers):
        ...     alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
        ...     return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}
        >>> switches = DirichletSwitches(net, images[:2], prior=shared_alpha)  # doctest: +SKIP
    """

    fn: PriorModelFunction

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"PriorModel needs a function prior_model(layers) -> {{layer: distribution}}, got {type(self.fn).__name__}.")

    def __call__(self, layers: list[PrunableLayer]) -> Mapping[str, dist.Distribution]:
        return self.fn(layers)


PriorSpec = Union[Concentration, Mapping[str, Concentration], PriorCallable, PriorModel]


class PriorModelError(ValueError):
    """A user's prior model raised (or exited) when called with the layers: its error in one sentence."""


def _prior_model_failed(prior: PriorModel, error: BaseException) -> PriorModelError:
    name = f"{getattr(prior.fn, '__module__', '?')}:{getattr(prior.fn, '__qualname__', type(prior.fn).__name__)}"
    first = " ".join(str(error).split("\n")[0].split()).rstrip(".")[:300] or type(error).__name__
    reason = f"it called sys.exit({error.code!r})" if isinstance(error, SystemExit) else first
    return PriorModelError(f"the prior model {name} failed when called with the switched layers: "
                           f"{type(error).__name__} ({reason}).")

#: A resolved prior: builds the layer's prior distribution on a device.
LayerPrior = Callable[[torch.device], dist.Distribution]


def _concentration_vector(value: Concentration, layer: PrunableLayer, argument: str) -> torch.Tensor:
    """Check a concentration given for ``layer`` and expand it to one value per channel."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(
            f"{argument} for layer {layer.name!r} must be a number or a tensor of "
            f"concentrations, got {type(value).__name__}."
        )
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    if tensor.dim() == 0:
        tensor = tensor.expand(layer.channels)
    elif tensor.shape != (layer.channels,):
        raise ValueError(
            f"{argument} for layer {layer.name!r} must be a scalar or a vector of its "
            f"{layer.channels} channels, got shape {tuple(tensor.shape)}."
        )
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        raise ValueError(
            f"{argument} for layer {layer.name!r} must be positive and finite, "
            f"got minimum {tensor.min().item():g}."
        )
    return tensor.clone()


def _dirichlet_prior(concentration: torch.Tensor) -> LayerPrior:
    cache: dict[torch.device, torch.Tensor] = {}

    def build(device: torch.device) -> dist.Distribution:
        # Cache the device copy: the model builds every prior at every SVI step.
        if device not in cache:
            cache[device] = concentration.to(device)
        return dist.Dirichlet(cache[device])

    return build


def _site(layer_name: str) -> str:
    # switches.switch_site, spelt here: switches imports this module.
    return f"{layer_name}.switch"


def _check_parameters(fn: torch.distributions.Distribution, site: str) -> None:
    """Every tensor parameter of ``fn`` finite and inside its constraint, or a ValueError naming ``site``."""
    for name, constraint in fn.arg_constraints.items():
        value = fn.__dict__.get(name)  # lazily derived parameters (probs from logits) are not forced
        if not isinstance(value, torch.Tensor) or value.device.type == "meta":
            continue
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"prior site {site!r} has a non-finite {name} ({value.flatten()[~torch.isfinite(value.flatten())][0].item()}).")
        if not bool(constraint.check(value).all()):
            raise ValueError(f"prior site {site!r} has a {name} outside its constraint {constraint}.")


def _check_user_distribution(prior: dist.Distribution, layer: PrunableLayer, *, batch: bool = True) -> None:
    site = _site(layer.name)
    if not isinstance(prior, torch.distributions.Distribution):
        raise TypeError(
            f"the prior of {site!r} must be a pyro.distributions.Distribution, got {type(prior).__name__}."
        )
    # A vectorised run (Predictive(parallel=True)) may give a prior model's latents batch
    # dimensions; only the one-draw check at construction insists on none.
    if tuple(prior.event_shape) != (layer.channels,) or (batch and tuple(prior.batch_shape) != ()):
        raise ValueError(
            f"the prior of {site!r} must have event shape ({layer.channels},) and "
            f"no batch shape, got event shape {tuple(prior.event_shape)} and batch shape "
            f"{tuple(prior.batch_shape)}."
        )
    if prior.support is not constraints.simplex:
        raise ValueError(
            f"the prior of {site!r} must be a distribution on the simplex "
            f"(support constraints.simplex), got support {prior.support}."
        )


def _on_device(prior: dist.Distribution, layer: PrunableLayer, device: torch.device) -> dist.Distribution:
    """``prior`` with its parameters on ``device``: a Dirichlet built elsewhere (e.g. from a
    CPU tensor in a closure) is rebuilt there; any other distribution must already be there."""
    devices = _tensor_devices(prior)
    if devices <= {device}:
        return prior
    if type(prior) in (dist.Dirichlet, torch.distributions.Dirichlet):
        return dist.Dirichlet(prior.concentration.to(device))
    raise ValueError(
        f"the prior of {_site(layer.name)!r} holds tensors on {sorted(map(str, devices))} but the fit runs on "
        f"{device}; build them inside the prior (it runs under torch.device({str(device)!r}))."
    )


def _tensor_devices(value: object, depth: int = 0) -> set[torch.device]:
    """The devices of the tensors a distribution holds, its base distributions' included."""
    if isinstance(value, torch.Tensor):
        return {value.device}
    if isinstance(value, torch.distributions.Distribution) and depth < 8:
        return set().union(*(_tensor_devices(item, depth + 1) for item in vars(value).values()))
    if isinstance(value, (list, tuple)) and depth < 8:
        return set().union(*(_tensor_devices(item, depth + 1) for item in value))
    return set()


@dataclass(frozen=True)
class LatentSite:
    """A sample site of the prior other than a switch: a hyper-parameter the guide must cover.

    Attributes:
        name: the site's name.
        discrete: whether its support is discrete (no automatic continuous guide fits it).
        distribution: the name of its distribution's class, for messages.
    """

    name: str
    discrete: bool
    distribution: str


class SwitchPriors:
    """The resolved prior of every switch: one call gives every layer's prior for one model run.

    Built by :func:`resolve_prior`. Calling it runs the user's prior (its ``pyro.sample``
    and ``pyro.param`` statements become part of the surrounding trace) under
    ``torch.device(device)`` and checks what it returns.

    Attributes:
        layers: the switched layers.
        latent_sites: the prior's own sample sites (found by running it once at
            construction, in a scratch param store).
        fixed: whether the prior is a fixed Dirichlet per layer (a number or a mapping):
            nothing random or learnable besides the switches.

    Example:
        >>> priors = resolve_prior(0.5, layers)  # doctest: +SKIP
        >>> priors(torch.device("cpu"))["conv1"].concentration[:3]  # doctest: +SKIP
        tensor([0.5000, 0.5000, 0.5000])
    """

    def __init__(self, layers: Sequence[PrunableLayer], build: Callable[[torch.device | None], dict[str, dist.Distribution]], *, fixed: bool) -> None:
        self.layers = list(layers)
        self._build = build
        self.fixed = fixed
        self.latent_sites: tuple[LatentSite, ...] = () if fixed else self._inspect()

    def __call__(self, device: torch.device) -> dict[str, dist.Distribution]:
        """Every layer's prior distribution on ``device``, ``{layer name: distribution}``."""
        return self._build(torch.device(device))

    def _inspect(self) -> tuple[LatentSite, ...]:
        """Run the prior once, outside any fit, to check it and find its latent sites."""
        store = pyro.get_param_store()
        # A scratch store and a forked RNG: checking a prior creates no param and draws from no stream the fit uses.
        with store.scope(), torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
            try:
                trace = poutine.trace(self._build).get_trace(None)
            except ValueError as error:
                # Pyro's trace appends its table of site shapes to the message; the sentence alone says it.
                raise ValueError(str(error).split("\nTrace Shapes:")[0]) from None
            except RuntimeError as error:
                if "Multiple sample sites named" not in str(error):
                    raise
                raise ValueError(
                    f"the prior samples one site name twice ({str(error).splitlines()[0]}): a per-layer prior runs once per layer, so "
                    f"name its sites by layer (f'{{layer.name}}.alpha'), or share a site across layers with a PriorModel."
                ) from None
            distributions = trace.nodes["_RETURN"]["value"]
        latents = []
        switch_names = {_site(layer.name) for layer in self.layers}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if name in switch_names or name == "obs":
                raise ValueError(f"the prior samples a site named {name!r}, a name the switch model uses itself; rename it.")
            _check_parameters(site["fn"], name)
            value = site["value"]
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"prior site {name!r} drew a non-finite value; check its distribution's parameters.")
            latents.append(LatentSite(name, bool(site["fn"].support.is_discrete), type(site["fn"]).__name__))
        # After the latents: a bad hyper-parameter is named as the cause, not the switch it feeds.
        for layer in self.layers:
            _check_parameters(distributions[layer.name], _site(layer.name))
        return tuple(latents)


def _fixed_build(priors: dict[str, LayerPrior]) -> Callable[[torch.device | None], dict[str, dist.Distribution]]:
    def build(device: torch.device | None) -> dict[str, dist.Distribution]:
        device = device or torch.device("cpu")
        return {name: prior(device) for name, prior in priors.items()}

    return build


# PyTorch's words for an operation on tensors of two devices (CUDA's, then the meta device's).
_MIXED_DEVICES = re.compile(r"Expected all tensors to be on the same device|is not on the expected device")


@contextmanager
def _mixed_devices_explained(device: torch.device | None) -> Iterator[None]:
    """Turn PyTorch's mixed-device error inside a user's prior into a sentence that says why.

    A tensor the prior creates lands on the fit device (it runs under ``torch.device``), as do
    the values of its latent sites, which the guide draws there; a tensor made outside it (a
    closure's) stays where it was, and arithmetic between the two fails on a GPU only. A
    Dirichlet built from such a tensor alone is moved (:func:`_on_device`); arithmetic cannot be.
    """
    try:
        yield
    except RuntimeError as error:
        if device is None or not _MIXED_DEVICES.search(str(error)):
            raise
        raise ValueError(
            f"the prior combines tensors on two devices ({str(error).splitlines()[0]}): it runs under "
            f"torch.device({str(device)!r}), where the tensors it creates and its sites' values live, but a tensor made "
            f"outside it (captured in a closure, say) stays where it was. Create that tensor inside the prior, or move it "
            f"there with .to(torch.get_default_device())."
        ) from None


def _user_build(prior: PriorCallable | PriorModel, layers: list[PrunableLayer]) -> Callable[[torch.device | None], dict[str, dist.Distribution]]:
    """Run a per-layer callable or a prior model under the fit device, and check its result."""
    names = [layer.name for layer in layers]

    def build(device: torch.device | None) -> dict[str, dist.Distribution]:
        # device None: the check at construction, which knows no fit device yet.
        with torch.device(device or "cpu"), _mixed_devices_explained(device):
            if isinstance(prior, PriorModel):
                try:
                    result = prior(list(layers))
                except (Exception, SystemExit) as error:  # noqa: BLE001 - the user's code may fail any way
                    if isinstance(error, RuntimeError) and device is not None and _MIXED_DEVICES.search(str(error)):
                        raise  # explained by _mixed_devices_explained
                    raise _prior_model_failed(prior, error) from None
                if not isinstance(result, Mapping) or sorted(result) != sorted(names):
                    got = sorted(result) if isinstance(result, Mapping) else type(result).__name__
                    raise ValueError(f"the prior model must return {{layer name: distribution}} for the switched layers {sorted(names)}, got {got}.")
                result = dict(result)
            else:
                result = {layer.name: prior(layer) for layer in layers}
        for layer in layers:
            _check_user_distribution(result[layer.name], layer, batch=device is None)
            if device is not None:
                result[layer.name] = _on_device(result[layer.name], layer, device)
        return result

    return build


def resolve_prior(prior: PriorSpec, layers: list[PrunableLayer]) -> SwitchPriors:
    """Turn a user's prior specification into the priors of every switch.

    Args:
        prior: a positive number, a mapping from layer name to a positive number or a
            vector of one positive concentration per channel, a callable
            ``prior(layer) -> Distribution`` over the layer's simplex, or a
            :class:`PriorModel`.
        layers: the prunable layers the switches sit on.

    Returns:
        a :class:`SwitchPriors`; ``priors(device)`` gives ``{layer name: Distribution}``.

    Raises:
        ValueError: a concentration that is not positive and finite or has the wrong
            shape, a mapping that names an unknown layer, a prior whose distribution
            is not over the layer's simplex, a prior model returning other layers, or a
            prior site with a non-finite parameter or value (the message names the site).

    Example:
        >>> priors = resolve_prior({"conv1": 0.5}, layers)  # doctest: +SKIP
        >>> priors(torch.device("cpu"))["conv1"].concentration[:3]  # doctest: +SKIP
        tensor([0.5000, 0.5000, 0.5000])
    """
    if isinstance(prior, PriorModel) or (callable(prior) and not isinstance(prior, torch.Tensor)):
        return SwitchPriors(layers, _user_build(prior, layers), fixed=False)
    if isinstance(prior, Mapping):
        known = {layer.name for layer in layers}
        unknown = sorted(set(prior) - known)
        if unknown:
            raise ValueError(
                f"prior names unknown layer(s) {unknown}; the switched layers are {sorted(known)}."
            )
        priors = {
            layer.name: _dirichlet_prior(
                _concentration_vector(prior.get(layer.name, DEFAULT_CONCENTRATION), layer, "prior")
            )
            for layer in layers
        }
    else:
        priors = {layer.name: _dirichlet_prior(_concentration_vector(prior, layer, "prior")) for layer in layers}
    return SwitchPriors(layers, _fixed_build(priors), fixed=True)
