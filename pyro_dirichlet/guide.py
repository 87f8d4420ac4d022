"""The variational family: one learnable Dirichlet per switch site."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.switches import switch_site

__all__ = ["DirichletGuide", "DEFAULT_INIT_CONCENTRATION", "concentration_param"]

#: Initial concentration of every channel. Measured on LeNet-5/MNIST (``analysis/``):
#: starting near 1 lets one epoch move the posterior, because at concentration ~1 the
#: switch noise is large (``s*C`` is roughly Exp(1) per channel) and the fit must raise the
#: concentration -- most where noise hurts the likelihood most. Starting near 10 leaves the
#: posterior uniform after one epoch.
DEFAULT_INIT_CONCENTRATION = 1.0


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
        """Sample every switch from its Dirichlet; same signature as the model."""
        device = images.device
        return {
            layer.name: pyro.sample(switch_site(layer.name), dist.Dirichlet(self._concentration(layer, device)))
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
