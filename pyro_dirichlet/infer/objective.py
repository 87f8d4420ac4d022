"""What a fit optimises and how: the ELBO estimator (where the KL comes from) and the optimiser.

The objective is the real ELBO of the switch model. With ``analytic_kl`` (the default)
Pyro's ``TraceMeanField_ELBO`` takes the KL between each switch's Dirichlet guide and its
Dirichlet prior in closed form (``torch.distributions.kl_divergence``, registered for a
Dirichlet pair) and estimates only the expected log-likelihood by sampling; a prior
without a registered KL (a user's own distribution, a hierarchical prior's latent sites)
falls back to sampling its term. ``Trace_ELBO`` samples every term.
"""

from __future__ import annotations

import pyro.optim
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

__all__ = ["DEFAULT_LR_DECAY", "DEFAULT_OPTIMIZER", "OPTIMIZERS", "elbo_estimator", "switch_optimizer"]

#: ``FitConfig.optimizer`` names: Adam (one step scale per channel) or :class:`~pyro_dirichlet.infer.optim.LayerAdam`
#: (one step scale per layer).
OPTIMIZERS = ("adam", "layer-adam")
#: The optimiser unless told otherwise. Adam divides each concentration's step by its own
#: gradient scale, so a channel the likelihood cannot see (a unit that never fires, pulled
#: only by the small KL) moves as fast as one it pulls hard on, and a fit of a few hundred
#: steps ranks by step count rather than evidence. One scale per layer keeps the steps in
#: proportion to the pulls (``analysis/ranking_quality.py``: see ``DEFAULT_GAIN``).
DEFAULT_OPTIMIZER = "layer-adam"

#: ``FitConfig.lr_decay``: the learning rate falls tenfold every 1,000 steps.
DEFAULT_LR_DECAY = 0.1 ** (1 / 1000)


def elbo_estimator(analytic_kl: bool, num_particles: int, *, vectorize: bool = True) -> ELBO:
    """The ELBO estimator: closed-form switch KL (``analytic_kl``) or all sampled, ``num_particles`` draws.

    ``vectorize=False`` draws particles in a loop even where they could run as one batch:
    a prior with latent sites of its own (``alpha.expand(C)``) is rarely written to
    broadcast over a particle dimension.
    """
    family = TraceMeanField_ELBO if analytic_kl else Trace_ELBO
    if num_particles > 1 and vectorize:
        # The data plate is the model's only plate; the particle plate goes left of it.
        return family(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return family(num_particles=num_particles)


def switch_optimizer(lr: float, lr_decay: float = DEFAULT_LR_DECAY, kind: str = DEFAULT_OPTIMIZER) -> pyro.optim.PyroOptim:
    """The optimiser of the log-concentrations: ``"adam"``, with a decaying rate (``lr_decay < 1``,
    multiplied in after every step) Pyro's ``ClippedAdam`` with its clipping switched off; or
    ``"layer-adam"`` (:class:`~pyro_dirichlet.infer.optim.LayerAdam`: one step scale per layer)."""
    if kind == "layer-adam":
        from pyro_dirichlet.infer.optim import LayerAdam

        return pyro.optim.PyroOptim(LayerAdam, {"lr": lr, "lrd": lr_decay})
    if kind != "adam":
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {kind!r}.")
    if lr_decay == 1:
        return pyro.optim.Adam({"lr": lr})
    return pyro.optim.ClippedAdam({"lr": lr, "lrd": lr_decay, "clip_norm": float("inf")})
