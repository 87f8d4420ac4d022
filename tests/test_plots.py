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


def legend_entries_drawn(axes) -> list[str]:
    """The legend's labels whose line shows in the view: a marker inside it, or two points of a line."""
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    drawn = []
    for line in axes.get_lines():
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        inside = int(((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).sum())
        if not line.get_label().startswith("_") and inside >= (1 if line.get_marker() not in ("None", "", None) else 2):
            drawn.append(line.get_label())
    return drawn


def test_elbo_curve_marks_epochs_smooths_and_clips_the_first_steps(drawn):
    elbo = [-1e6] + [-100.0 + step for step in range(44)]
    png = plots.elbo_curve_png(elbo, steps_per_epoch=10)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000
    (axes,) = drawn[0].axes
    raw, smooth, *boundaries, last = axes.get_lines()
    assert list(raw.get_ydata()) == elbo
    assert len(smooth.get_xdata()) == len(elbo) - 20 + 1
    assert smooth.get_ydata()[-1] == pytest.approx(np.mean(elbo[-20:]))
    assert [line.get_xdata()[0] for line in boundaries] == [10.5, 20.5, 30.5, 40.5]
    low, high = axes.get_ylim()
    assert low > -1e6 and high >= max(elbo)  # the first step's -1e6 is outside the view
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["per step", "mean of 20 steps", f"last step ({elbo[-1]:.4g})"] == legend_entries_drawn(axes)


def test_the_last_step_stays_in_view_even_when_it_is_the_noisiest(drawn):
    # Issue 32: the last minibatch's ELBO fell below the 5th percentile and out of the view.
    elbo = [-1e6] + [-100.0 + step for step in range(30)] + [-500.0]
    plots.elbo_curve_png(elbo)
    (axes,) = drawn[0].axes
    assert axes.get_ylim()[0] < -500.0 and axes.get_xlim()[1] > len(elbo)
    assert "last step (-500)" in legend_entries_drawn(axes)


def test_a_short_elbo_names_no_running_mean_it_cannot_draw(drawn):
    # Issue 32: 11 steps gave a legend entry "mean of 11 steps" for a line of one point.
    elbo = [-50.0, -3.0, -2.0, -2.5, -2.0, -2.1, -2.0, -1.9, -2.0, -1.8, -1.9]
    plots.elbo_curve_png(elbo)
    plots.elbo_curve_png([-7.0])
    plots.elbo_curve_png(elbo[:3])
    (axes,) = drawn[0].axes
    raw, smooth, last = axes.get_lines()
    assert len(smooth.get_xdata()) == len(elbo) - 5 + 1 and smooth.get_label() == "mean of 5 steps"
    assert [text.get_text() for text in axes.get_legend().get_texts()] == legend_entries_drawn(axes)
    for figure in drawn[1:]:
        (axes,) = figure.axes
        labels = [text.get_text() for text in axes.get_legend().get_texts()]
        assert not any(label.startswith("mean of") for label in labels)
        assert labels == legend_entries_drawn(axes)


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
    assert legend_entries_drawn(axes) == ["conv1", "fc1", "all channels equal"]


def test_the_accuracy_histogram_draws_every_reference_it_names(drawn):
    plots.accuracy_histogram_png([0.9, 0.92, 0.95, 0.95], {"pruned": 0.91, "at the mean": 0.94})
    (axes,) = drawn[0].axes
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["posterior draws", "pruned (91.00%)", "at the mean (94.00%)"]
    assert legend_entries_drawn(axes) == labels[1:] and len(axes.patches) >= 1  # the lines, and the histogram's bars
