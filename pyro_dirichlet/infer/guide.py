"""The variational family: one learnable Dirichlet per switch site, and an autoguide for the prior's other latents."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.util
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal
from torch.distributions import constraints

from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.infer.switches import DirichletSwitches, switch_site

__all__ = [
    "DirichletGuide",
    "DEFAULT_HYPER_GUIDE",
    "DEFAULT_INIT_CONCENTRATION",
    "HYPER_GUIDES",
    "concentration_param",
    "create_params",
    "guide_concentrations",
    "load_guide",
    "make_guide",
]

#: ``FitConfig.hyper_guide`` names and the autoguide each builds for the prior's latent
#: sites: a mean-field Normal in unconstrained space, or a point estimate (empirical Bayes).
HYPER_GUIDES = {"normal": AutoNormal, "delta": AutoDelta}
#: The hyper-guide unless told otherwise: a Normal keeps the prior's latent sites uncertain.
DEFAULT_HYPER_GUIDE = "normal"

#: Initial concentration of every channel. The default fit runs until converged
#: (:class:`~pyro_dirichlet.infer.convergence.StoppingRule`), so the start need not be one
#: a single epoch can move away from; 10 starts from a network that still works under its
#: switch noise (at 1, ``s*C`` is roughly Exp(1) per channel and the gradients mostly
#: noise), and mass must then be *lost* where the network tolerates the noise: on the BN
#: ResNet of ``analysis/ranking_quality.py`` it ranked better against removal costs than
#: starting at 1 (Spearman +0.12 against +0.07 after 480 steps, sparse prior, layer gain).
#: The paper's one-epoch fit moves too little from 10 (measured on LeNet-5/MNIST): pass
#: ``init_concentration=1.0`` with ``epochs=1``.
DEFAULT_INIT_CONCENTRATION = 10.0


def concentration_param(layer_name: str) -> str:
    """The param-store name of a layer's guide concentration, e.g. ``conv1.switch.concentration``."""
    return f"{switch_site(layer_name)}.concentration"


class DirichletGuide:
    """Mean-field guide ``q(s_l) = Dirichlet(phi_l)``, one per switch site.

    Parametrisation: ``phi_l`` is a ``pyro.param`` constrained to ``constraints.positive``,
    which Pyro stores unconstrained as ``log phi_l`` (its bijection is ``exp``). Gradient
    steps on ``log phi`` change each concentration by a relative amount, which suits
    concentrations that range over orders of magnitude across channels.

    Initialisation: every channel at ``init_concentration`` (default
    :data:`DEFAULT_INIT_CONCENTRATION`), i.e. the guide starts at a symmetric Dirichlet
    whose mean leaves the network unchanged.

    Args:
        layers: the switched layers (``DirichletSwitches.layers``).
        init_concentration: the positive initial concentration of every channel.

    Example:
        >>> guide = DirichletGuide(switches.layers)  # doctest: +SKIP
        >>> svi = SVI(switches.model, guide, Adam({"lr": 0.1}), TraceMeanField_ELBO())  # doctest: +SKIP
    """

    def __init__(self, layers: list[PrunableLayer], *, init_concentration: float = DEFAULT_INIT_CONCENTRATION) -> None:
        if isinstance(init_concentration, bool) or not isinstance(init_concentration, (int, float)):
            raise TypeError(f"init_concentration must be a number, got {type(init_concentration).__name__}.")
        if not (0 < init_concentration < float("inf")):
            raise ValueError(f"init_concentration must be positive and finite, got {init_concentration}.")
        self.layers = list(layers)
        self.init_concentration = float(init_concentration)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every switch from its Dirichlet; same signature as the model.

        Returns:
            ``{site name: value}``, as autoguides do, so it composes in an ``AutoGuideList``.
        """
        device = images.device
        return {
            switch_site(layer.name): pyro.sample(switch_site(layer.name), dist.Dirichlet(self._concentration(layer, device)))
            for layer in self.layers
        }

    def _concentration(self, layer: PrunableLayer, device: torch.device) -> torch.Tensor:
        return pyro.param(
            concentration_param(layer.name),
            lambda: torch.full((layer.channels,), self.init_concentration, device=device),
            constraint=constraints.positive,
        )

    def initialise(self, device: torch.device | str = "cpu") -> None:
        """Create every concentration param now (at ``init_concentration`` unless already fitted)."""
        for layer in self.layers:
            self._concentration(layer, torch.device(device))

    def reset(self) -> None:
        """Forget fitted values: the next call starts again from ``init_concentration``."""
        store = pyro.get_param_store()
        for layer in self.layers:
            name = concentration_param(layer.name)
            if name in store:
                del store[name]

    def state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the concentrations, on their device, ``{layer name: (channels,)}``."""
        store = pyro.get_param_store()
        missing = [layer.name for layer in self.layers if concentration_param(layer.name) not in store]
        if missing:
            raise RuntimeError(f"the guide has no concentration for layers {missing}: run fit() first.")
        return {layer.name: store[concentration_param(layer.name)].detach().clone() for layer in self.layers}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Set the concentrations to ``state`` (as returned by :meth:`state`)."""
        self.reset()
        store = pyro.get_param_store()
        for layer in self.layers:
            store.setdefault(concentration_param(layer.name), state[layer.name].clone(), constraint=constraints.positive)

    def concentrations(self) -> dict[str, torch.Tensor]:
        """The current concentrations, detached, on the CPU, ``{layer name: (channels,)}``."""
        return {name: value.cpu() for name, value in self.state().items()}


def make_guide(
    switches: DirichletSwitches,
    *,
    init_concentration: float = DEFAULT_INIT_CONCENTRATION,
    hyper_guide: str = DEFAULT_HYPER_GUIDE,
) -> DirichletGuide | AutoGuideList:
    """The guide :func:`~pyro_dirichlet.infer.fit.fit` builds for ``switches``.

    A :class:`DirichletGuide` over the switches; where the prior has latent sites of its own
    (a hierarchical prior's concentration, say), an ``AutoGuideList`` of that guide and the
    autoguide ``HYPER_GUIDES[hyper_guide]`` over those sites, built on the model's prior
    part (:meth:`DirichletSwitches.switch_prior`, no network run).

    Raises:
        ValueError: an unknown ``hyper_guide``, or a discrete latent site (no continuous
            autoguide covers it; the message names it).

    Example:
        >>> guide = make_guide(DirichletSwitches(net, images[:2], prior=shared_alpha))  # doctest: +SKIP
        >>> pyro.infer.SVI(switches.model, guide, Adam({"lr": 0.1}), TraceMeanField_ELBO())  # doctest: +SKIP
    """
    if hyper_guide not in HYPER_GUIDES:
        raise ValueError(f"hyper_guide must be one of {sorted(HYPER_GUIDES)}, got {hyper_guide!r}.")
    switch_guide = DirichletGuide(switches.layers, init_concentration=init_concentration)
    latents = switches.priors.latent_sites
    if not latents:
        return switch_guide
    discrete = [site for site in latents if site.discrete]
    if discrete:
        site = discrete[0]
        raise ValueError(
            f"prior site {site.name!r} is discrete ({site.distribution}); no automatic guide covers it: "
            f"pass fit(..., guide=...) with a guide of your own for it."
        )
    names = [site.name for site in latents]
    guide = AutoGuideList(switches.switch_prior)
    guide.append(switch_guide)
    guide.append(HYPER_GUIDES[hyper_guide](poutine.block(switches.switch_prior, expose=names)))
    return guide


def guide_concentrations(
    guide: Callable, layers: list[PrunableLayer], images: torch.Tensor, *, latent_sites: tuple = ()
) -> dict[str, torch.Tensor]:
    """The Dirichlet concentration ``guide`` gives each switch, detached, on the CPU.

    Read from one run of the guide (drawing from copies of the random streams), so any
    guide whose switch sites are Dirichlet works (a user's own as well as :func:`make_guide`'s).

    Args:
        guide: the guide, with the model's signature.
        layers: the switched layers.
        images: an example batch for the guide's call.
        latent_sites: the prior's latent sites (:attr:`SwitchPriors.latent_sites`), which the
            guide must sample too.

    Raises:
        ValueError: a switch or latent site the guide does not sample, or a switch it
            samples from another family than the Dirichlet.
    """
    with torch.no_grad(), poutine.block(), torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
        trace = poutine.trace(guide).get_trace(images)
    missing = [site.name for site in latent_sites if site.name not in trace.nodes]
    if missing:
        raise ValueError(f"the guide has no sample site {missing[0]!r}, a latent site of the prior; it must sample every one.")
    concentrations = {}
    for layer in layers:
        site = trace.nodes.get(switch_site(layer.name))
        if site is None or site["type"] != "sample":
            raise ValueError(f"the guide has no sample site {switch_site(layer.name)!r}; it must sample every switch.")
        fn = site["fn"]
        while isinstance(fn, dist.Independent):
            fn = fn.base_dist
        if not isinstance(fn, torch.distributions.Dirichlet):
            raise ValueError(f"the guide samples {switch_site(layer.name)!r} from {type(fn).__name__}; pruning reads Dirichlet posteriors.")
        concentrations[layer.name] = fn.concentration.detach().cpu().clone()
    return concentrations


def create_params(switches: DirichletSwitches, guide: Callable, example: tuple, kwargs: dict) -> None:
    """Run ``guide`` and the prior once, so every parameter they declare is in the param store.

    Nothing is recorded (``poutine.block``) and the draws come from copies of the random
    streams, so a fit that creates its parameters first draws what it would have drawn.

    Args:
        switches: the switch model (its prior may declare ``pyro.param`` sites).
        guide: the guide (an autoguide sets itself up on its first call).
        example: model arguments ``(images, labels)`` of one example, on the fit device.
        kwargs: model keyword arguments (``subsample``, ``size``).
    """
    state = pyro.util.get_rng_state()
    device = example[0].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), poutine.block():
        guide(*example, **kwargs)
        switches.switch_prior(*example, **kwargs)
    pyro.util.set_rng_state(state)


def load_guide(posterior, switches: DirichletSwitches) -> DirichletGuide | AutoGuideList:
    """The fitted guide back from a saved posterior, every parameter bit for bit in the param store.

    Args:
        posterior: a DataTree written by ``FitResult.posterior()`` (its ``guide_parameters``
            group holds each parameter unconstrained, as Pyro stores it, so no exp/log round
            trip changes a bit).
        switches: the switch model the posterior was fitted on (same layers and prior).

    Returns:
        the guide :func:`make_guide` builds for ``switches``, its parameters set to the fit's;
        ``guide_concentrations(guide, switches.layers, images)`` then equals the fit's
        concentrations exactly.

    Raises:
        ValueError: the posterior has no ``guide_parameters`` group, or its parameters are
            not the ones this guide declares, of their shapes, and finite.

    Example:
        >>> guide = load_guide(load_posterior("runs/a/posterior.nc"), switches)  # doctest: +SKIP
    """
    if "guide_parameters" not in posterior.children:
        raise ValueError("the posterior has no 'guide_parameters' group: it was not written by FitResult.posterior().")
    group = posterior["guide_parameters"]
    guide = make_guide(
        switches,
        init_concentration=float(group.attrs.get("init_concentration", DEFAULT_INIT_CONCENTRATION)),
        hyper_guide=str(group.attrs.get("hyper_guide", "normal")),
    )
    device = next(iter(switches.network.parameters()), torch.empty(0)).device
    values = {str(name): torch.as_tensor(data.values) for name, data in group.data_vars.items()}
    store = pyro.get_param_store()
    for name in values:
        if name in store:
            del store[name]
    example = torch.zeros(1, device=device), None
    if isinstance(guide, DirichletGuide):
        guide.initialise(device)
    else:
        create_params(switches, guide, example, {})
    switches.create_model_params()  # layer gains and a learned noise scale were saved with the guide's parameters
    state = store.get_state()
    unknown = sorted(set(values) - set(state["params"]))
    missing = sorted(name for name in state["params"] if name.startswith(tuple(f"{switch_site(l.name)}." for l in switches.layers)) and name not in values)
    if unknown or missing:
        raise ValueError(f"the posterior's guide parameters do not fit this model: unknown {unknown}, missing {missing}.")
    for name, value in values.items():
        expected = tuple(state["params"][name].shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"the posterior's guide parameter {name} has shape {tuple(value.shape)}, but this model's "
                             f"has {expected}.")
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"the posterior's guide parameter {name} is not all finite numbers.")
    state["params"].update({name: value.to(device).requires_grad_() for name, value in values.items()})
    store.set_state(state)
    return guide
