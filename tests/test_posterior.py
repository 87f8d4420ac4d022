import numpy as np
import pytest
import torch

from pyro_dirichlet.criteria.posterior import posterior_mean
from pyro_dirichlet.posterior import (
    layer_draws,
    channel_dim,
    layer_summaries,
    load_posterior,
    plot_forest,
    sample_posterior,
    save_posterior,
    summary_table,
)

CONCENTRATIONS = {
    "conv1": torch.tensor([8.0, 1.0, 0.5, 20.0]),
    "features.3": torch.tensor([2.0, 2.0, 6.0]),
}


def test_posterior_has_named_channel_dims_with_original_indices():
    tree = sample_posterior(CONCENTRATIONS, num_samples=200, channels={"conv1": np.array([3, 5, 8, 9])})
    post = tree["posterior"]
    assert set(post.data_vars) == {"conv1.switch", "features.3.switch"}
    assert post["conv1.switch"].dims == ("chain", "draw", "conv1_channel")
    assert post["features.3.switch"].dims == ("chain", "draw", "features_3_channel")
    assert post["conv1.switch"].shape == (1, 200, 4)
    assert post["conv1_channel"].values.tolist() == [3, 5, 8, 9]
    assert np.allclose(post["conv1.switch"].sum("conv1_channel"), 1.0)
    assert channel_dim("layer1.0.conv1") == "layer1_0_conv1_channel"


def test_summary_matches_the_dirichlet_moments_and_hdi_brackets_the_mean():
    tree = sample_posterior(CONCENTRATIONS, num_samples=4000, seed=1)
    table = summary_table(tree, ci_prob=0.9)
    assert list(table.columns) == ["mean", "sd", "hdi90_lb", "hdi90_ub"]
    assert "conv1.switch[3]" in table.index
    summaries = layer_summaries(tree, ci_prob=0.9)
    for layer, concentration in CONCENTRATIONS.items():
        total = concentration.sum()
        mean = (concentration / total).numpy()
        sd = torch.sqrt(concentration * (total - concentration) / (total**2 * (total + 1))).numpy()
        summary = summaries[layer]
        assert np.allclose(summary.mean, mean, atol=0.01)
        assert np.allclose(summary.sd, sd, rtol=0.1)
        assert (summary.hdi_lower < summary.mean).all() and (summary.mean < summary.hdi_upper).all()
    assert summaries["conv1"].ranked().tolist() == [3, 0, 1, 2]


def test_posterior_mean_importance_ranks_by_concentration():
    scores = posterior_mean(sample_posterior(CONCENTRATIONS, num_samples=3000))
    assert scores["conv1"].argsort(descending=True).tolist() == [3, 0, 1, 2]
    assert scores["conv1"].dtype == torch.float64


def test_draws_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    a = sample_posterior(CONCENTRATIONS, num_samples=50, seed=7)
    assert torch.equal(torch.rand(1), expected)
    b = sample_posterior(CONCENTRATIONS, num_samples=50, seed=7)
    assert np.array_equal(a["posterior"]["conv1.switch"].values, b["posterior"]["conv1.switch"].values)


def test_netcdf_round_trip_and_forest_plot(tmp_path):
    tree = sample_posterior(CONCENTRATIONS, num_samples=100)
    path = save_posterior(tree, tmp_path / "posterior.nc")
    loaded = load_posterior(path)
    assert np.array_equal(loaded["posterior"]["conv1.switch"].values, tree["posterior"]["conv1.switch"].values)
    assert loaded["posterior"]["conv1.switch"].dims == ("chain", "draw", "conv1_channel")
    figure = plot_forest(tree, tmp_path / "forest.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forest.png", "posterior.nc"]  # no temp files left


@pytest.mark.parametrize("num_samples", [0, 1, 2.5])
def test_bad_num_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        sample_posterior(CONCENTRATIONS, num_samples=num_samples)


def test_bad_ci_prob():
    with pytest.raises(ValueError, match="ci_prob"):
        summary_table(sample_posterior(CONCENTRATIONS, num_samples=10), ci_prob=1.0)


def test_layer_draws_are_the_posterior_samples_in_channel_order():
    posterior = sample_posterior({"conv1": torch.tensor([1.0, 2.0, 3.0])}, num_samples=50, seed=3, channels={"conv1": [4, 7, 9]})
    draws = layer_draws(posterior)["conv1"]
    assert draws.shape == (50, 3)
    assert np.allclose(draws.sum(1), 1.0)
    assert np.allclose(draws.mean(0), layer_summaries(posterior)["conv1"].mean)


def test_summaries_and_plots_read_the_switches_and_leave_latent_sites_out(tmp_path):
    from pyro_dirichlet.posterior import from_concentrations

    tree = from_concentrations(CONCENTRATIONS, num_samples=100, latents={"alpha": np.linspace(0.5, 1.5, 100)})
    assert tree["posterior"]["alpha"].dims == ("chain", "draw")
    assert sorted(layer_summaries(tree)) == sorted(layer_draws(tree)) == ["conv1", "features.3"]
    assert "alpha" in summary_table(tree).index  # ArviZ's own summary still shows it
    assert plot_forest(tree, tmp_path / "forest.png").exists()
