"""A fit's whole posterior as one DataTree: switch and latent draws, the prior, predictions on held-out data, the fitted parameters.

:func:`from_fit` draws all of it from a fit's result (what
:meth:`pyro_dirichlet.infer.fit.FitResult.posterior` returns); :func:`from_concentrations`
assembles the tree from fitted concentrations and draws already made. The groups:
``posterior`` (every switch, and the prior's latent sites), ``prior``,
``observed_data``, ``log_likelihood`` and ``posterior_predictive`` (so ``az.loo``,
``az.plot_ppc_dist`` and prior-against-posterior plots work), ``variational`` (the fitted
concentrations and the exact posterior means ``phi / sum(phi)``) and ``guide_parameters``
(every fitted parameter, unconstrained as Pyro stores it, from which
:func:`pyro_dirichlet.infer.guide.load_guide` rebuilds the guide bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import arviz_base
import numpy as np
import torch
import xarray as xr

from pyro_dirichlet.data import BatchSource, iterate_batches
from pyro_dirichlet.infer.fit_config import (
    DEFAULT_NUM_SAMPLES, PREDICTIVE_DRAWS, PREDICTIVE_IMAGES, FitConfig, network_context, network_layout,
)
from pyro_dirichlet.infer.likelihoods import CategoricalLikelihood
from pyro_dirichlet.infer.predictive import draw_latents, draw_prior, predict, predict_targets
from pyro_dirichlet.infer.switches import DirichletSwitches, switch_site
from pyro_dirichlet.posterior.draws import channel_dim, switch_draws

__all__ = [
    "GUIDE_PARAMETERS", "VARIATIONAL", "FittedSwitches", "check_variational", "exact_means", "from_concentrations",
    "from_fit", "layer_gains",
]

#: Group of the fitted concentrations ``<layer>.switch.concentration`` and the exact posterior
#: means ``<layer>.switch.mean`` (``phi / sum(phi)``).
VARIATIONAL = "variational"
#: Group of every fitted parameter as Pyro stores it (unconstrained), named as in the param store.
GUIDE_PARAMETERS = "guide_parameters"


class FittedSwitches(Protocol):
    """What :func:`from_fit` reads of a fit: :class:`pyro_dirichlet.infer.fit.FitResult`'s fields.

    Named here rather than imported so that the posterior does not depend on the fitting
    machinery (which imports this module to draw its posterior).
    """

    concentrations: dict[str, torch.Tensor]
    device: str
    config: FitConfig
    switches: DirichletSwitches | None
    guide: Callable | None
    parameters: dict[str, torch.Tensor]
    example: torch.Tensor | None


def from_fit(
    result: FittedSwitches,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    validation: BatchSource | None = None,
    predictive_draws: int = PREDICTIVE_DRAWS,
    validation_size: int = PREDICTIVE_IMAGES,
) -> xr.DataTree:
    """A fit's whole posterior as an ArviZ DataTree: switch and latent draws from the guide, prior draws, predictions.

    Args:
        result: the fit (:class:`~pyro_dirichlet.infer.fit.FitResult`). One built from
            concentrations alone (no ``switches``, ``guide`` or ``example``) gives the
            switch draws and the ``variational`` group only.
        num_samples: draws of every switch and latent site from the guide, and from the prior.
        seed: seed of every draw (the global random streams are left as they were).
        validation: held-out data (a ``Split`` or an iterable of batches): with it, the
            first ``validation_size`` examples become ``observed_data``, and the first
            ``predictive_draws`` posterior draws give the ``log_likelihood`` and
            ``posterior_predictive`` groups (``az.loo``, ``az.plot_ppc_dist``). PSIS
            needs at least ~30 draws. For a likelihood other than the categorical one
            there are no class ``probabilities``, the draws run one at a time, and a
            loss likelihood draws no targets (no ``posterior_predictive``; see
            :func:`~pyro_dirichlet.infer.predictive.predict_targets`).
        predictive_draws: posterior draws the network is run under.
        validation_size: validation examples predicted.

    Returns:
        groups ``posterior``, ``prior``, ``variational``, ``guide_parameters`` and, with
        ``validation``, ``observed_data``, ``log_likelihood``, ``posterior_predictive``
        (see :func:`from_concentrations`).

    Raises:
        ValueError: ``predictive_draws`` is not in ``[1, num_samples]`` where ``validation`` is given.

    Example:
        >>> tree = from_fit(fit(switches, data.train), validation=data.validation)  # doctest: +SKIP
    """
    if result.switches is None or result.guide is None or result.example is None:
        return from_concentrations(result.concentrations, num_samples=num_samples, seed=seed)
    if validation is not None and not 1 <= predictive_draws <= num_samples:
        raise ValueError(f"predictive_draws must lie in [1, num_samples={num_samples}], got {predictive_draws!r}.")
    device = torch.device(result.device)
    example = result.example.to(device)
    latents = draw_latents(result.switches, result.guide, example, num_samples=num_samples, seed=seed)
    prior = draw_prior(result.switches, example, num_samples=num_samples, seed=seed)
    labels = predictive = None
    held_out = _first_examples(validation, validation_size) if validation is not None else None
    if held_out is not None:
        images, labels = held_out[0].to(device), held_out[1].to(device)
        draws, _, _ = switch_draws(result.concentrations, num_samples=num_samples, seed=seed)
        samples = {site: value[0, :predictive_draws] for site, value in draws.items()}
        samples.update({site: value[:predictive_draws] for site, value in latents.items()})
        # The network's forward as in the fit (its precision, layout, fast pooling); probabilities in float64.
        channels_last = result.config.channels_last and images.dim() == 4
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with network_layout(result.switches.network, result.config), \
                network_context(result.config, device, channels_last=channels_last):
            if isinstance(result.switches.likelihood, CategoricalLikelihood):
                predictive = predict(result.switches, samples, images, labels, seed=seed)
            else:
                predictive = predict_targets(result.switches, samples, images, labels, seed=seed)
        labels = labels.cpu().numpy()
    attrs = {"hyper_guide": result.config.hyper_guide, "init_concentration": result.config.init_concentration}
    return from_concentrations(
        result.concentrations,
        num_samples=num_samples,
        seed=seed,
        latents=latents,
        prior=prior,
        labels=labels,
        predictive=predictive,
        parameters=result.parameters,
        attrs=attrs,
    )


def _first_examples(data: BatchSource, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``count`` examples of ``data`` as ``(inputs, targets)``, or ``None`` when it holds none."""
    inputs, targets, held = [], [], 0
    for batch in iterate_batches(data, count, shuffle=False, name="validation"):
        inputs.append(batch.inputs[: count - held])
        targets.append(batch.targets[: count - held])
        held += len(inputs[-1])
        if held >= count:
            break
    if held == 0:
        return None
    return torch.cat(inputs), torch.cat(targets)


def from_concentrations(
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
        >>> tree = from_concentrations({"fc1": torch.ones(4)}, num_samples=100)
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
    tree = arviz_base.from_dict(groups, dims=dims, coords=coords)
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
        raise ValueError(f"the posterior has no {VARIATIONAL!r} group: it holds draws only (see from_concentrations).")
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
