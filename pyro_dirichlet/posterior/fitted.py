"""A fit's whole posterior as one DataTree: switch and latent draws, the prior, predictions on held-out data, the fitted parameters.

The groups: ``posterior`` (every switch, and the prior's latent sites), ``prior``,
``observed_data``, ``log_likelihood`` and ``posterior_predictive`` (so ``az.loo``,
``az.plot_ppc_dist`` and prior-against-posterior plots work), ``variational`` (the fitted
concentrations and the exact posterior means ``phi / sum(phi)``) and ``guide_parameters``
(every fitted parameter, unconstrained as Pyro stores it, from which
:func:`pyro_dirichlet.infer.guide.load_guide` rebuilds the guide bit for bit).
"""

from __future__ import annotations

from collections.abc import Mapping

import arviz as az
import numpy as np
import torch
import xarray as xr

from pyro_dirichlet.infer.fit_config import DEFAULT_NUM_SAMPLES
from pyro_dirichlet.infer.switches import switch_site
from pyro_dirichlet.posterior.draws import channel_dim, switch_draws

__all__ = ["GUIDE_PARAMETERS", "VARIATIONAL", "check_variational", "exact_means", "from_fit", "layer_gains"]

#: Group of the fitted concentrations ``<layer>.switch.concentration`` and the exact posterior
#: means ``<layer>.switch.mean`` (``phi / sum(phi)``).
VARIATIONAL = "variational"
#: Group of every fitted parameter as Pyro stores it (unconstrained), named as in the param store.
GUIDE_PARAMETERS = "guide_parameters"


def from_fit(
    concentrations: Mapping[str, torch.Tensor],
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    channels: Mapping[str, np.ndarray] | None = None,
    latents: Mapping[str, np.ndarray] | None = None,
    prior: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    predictive: Mapping[str, np.ndarray] | None = None,
    parameters: Mapping[str, torch.Tensor] | None = None,
    attrs: Mapping[str, str | float | int] | None = None,
) -> xr.DataTree:
    """A fit's whole posterior as one DataTree, from the fitted concentrations and draws of the rest.

    The switch draws are :func:`~pyro_dirichlet.posterior.sample_posterior`'s (same seed,
    same draws), so pruning decisions read from either agree.

    Args:
        concentrations: ``{layer: fitted concentration}``.
        num_samples: posterior draws of every switch.
        seed: seed of the switch draws.
        channels: original channel indices per layer (default ``0..C-1``).
        latents: ``{site: (draws, ...)}`` posterior draws of the prior's latent sites.
        prior: ``{site: (draws, ...)}`` prior draws of every switch and latent site.
        labels: the held-out labels the predictions were made on (``observed_data``).
        predictive: :func:`pyro_dirichlet.infer.predictive.predict`'s arrays for the first
            draws of the posterior: ``log_likelihood`` and ``obs`` (sampled labels) of dims
            ``(draws, examples)``, ``probabilities`` of ``(draws, examples, classes)``; or
            :func:`~pyro_dirichlet.infer.predictive.predict_targets`'s for another
            likelihood: no ``probabilities``, ``obs`` of the targets' shape (dims
            ``obs_dim_<i>`` after ``example``) or, for a factor likelihood, absent (then
            there is no ``posterior_predictive`` group; the ``log_likelihood`` group's
            ``posterior_predictive`` attribute says why).
        parameters: every fitted parameter, unconstrained, by param-store name.
        attrs: attributes of the ``guide_parameters`` group (how the guide was built).

    Returns:
        an ``xarray.DataTree`` with groups ``posterior``, ``variational`` and those whose
        inputs were given. Switch variables have the dim ``<layer>_channel``, predictions
        ``example`` (and ``class``); a latent site's dims are ArviZ's ``<site>_dim_<i>``.

    Example:
        >>> tree = from_fit({"fc1": torch.ones(4)}, num_samples=100)
        >>> sorted(tree.children)
        ['posterior', 'variational']
    """
    draws, dims, coords = switch_draws(concentrations, num_samples=num_samples, seed=seed, channels=channels)
    groups: dict[str, dict[str, np.ndarray]] = {"posterior": {**draws, **{name: value[None] for name, value in (latents or {}).items()}}}
    if prior:
        groups["prior"] = {name: value[None] for name, value in prior.items()}
    if predictive is not None and "probabilities" in predictive:
        if labels is None:
            raise ValueError("predictive needs the labels the predictions were made on (labels=...).")
        groups["observed_data"] = {"obs": np.asarray(labels)}
        groups["log_likelihood"] = {"obs": predictive["log_likelihood"][None]}
        groups["posterior_predictive"] = {"obs": predictive["obs"][None], "probabilities": predictive["probabilities"][None]}
        dims.update({"obs": ["example"], "probabilities": ["example", "class"]})
    tree = az.from_dict(groups, dims=dims, coords=coords)
    if predictive is not None and "probabilities" not in predictive:
        _add_target_predictions(tree, np.asarray(labels), predictive)
    variational = {}
    for name, concentration in concentrations.items():
        phi = concentration.detach().cpu()
        dim = channel_dim(name)
        coord = {dim: coords[dim]}
        variational[f"{switch_site(name)}.concentration"] = xr.DataArray(phi.numpy(), dims=[dim], coords=coord)
        # The Dirichlet's mean in closed form (float64): what ranking can read free of Monte Carlo error.
        mean = phi.double() / phi.double().sum()
        variational[f"{switch_site(name)}.mean"] = xr.DataArray(mean.numpy(), dims=[dim], coords=coord)
    tree[VARIATIONAL] = xr.DataTree(xr.Dataset(variational))
    if parameters is not None:
        stored = {
            name: xr.DataArray(value.detach().cpu().numpy(), dims=[f"{name}_dim_{i}" for i in range(value.dim())])
            for name, value in parameters.items()
        }
        tree[GUIDE_PARAMETERS] = xr.DataTree(xr.Dataset(stored, attrs=dict(attrs or {})))
    return tree


def _add_target_predictions(tree: xr.DataTree, targets: np.ndarray, predictive: Mapping[str, np.ndarray]) -> None:
    """``observed_data``, ``log_likelihood`` and (where targets were drawn) ``posterior_predictive`` of a non-categorical likelihood.

    Built here rather than by ``az.from_dict``: the targets may have dimensions of their
    own, which the per-example log-likelihood (its event dimensions summed) does not share.
    """
    if targets is None:
        raise ValueError("predictive needs the targets the predictions were made on (labels=...).")
    target_dims = ["example", *(f"obs_dim_{i}" for i in range(targets.ndim - 1))]
    log_likelihood = predictive["log_likelihood"][None]
    sample = {"chain": [0], "draw": np.arange(log_likelihood.shape[1])}
    tree["observed_data"] = xr.DataTree(xr.Dataset({"obs": (target_dims, targets)}))
    attrs = {}
    if "obs" in predictive:
        drawn = xr.Dataset({"obs": (["chain", "draw", *target_dims], predictive["obs"][None])}, coords=sample)
        tree["posterior_predictive"] = xr.DataTree(drawn)
    else:
        attrs["posterior_predictive"] = "not drawn: the likelihood is a factor (a tempered loss), not a distribution of the targets"
    tree["log_likelihood"] = xr.DataTree(xr.Dataset({"obs": (["chain", "draw", "example"], log_likelihood)}, coords=sample, attrs=attrs))


def check_variational(posterior: xr.DataTree) -> None:
    """The ``variational`` group's values are what a fit writes: concentrations finite and positive, means on the simplex.

    Raises:
        ValueError: naming the first variable that is not (a file edited by hand, say).
    """
    if VARIATIONAL not in posterior.children:
        return
    for name, data in posterior[VARIATIONAL].data_vars.items():
        values = np.asarray(data.values, dtype=np.float64)
        if str(name).endswith(".concentration") and not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"the posterior's {name} is not all finite and positive: it is no fitted concentration.")
        if str(name).endswith(".mean") and not (np.isfinite(values).all() and (values >= 0).all()
                                                and np.isclose(values.sum(-1), 1.0, atol=1e-3).all()):
            raise ValueError(f"the posterior's {name} is not a point of the simplex (finite, non-negative, summing to 1).")


def exact_means(posterior: xr.DataTree) -> dict[str, np.ndarray]:
    """Each layer's exact posterior mean switch ``phi / sum(phi)``, in channel-coordinate order.

    Raises:
        ValueError: the tree has no ``variational`` group (a posterior of draws alone).
    """
    if VARIATIONAL not in posterior.children:
        raise ValueError(f"the posterior has no {VARIATIONAL!r} group: it holds draws only (see from_fit).")
    check_variational(posterior)
    return {
        str(name).removesuffix(".switch.mean"): np.asarray(data.values)
        for name, data in posterior[VARIATIONAL].data_vars.items()
        if str(name).endswith(".switch.mean")
    }


def layer_gains(posterior: xr.DataTree) -> dict[str, float | np.ndarray]:
    """Each layer's learned gains, ``{}`` for a fit without gains: a float for one gain per
    layer (``DirichletSwitches(gain="layer")``), an array of one per channel (``gain="channel"``).

    Read from the ``guide_parameters`` group, where Pyro's unconstrained value of the
    positive parameter ``<layer>.switch.gain`` is its logarithm.
    """
    if GUIDE_PARAMETERS not in posterior.children:
        return {}
    suffix = ".switch.gain"
    stored = posterior[GUIDE_PARAMETERS].to_dataset()
    gains = {str(name)[: -len(suffix)]: np.exp(stored[name].values) for name in stored.data_vars if str(name).endswith(suffix)}
    return {name: float(gain) if gain.ndim == 0 else gain for name, gain in gains.items()}
