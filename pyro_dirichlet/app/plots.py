"""The report's matplotlib figures that are not ArviZ's: the ELBO curve, the per-layer posterior mass curves, accuracy across posterior draws.

Each function draws one figure with the Agg backend (no display needed) and returns it as
PNG bytes, so the report can both embed it and write it next to ``report.md``. The forest
plots are ArviZ's and live in :mod:`pyro_dirichlet.posterior`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from pyro_dirichlet.posterior import LayerSummary

__all__ = ["accuracy_histogram_png", "elbo_curve_png", "mass_curves_png"]


def _pyplot():
    import matplotlib

    # Agg before pyplot is imported: the report is written on machines without a display.
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def elbo_curve_png(elbo: Sequence[float], *, steps_per_epoch: int | None = None) -> bytes:
    """The ELBO at every SVI step, with a running mean since single minibatches are noisy, and the last step marked.

    The running mean (over up to 20 steps, half the fit at most) is drawn, and named
    in the legend, only where it has at least two points; the view always holds the last step.
    """
    plt = _pyplot()
    values = np.asarray(elbo, dtype=float)
    steps = np.arange(1, len(values) + 1)
    figure, axes = plt.subplots(figsize=(7, 3.2))
    # One step is no line: its marker below is all there is to show.
    axes.plot(steps, values, color="0.7", linewidth=0.8, label="per step" if len(values) > 1 else "_one step")
    window = min(20, len(values) // 2)
    shown = [values[-1]]
    if window > 1:
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axes.plot(np.arange(window, len(values) + 1), smooth, color="C0", label=f"mean of {window} steps")
        shown.append(smooth[-1])
    if steps_per_epoch:
        for boundary in range(steps_per_epoch, len(values), steps_per_epoch):
            axes.axvline(boundary + 0.5, color="0.5", linestyle=":", linewidth=0.8)
    # The first steps' ELBO is orders of magnitude below the rest; clip the view to where it
    # settles, but never past the last step or the running mean's end.
    if len(values) > 10:
        low, high = min(np.percentile(values, 5), *shown), values.max()
        axes.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    axes.set_xlim(0, len(values) + max(1, len(values) // 50))
    axes.plot(steps[-1:], values[-1:], "o", color="C3", markersize=4, label=f"last step ({values[-1]:.4g})")
    axes.set_xlabel("SVI step")
    axes.set_ylabel("ELBO")
    axes.set_title("ELBO during the fit")
    axes.legend(loc="lower right")
    return _png(figure)


def mass_curves_png(summaries: Mapping[str, LayerSummary], kept: Mapping[str, int]) -> bytes:
    """Per layer, the share of switch mass held by its top channels (by posterior mean) against the share of channels.

    A marker shows where each layer's keep decision sits on its curve.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, (layer, summary) in enumerate(summaries.items()):
        mass = np.concatenate([[0.0], np.cumsum(np.sort(summary.mean)[::-1]) / summary.mean.sum()])
        share = np.arange(len(mass)) / summary.mean.size
        color = f"C{index % 10}"
        axes.plot(share, mass, color=color, label=layer)
        if layer in kept:
            axes.plot(share[kept[layer]], mass[kept[layer]], "o", color=color)
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8, label="all channels equal")
    axes.set_xlabel("share of the layer's channels, by decreasing posterior mean")
    axes.set_ylabel("share of the switch mass")
    axes.set_title("Posterior mass curves (dots: channels kept)")
    axes.legend(loc="lower right", fontsize="small", ncol=2 if len(summaries) > 8 else 1)
    return _png(figure)


def accuracy_histogram_png(accuracy_per_draw: Sequence[float], references: Mapping[str, float]) -> bytes:
    """The switched network's accuracy under each posterior draw, as a histogram, with ``references`` as vertical lines.

    Args:
        accuracy_per_draw: one accuracy per switch draw.
        references: ``{label: accuracy}`` of single networks to compare with (the network at
            the posterior mean, the pruned network, ...).
    """
    plt = _pyplot()
    values = np.asarray(accuracy_per_draw, dtype=float)
    figure, axes = plt.subplots(figsize=(7, 3.5))
    # One bin per distinct accuracy level where there are few (a small validation batch), else 30.
    axes.hist(values, bins=min(30, max(1, len(np.unique(values)))), color="0.7", edgecolor="0.4", label="posterior draws")
    for index, (label, value) in enumerate(references.items()):
        axes.axvline(value, color=f"C{index % 10}", linestyle="--", linewidth=1.2, label=f"{label} ({value:.2%})")
    axes.set_xlabel("validation accuracy")
    axes.set_ylabel("posterior draws")
    axes.set_title("Accuracy of the switched network across posterior draws")
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)
