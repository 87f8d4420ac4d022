"""The variational family: one learnable Dirichlet per switch site, and an autoguide for the prior's other latents."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.util
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal
from pyro.nn import PyroModule, PyroParam, pyro_method
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


class _SitePath(PyroModule):
    """One segment of a switch site's name (``conv1``, ``switch``) in :attr:`DirichletGuide.sites`.

    Pyro names a sub-``PyroModule``'s parameters after its path from the root module, so
    inside an ``AutoGuideList`` (which wraps the guide in an ``AutoCallable``) they would
    read ``AutoGuideList.0._guide.sites.conv1.switch.concentration``. A site's first segment
    keeps its own name as its Pyro name instead, so every concentration is named
    :func:`concentration_param` wherever the guide sits: the name the trace, posterior
    files and checkpoints use.
    """

    def __init__(self, root_name: str | None = None) -> None:
        super().__init__(root_name or "")
        self._root_name = root_name

    def _pyro_set_supermodule(self, name: str, context) -> None:
        super()._pyro_set_supermodule(self._root_name or name, context)


class DirichletGuide(PyroModule):
    """Mean-field guide ``q(s_l) = Dirichlet(phi_l)``, one per switch site, as a ``PyroModule``.

    Parametrisation: ``phi_l`` is a ``PyroParam`` constrained to ``constraints.positive``,
    which Pyro stores unconstrained as ``log phi_l`` (its bijection is ``exp``). Gradient
    steps on ``log phi`` change each concentration by a relative amount, which suits
    concentrations that range over orders of magnitude across channels.

    Layout: layer names are module paths with dots (``features.0``), which a module name
    cannot hold, so :attr:`sites` is a tree of modules with one level per segment of the
    switch site's name, and each site's module holds its ``concentration``: layer
    ``features.0``'s is ``sites.features.0.switch.concentration``. The param store names it
    :func:`concentration_param` (``features.0.switch.concentration``), and the guide's
    ``state_dict()`` holds it unconstrained (``log phi``) under
    ``sites.features.0.switch.concentration_unconstrained``.

    State: as for every ``PyroModule`` the param store holds the fitted values (the
    optimizer steps them there; a checkpoint or :func:`load_guide` puts them back there);
    the guide reads them from it on each call and before ``state_dict()`` and
    ``load_state_dict()``.

    Initialisation: every channel at ``init_concentration`` (default
    :data:`DEFAULT_INIT_CONCENTRATION`), i.e. the guide starts at a symmetric Dirichlet
    whose mean leaves the network unchanged. The parameters are made on the CPU and follow
    the inputs to their device on the first call (or :meth:`initialise`).

    Args:
        layers: the switched layers (``DirichletSwitches.layers``).
        init_concentration: the positive initial concentration of every channel.

    Raises:
        ValueError: a layer name that is not a module path (an empty segment), one given
            twice, or one whose switch site lies below another layer's concentration.

    Example:
        >>> guide = DirichletGuide(switches.layers)  # doctest: +SKIP
        >>> svi = SVI(switches.model, guide, Adam({"lr": 0.1}), TraceMeanField_ELBO())  # doctest: +SKIP
        >>> torch.save(guide.state_dict(), "guide.pt")  # doctest: +SKIP
    """

    def __init__(self, layers: list[PrunableLayer], *, init_concentration: float = DEFAULT_INIT_CONCENTRATION) -> None:
        if isinstance(init_concentration, bool) or not isinstance(init_concentration, (int, float)):
            raise TypeError(f"init_concentration must be a number, got {type(init_concentration).__name__}.")
        if not (0 < init_concentration < float("inf")):
            raise ValueError(f"init_concentration must be positive and finite, got {init_concentration}.")
        super().__init__()
        self.layers = list(layers)
        self.init_concentration = float(init_concentration)
        _check_site_paths([layer.name for layer in self.layers])
        self.sites = PyroModule()
        for layer in self.layers:
            node = self.sites
            for depth, segment in enumerate(switch_site(layer.name).split(".")):
                if segment not in node._modules:
                    node.add_module(segment, _SitePath(segment if depth == 0 else None))
                node = node._modules[segment]
            node.concentration = PyroParam(self._initial(layer, torch.device("cpu")), constraint=constraints.positive)
        self.register_state_dict_pre_hook(_read_store_before_save)
        self.register_load_state_dict_pre_hook(_read_store_before_load)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every switch from its Dirichlet; same signature as the model.

        Returns:
            ``{site name: value}``, as autoguides do, so it composes in an ``AutoGuideList``.
        """
        self._follow(images.device)
        return {
            switch_site(layer.name): pyro.sample(switch_site(layer.name), dist.Dirichlet(self._concentration(layer)))
            for layer in self.layers
        }

    def _initial(self, layer: PrunableLayer, device: torch.device) -> torch.Tensor:
        return torch.full((layer.channels,), self.init_concentration, device=device)

    def _site(self, layer: PrunableLayer) -> PyroModule:
        return self.sites.get_submodule(switch_site(layer.name))

    def _concentration(self, layer: PrunableLayer) -> torch.Tensor:
        """The layer's concentration; inside the guide's context a ``pyro.param`` site, the
        value taken from the param store where it holds one (PyroModule's rule), put there if not."""
        return self._site(layer).concentration

    def _follow(self, device: torch.device) -> None:
        """Move the parameters to ``device`` where they are elsewhere (the first call on a GPU)."""
        first = next(self.parameters(), None)
        if first is not None and first.device != device:
            self.to(device)

    @pyro_method
    def _read_store(self) -> None:
        """Take the param store's values where it holds a concentration (a restored checkpoint, a loaded posterior)."""
        store = pyro.get_param_store()
        with poutine.block():
            for layer in self.layers:
                if concentration_param(layer.name) in store:
                    self._concentration(layer)

    @pyro_method
    def initialise(self, device: torch.device | str = "cpu") -> None:
        """Put every concentration in the param store now, on ``device`` (a value already there is kept)."""
        self._follow(torch.device(device))
        with poutine.block():
            for layer in self.layers:
                self._concentration(layer)

    def reset(self) -> None:
        """Forget fitted values, here and in the param store: the next call starts again from ``init_concentration``."""
        store = pyro.get_param_store()
        for layer in self.layers:
            if concentration_param(layer.name) in store:
                del store[concentration_param(layer.name)]
            site = self._site(layer)
            device = site.concentration_unconstrained.device
            site.concentration = PyroParam(self._initial(layer, device), constraint=constraints.positive)

    @pyro_method
    def concentrations(self) -> dict[str, torch.Tensor]:
        """The current concentrations, detached, on the CPU, ``{layer name: (channels,)}``."""
        with poutine.block():
            return {layer.name: self._concentration(layer).detach().cpu().clone() for layer in self.layers}


# Module-level hooks, not lambdas, so a guide pickles (torch.save) and deep-copies.
def _read_store_before_save(guide: DirichletGuide, prefix: str, keep_vars: bool) -> None:
    guide._read_store()


def _read_store_before_load(guide: DirichletGuide, *args) -> None:
    guide._read_store()


def _check_site_paths(names: list[str]) -> None:
    """Raise ``ValueError`` where layer names cannot each have their own path in :attr:`DirichletGuide.sites`."""
    params = {concentration_param(name) for name in names}
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"layers name {name!r} twice; each switched layer has one concentration.")
        seen.add(name)
        segments = switch_site(name).split(".")
        if "" in segments:
            raise ValueError(f"layer name {name!r} is not a module path (it has an empty segment).")
        for end in range(1, len(segments) + 1):
            if ".".join(segments[:end]) in params:
                raise ValueError(f"layer {name!r}'s switch site lies below {'.'.join(segments[:end])!r}, "
                                 f"another layer's concentration; rename one of the two modules.")


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
