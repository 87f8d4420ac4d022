"""The report's own figures (app/plots.py), read back from the matplotlib figure they draw before it becomes PNG bytes."""

import numpy as np
import pytest

from pyro_dirichlet.app import plots
from pyro_dirichlet.posterior import LayerSummary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions draw, kept open for the test to read."""
    figures, real = [], plots._png

    def keep(figure):
        figures.append(figure)
        return real(figure)

    monkeypatch.setattr(plots, "_png", keep)
    return figures


def summary(layer, mean):
    mean = np.asarray(mean, dtype=float)
    return LayerSummary(layer, np.arange(len(mean)), mean, mean * 0, mean * 0, mean * 0, 0.95)


def test_elbo_curve_marks_epochs_smooths_and_clips_the_first_steps(drawn):
    elbo = [-1e6] + [-100.0 + step for step in range(34)]
    png = plots.elbo_curve_png(elbo, steps_per_epoch=10)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000
    (axes,) = drawn[0].axes
    raw, smooth, *boundaries = axes.get_lines()
    assert list(raw.get_ydata()) == elbo
    assert len(smooth.get_xdata()) == len(elbo) - 20 + 1
    assert smooth.get_ydata()[-1] == pytest.approx(np.mean(elbo[-20:]))
    assert [line.get_xdata()[0] for line in boundaries] == [10.5, 20.5, 30.5]
    low, high = axes.get_ylim()
    assert low > -1e6 and high >= max(elbo)  # the first step's -1e6 is outside the view


def test_a_short_elbo_is_averaged_over_all_its_steps_and_not_clipped(drawn):
    elbo = [-50.0, -3.0, -2.0, -2.5, -2.0]
    plots.elbo_curve_png(elbo)
    plots.elbo_curve_png([-7.0])
    (axes,) = drawn[0].axes
    raw, smooth = axes.get_lines()
    assert list(smooth.get_xdata()) == [5] and smooth.get_ydata()[0] == pytest.approx(np.mean(elbo))
    assert axes.get_ylim()[0] <= -50.0  # ten steps or fewer: every one stays in view
    assert len(drawn[1].axes[0].get_lines()) == 1  # one step: nothing to average


def test_mass_curves_rise_from_0_to_1_and_mark_the_kept_count(drawn):
    summaries = {"conv1": summary("conv1", [0.1, 0.6, 0.3]), "fc1": summary("fc1", [0.25, 0.25, 0.25, 0.25])}
    assert plots.mass_curves_png(summaries, {"conv1": 1}).startswith(PNG_SIGNATURE)
    (axes,) = drawn[0].axes
    conv1, marker, fc1, diagonal = axes.get_lines()
    assert list(conv1.get_xdata()) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert list(conv1.get_ydata()) == pytest.approx([0, 0.6, 0.9, 1.0])  # largest means first
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx((1 / 3, 0.6))
    assert list(fc1.get_ydata()) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])  # equal channels: the diagonal
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["conv1", "fc1", "all channels equal"]
