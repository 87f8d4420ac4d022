"""The switch posterior as ArviZ data: draws, summaries with HDI credible intervals, forest plots, NetCDF files.

Every ArviZ call in the project lives in this module. The posterior is an
``xarray.DataTree`` with a ``posterior`` group holding one variable per switched layer,
named like its Pyro site (``conv1.switch``), with dimensions ``(chain, draw,
conv1_channel)`` whose channel coordinates are the original channel indices -- so a summary
row reads ``conv1.switch[17]`` whatever was pruned before or after. A fit's whole posterior
(:func:`~pyro_dirichlet.posterior.fitted.from_fit`, or
:func:`~pyro_dirichlet.posterior.fitted.from_concentrations` from draws already made) adds
the prior's latent sites and more groups to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# ArviZ 1.x is three packages; importing the ``arviz`` umbrella loads all of them (about
# 1.7 s here). The conversions need only ``arviz_base``; ``arviz_stats`` and ``arviz_plots``
# are imported where a summary or a plot is made, so a fit does not pay for the plotting stack.
import arviz_base
import numpy as np
import pandas as pd
import torch
import xarray as xr

from pyro_dirichlet.io.atomic import atomic_path, atomic_write
from pyro_dirichlet.io.regular_files import check_regular
from pyro_dirichlet.infer.fit_config import DEFAULT_NUM_SAMPLES
from pyro_dirichlet.infer.switches import switch_site
from pyro_dirichlet.posterior.draws import channel_dim, switch_draws

__all__ = [
    "DEFAULT_CI_PROB",
    "LayerSummary",
    "channel_dim",
    "switch_variables",
    "sample_posterior",
    "summary_table",
    "layer_summaries",
    "layer_draws",
    "plot_forest",
    "save_posterior",
    "load_posterior",
]


#: Probability mass of the HDI credible intervals wherever none is given: the summaries,
#: the forest plots, ``pyro-dirichlet fit`` and ``report``.
DEFAULT_CI_PROB = 0.95


def switch_variables(group: xr.Dataset | xr.DataTree) -> dict[str, xr.DataArray]:
    """``{layer: variable}`` for the switch variables (``<layer>.switch``) of a group, leaving out the prior's latent sites."""
    return {
        str(name).removesuffix(".switch"): data for name, data in group.data_vars.items() if str(name).endswith(".switch")
    }


def sample_posterior(
    concentrations: Mapping[str, torch.Tensor],
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    channels: Mapping[str, np.ndarray] | None = None,
) -> xr.DataTree:
    """Draw switch samples from fitted Dirichlet guides into an ArviZ DataTree.

    Args:
        concentrations: ``{layer name: concentration vector}`` of the fitted guide.
        num_samples: draws per layer (one chain).
        seed: seed of the draws (they do not touch the global RNG).
        channels: optional original channel indices per layer for the coordinates
            (default ``0..C-1``).

    Returns:
        an ``xarray.DataTree`` with group ``posterior``: variables ``<layer>.switch`` with
        dims ``(chain, draw, <layer>_channel)``.
    """
    draws, dims, coords = switch_draws(concentrations, num_samples=num_samples, seed=seed, channels=channels)
    return arviz_base.from_dict({"posterior": draws}, dims=dims, coords=coords)


def summary_table(posterior: xr.DataTree, *, ci_prob: float = DEFAULT_CI_PROB) -> pd.DataFrame:
    """ArviZ's summary of every switch: ``mean``, ``sd`` and the HDI bounds.

    Rows are ``<layer>.switch[<channel>]``; the HDI columns are named by ArviZ, e.g.
    ``hdi95_lb`` and ``hdi95_ub`` for ``ci_prob=0.95``.
    """
    if not 0 < ci_prob < 1:
        raise ValueError(f"ci_prob must be strictly between 0 and 1, got {ci_prob}.")
    import arviz_stats

    return pd.DataFrame(arviz_stats.summary(posterior, kind="stats", ci_prob=ci_prob, ci_kind="hdi", round_to="none"))


@dataclass(frozen=True)
class LayerSummary:
    """Posterior summary of one layer's switch: arrays indexed like ``channels``."""

    layer: str
    channels: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    hdi_lower: np.ndarray
    hdi_upper: np.ndarray
    ci_prob: float

    def ranked(self) -> np.ndarray:
        """Positions of the channels from most to least important by posterior mean."""
        return np.argsort(-self.mean, kind="stable")


def layer_summaries(posterior: xr.DataTree, *, ci_prob: float = DEFAULT_CI_PROB) -> dict[str, LayerSummary]:
    """Split :func:`summary_table` into one :class:`LayerSummary` per switched layer."""
    table = summary_table(posterior, ci_prob=ci_prob)
    lower, upper = (c for c in table.columns if c.startswith("hdi"))
    summaries = {}
    for layer, data in switch_variables(posterior["posterior"]).items():
        variable = switch_site(layer)
        channels = np.asarray(data[channel_dim(layer)].values)
        rows = table.loc[[f"{variable}[{c}]" for c in channels]]
        summaries[layer] = LayerSummary(
            layer=layer,
            channels=channels,
            mean=rows["mean"].to_numpy(float),
            sd=rows["sd"].to_numpy(float),
            hdi_lower=rows[lower].to_numpy(float),
            hdi_upper=rows[upper].to_numpy(float),
            ci_prob=ci_prob,
        )
    return summaries


def layer_draws(posterior: xr.DataTree) -> dict[str, np.ndarray]:
    """Every layer's switch draws as ``{layer: array (draws, channels)}``, chains stacked, channels in coordinate order."""
    draws = {}
    for layer, data in switch_variables(posterior["posterior"]).items():
        values = np.asarray(data.transpose("chain", "draw", channel_dim(layer)).values)
        draws[layer] = values.reshape(-1, values.shape[-1])
    return draws


def plot_forest(
    posterior: xr.DataTree,
    path: str | os.PathLike,
    *,
    ci_prob: float = DEFAULT_CI_PROB,
    max_channels: int = 40,
    layers: Sequence[str] | None = None,
) -> Path:
    """Save ArviZ's forest plot of the switch posteriors (50% and ``ci_prob`` HDIs) to ``path``.

    Each switch is drawn as ``s_c * C`` (its value times the layer's width), so every layer
    shares one scale on which 1 is the prior mean -- the unswitched network -- and a channel
    above 1 matters more than its layer's average. Layers wider than ``max_channels`` show
    only their ``max_channels`` channels of highest posterior mean, labelled by their
    original indices. ``layers`` restricts the plot to those layers (default: every one),
    e.g. one plot per layer in a report.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import arviz_plots
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = {}
    switches = switch_variables(posterior["posterior"])
    if layers is not None:
        unknown = sorted(set(layers) - set(switches))
        if unknown:
            raise ValueError(f"layers {unknown} have no switch in the posterior.")
        switches = {layer: switches[layer] for layer in layers}
    for layer, data in switches.items():
        variable = switch_site(layer)
        dim = data.dims[-1]
        means = data.mean(("chain", "draw"))
        top = np.sort(means.sortby(means, ascending=False)[dim].values[:max_channels])
        shown[variable] = data.sel({dim: top}) * data.sizes[dim]
    rows = sum(data.sizes[data.dims[-1]] for data in shown.values())
    plot = arviz_plots.plot_forest(
        xr.DataTree.from_dict({"posterior": xr.Dataset(shown)}),
        combined=True,
        # ArviZ 1.x draws equal-tailed intervals unless asked: the caption promises HDIs.
        ci_kind="hdi",
        ci_probs=[0.5, ci_prob],
        backend="matplotlib",
        # About a sixth of an inch a channel: ArviZ's default leaves ~1,500 px of margins per layer.
        figure_kwargs={"figsize": (6.0, 0.17 * rows + 0.9)},
    )
    with atomic_path(path) as temporary:
        plot.savefig(temporary, format=path.suffix.lstrip(".") or "png")
    plt.close("all")
    return path


def save_posterior(posterior: xr.DataTree, path: str | os.PathLike) -> Path:
    """Write the posterior DataTree to NetCDF (``h5netcdf``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Serialised in memory, then written by Python: a full disk then fails as an OSError in
    # the write, not inside HDF5 while it closes the file (which can crash the process).
    data = bytes(posterior.to_netcdf(engine="h5netcdf"))
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path


def load_posterior(path: str | os.PathLike) -> xr.DataTree:
    """Read a posterior written by :func:`save_posterior`.

    Raises:
        SpecialFileError: ``path`` is a FIFO, a device or anything but a regular file
            (refused before reading: such a file would block the reader or never end).
    """
    check_regular(path, what="posterior file")
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()


from pyro_dirichlet.posterior.fitted import (  # noqa: E402
    GUIDE_PARAMETERS, VARIATIONAL, exact_means, from_concentrations, from_fit, layer_gains,
)

__all__ += ["GUIDE_PARAMETERS", "VARIATIONAL", "exact_means", "from_concentrations", "from_fit", "layer_gains"]
