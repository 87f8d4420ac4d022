import numpy as np
import pytest
import torch

from pyro_dirichlet.posterior import LayerSummary
from pyro_dirichlet.posterior.uncertainty import keep_threshold, mass_curve, straddling_channels, top_k_overlap


def summary(mean, lower, upper, channels=None):
    mean = np.asarray(mean, float)
    return LayerSummary("fc1", np.arange(len(mean)) if channels is None else np.asarray(channels), mean, mean * 0,
                        np.asarray(lower, float), np.asarray(upper, float), 0.95)


def test_mass_curve_counts_channels_by_decreasing_mean():
    s = summary([0.05, 0.6, 0.3, 0.05], [0] * 4, [1] * 4)
    assert mass_curve(s) == {0.5: 1, 0.9: 2, 0.99: 4}
    assert mass_curve(s, levels=[0.95]) == {0.95: 3}


def test_straddling_channels_are_those_whose_interval_holds_the_threshold():
    s = summary([0.4, 0.3, 0.2, 0.1], lower=[0.3, 0.1, 0.18, 0.0], upper=[0.5, 0.35, 0.29, 0.15])
    assert keep_threshold(s, [0, 1]) == pytest.approx(0.25)
    assert straddling_channels(s, [0, 1]) == [1, 2]


def test_threshold_uses_original_channel_indices():
    s = summary([0.4, 0.3, 0.2, 0.1], [0] * 4, [1] * 4, channels=[10, 11, 12, 13])
    assert keep_threshold(s, [10]) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="does not have"):
        keep_threshold(s, [0])


def test_top_k_overlap():
    a, b = torch.tensor([4.0, 3, 2, 1]), torch.tensor([3.0, 4, 1, 2])
    assert top_k_overlap(a, b, 2) == 1.0
    assert top_k_overlap(a, torch.tensor([1.0, 2, 3, 4]), 2) == 0.0
    with pytest.raises(ValueError, match="k must be in \\[1, 4\\]"):
        top_k_overlap(a, b, 5)
    with pytest.raises(ValueError, match="of equal length"):
        top_k_overlap(a, torch.ones(3), 2)
