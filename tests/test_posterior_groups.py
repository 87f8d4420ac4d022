"""A fit's whole posterior: prior, latent sites, predictions on held-out data, exact means, and an exact reload."""

import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Predictive
from pyro.infer.inspect import get_model_relations

from pyro_dirichlet.data import Split
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer.guide import DirichletGuide, guide_concentrations, load_guide
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.posterior import exact_means, layer_summaries, load_posterior, sample_posterior, save_posterior
from test_hierarchical import planted, shared_alpha

pytestmark = pytest.mark.usefixtures("one_thread")


def labelled(network, n, seed):
    images = torch.randn(n, 1, 14, 14, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        labels = network.eval()(images).argmax(1)
    # Flip a fifth of the labels: held-out data the network gets partly wrong, as real data is.
    flip = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) < 0.2
    return Split(images, torch.where(flip, (labels + 1) % 3, labels))


@pytest.fixture
def fitted(tiny_cnn, tiny_images):
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2], prior=1.0, layer_gain=False)  # the paper's model
    result = fit(switches, labelled(tiny_cnn, 256, 0), FitConfig(epochs=2, batch_size=32, progress=False, device="cpu",
                                                                 init_concentration=1.0, lr_decay=1.0))
    return switches, result


def test_the_posterior_has_every_group_with_named_dims(fitted, tiny_cnn):
    switches, result = fitted
    validation = labelled(tiny_cnn, 64, 5)
    tree = result.posterior(num_samples=200, validation=validation, predictive_draws=100)
    assert set(tree.children) == {
        "posterior", "prior", "observed_data", "log_likelihood", "posterior_predictive", "variational", "guide_parameters"
    }
    assert tree["prior"]["conv1.switch"].dims == ("chain", "draw", "conv1_channel")
    assert tree["log_likelihood"]["obs"].dims == ("chain", "draw", "example")
    assert tree["posterior_predictive"]["probabilities"].shape == (1, 100, 64, 3)
    assert np.array_equal(tree["observed_data"]["obs"].values, validation.labels.numpy())
    # the prior group holds prior draws: Dirichlet(1) means 1/C, unlike the fitted posterior
    assert np.allclose(tree["prior"]["fc1.switch"].mean(("chain", "draw")).values, 1 / 12, atol=0.02)
    # predictions are the switched network's: its class probabilities sum to one and the
    # log-likelihood is the log-probability of each observed label
    probabilities = tree["posterior_predictive"]["probabilities"].values[0]
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-6)
    observed = np.take_along_axis(probabilities, validation.labels.numpy()[None, :, None], -1)[..., 0]
    np.testing.assert_allclose(np.exp(tree["log_likelihood"]["obs"].values[0]), observed, rtol=1e-5)
    # ArviZ reads it: PSIS-LOO over the held-out examples, and the predictive check plot
    with warnings.catch_warnings():
        # the Pareto-k diagnostic may warn at 100 draws; what is checked here is that LOO reads the file
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        loo = az.loo(tree, pointwise=True)
    assert np.isfinite(loo.elpd) and loo.elpd < 0 and loo.pareto_k.shape == (64,)
    az.plot_ppc_dist(tree, var_names=["obs"], kind="ecdf", backend="matplotlib")  # ECDF: the labels are discrete
    import matplotlib.pyplot as plt

    plt.close("all")


def test_exact_means_are_phi_over_its_sum_and_agree_with_the_draws(fitted):
    _, result = fitted
    tree = result.posterior(num_samples=4000)
    means = exact_means(tree)
    for layer, phi in result.concentrations.items():
        np.testing.assert_array_equal(means[layer], (phi.double() / phi.double().sum()).numpy())
        monte_carlo = tree["posterior"][f"{layer}.switch"].mean(("chain", "draw")).values
        np.testing.assert_allclose(monte_carlo, means[layer], atol=0.01)
    with pytest.raises(ValueError, match="no 'variational' group"):
        exact_means(sample_posterior(result.concentrations, num_samples=10))


def test_a_saved_posterior_reloads_the_guide_bit_for_bit(fitted, tmp_path, tiny_images):
    switches, result = fitted
    tree = result.posterior(num_samples=300, seed=2)
    save_posterior(tree, tmp_path / "posterior.nc")
    pyro.clear_param_store()
    loaded = load_posterior(tmp_path / "posterior.nc")
    guide = load_guide(loaded, switches)
    assert isinstance(guide, DirichletGuide)
    concentrations = guide_concentrations(guide, switches.layers, tiny_images[:1])
    for layer, phi in result.concentrations.items():
        assert torch.equal(concentrations[layer], phi), layer
    # the same concentrations draw the same posterior, so the same channels are kept
    again = sample_posterior(concentrations, num_samples=300, seed=2)
    before, after = layer_summaries(tree), layer_summaries(again)
    for layer in before:
        assert np.array_equal(before[layer].ranked(), after[layer].ranked())


def test_a_hierarchical_prior_has_a_posterior_that_moved_and_reloads():
    network, data = planted(512)
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    result = fit(switches, data, FitConfig(epochs=5, batch_size=64, progress=False, device="cpu",
                                                 init_concentration=1.0, lr_decay=1.0))
    tree = result.posterior(num_samples=500)
    posterior, prior = tree["posterior"]["alpha"].values, tree["prior"]["alpha"].values
    assert prior.mean() == pytest.approx(1.0, abs=0.1)  # Gamma(2, 2)
    # four of sixteen units matter: the shared concentration falls far below its prior (measured:
    # mean 0.29 and 95% quantile 0.42 under the default LayerAdam, 0.12 under Adam; the prior's median is 0.84)
    assert posterior.mean() < 0.35 and np.quantile(posterior, 0.95) < np.quantile(prior, 0.5)
    locs = {name: value for name, value in pyro.get_param_store().named_parameters()}
    pyro.clear_param_store()
    load_guide(tree, switches)
    for name, value in pyro.get_param_store().named_parameters():
        assert torch.equal(value, locs[name]), name


def test_predictive_runs_vectorised_on_the_switch_model(tiny_cnn, tiny_images):
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    guide = DirichletGuide(switches.layers)
    sites = [f"{layer.name}.switch" for layer in switches.layers]
    out = Predictive(switches.model, guide=guide, num_samples=5, parallel=True, return_sites=["obs", *sites, "_RETURN"])(tiny_images)
    assert out["obs"].shape == (5, 16) and out["fc1.switch"].shape == (5, 1, 12) and out["_RETURN"].shape == (5, 16, 3)
    # given draws: each switch as (draws, 1, channels), the draws' dim left of the data plate's
    samples = {name: out[name] for name in sites}
    again = Predictive(switches.model, posterior_samples=samples, parallel=True, return_sites=["_RETURN"])(tiny_images)
    torch.testing.assert_close(again["_RETURN"], out["_RETURN"])


def test_model_relations_show_the_hyper_prior_feeding_every_switch():
    network, data = planted(8)
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    relations = get_model_relations(switches.model, model_args=(data.images, data.labels))
    assert relations["sample_sample"]["1.switch"] == ["alpha"]
    assert relations["observed"] == ["obs"] and "1.switch" in relations["sample_sample"]["obs"]


def test_render_model_draws_the_switch_model(tmp_path):
    pytest.importorskip("graphviz")  # pyro.render_model needs the graphviz package (and its dot binary)
    network, data = planted(8)
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    graph = pyro.render_model(switches.model, model_args=(data.images, data.labels), render_distributions=True)
    assert "alpha" in graph.source and "1.switch" in graph.source


def test_ranking_reads_the_exact_mean_where_the_posterior_has_it(fitted):
    from pyro_dirichlet.criteria.posterior import posterior_mean

    _, result = fitted
    scores = posterior_mean(result.posterior(num_samples=50))  # 50 draws: a noisy Monte Carlo mean
    for layer, phi in result.concentrations.items():
        assert torch.equal(scores[layer], phi.double() / phi.double().sum())


def test_predictive_check_reads_accuracy_and_calibration_over_draws(fitted, tiny_cnn):
    from pyro_dirichlet.posterior.calibration import expected_calibration_error, predictive_check

    _, result = fitted
    validation = labelled(tiny_cnn, 64, 5)
    tree = result.posterior(num_samples=200, validation=validation, predictive_draws=50)
    check = predictive_check(tree)
    probabilities = tree["posterior_predictive"]["probabilities"].values[0]
    labels = validation.labels.numpy()
    assert check.accuracy == pytest.approx((probabilities.mean(0).argmax(1) == labels).mean())
    assert check.accuracy_per_draw.shape == (50,)
    assert check.accuracy_per_draw.std() > 0  # the switch draws do change the predictions
    # labels are 20% flipped: no draw gets them all right, and the averaged network is calibrated within reason
    assert check.accuracy_per_draw.max() < 1 and 0 < check.calibration_error < 0.5
    assert set(check.to_dict()["accuracy_per_draw"]) == {"mean", "sd", "q2.5", "median", "q97.5"}
    with pytest.raises(ValueError, match="FitResult.posterior\\(validation=...\\)"):
        predictive_check(result.posterior(num_samples=10))


def test_expected_calibration_error_on_hand_made_cases():
    from pyro_dirichlet.posterior.calibration import expected_calibration_error

    # two bins: 0.9-confident and right (gap 0.1), 0.8-confident and wrong (gap 0.8) -> mean 0.45
    assert expected_calibration_error(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0])) == pytest.approx(0.45)
    # perfectly confident and right: no gap
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        expected_calibration_error(np.eye(3), np.arange(3), bins=0)


def test_a_per_layer_hyper_prior_fits_with_the_default_elbo_and_moves():
    """The issue's own example: ``conv1.alpha`` sampled inside a per-layer prior (a KeyError in TraceMeanField_ELBO once)."""
    import pyro.distributions as dist

    def per_layer(layer):
        alpha = pyro.sample(f"{layer.name}.alpha", dist.Gamma(2.0, 2.0))
        return dist.Dirichlet(alpha.expand(layer.channels))

    network, data = planted(512)
    switches = DirichletSwitches(network, data.images[:2], prior=per_layer, layer_gain=False)
    result = fit(switches, data, FitConfig(epochs=5, batch_size=64, progress=False, device="cpu",
                                                 init_concentration=1.0, lr_decay=1.0))
    assert result.config.analytic_kl  # the default ELBO, TraceMeanField_ELBO
    tree = result.posterior(num_samples=500)
    posterior, prior = tree["posterior"]["1.alpha"].values, tree["prior"]["1.alpha"].values
    assert prior.mean() == pytest.approx(1.0, abs=0.1)
    assert posterior.mean() < 0.35 and np.quantile(posterior, 0.95) < np.quantile(prior, 0.5)


def test_predictions_under_a_hierarchical_prior_are_the_switched_network_at_each_draw():
    network, data = planted(256)
    switches = DirichletSwitches(network, data.images[:2], prior=shared_alpha, layer_gain=False)
    result = fit(switches, data, FitConfig(epochs=1, batch_size=64, progress=False, device="cpu",
                                                 init_concentration=1.0, lr_decay=1.0))
    validation = Split(data.images[:40], data.labels[:40])
    tree = result.posterior(num_samples=60, validation=validation, predictive_draws=30)
    probabilities = tree["posterior_predictive"]["probabilities"].values[0]
    draws = tree["posterior"]["1.switch"].values[0]
    for index in (0, 17, 29):
        with torch.no_grad(), switches.switched({"1": torch.as_tensor(draws[index], dtype=torch.float32)}) as switched:
            expected = torch.softmax(switched(validation.images).double(), -1).numpy()
        np.testing.assert_allclose(probabilities[index], expected, rtol=1e-5, atol=1e-7)


def test_the_predictive_sizes_its_vectorised_chunks_by_the_largest_activation(tiny_cnn, tiny_images, monkeypatch):
    from pyro_dirichlet.infer import predictive

    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    guide = DirichletGuide(switches.layers)
    sites = [f"{layer.name}.switch" for layer in switches.layers]
    draws = Predictive(switches.model, guide=guide, num_samples=6, parallel=True, return_sites=sites)(tiny_images)
    samples = {name: value[:, 0].numpy() for name, value in draws.items()}
    labels = torch.arange(len(tiny_images)) % 3
    largest = predictive._largest_activation(tiny_cnn, tiny_images)
    first_conv = next(m for m in tiny_cnn.modules() if isinstance(m, torch.nn.Conv2d))
    assert largest >= first_conv(tiny_images[:1]).numel() > tiny_cnn(tiny_images[:1]).numel()  # a feature map, not the logits
    whole = predictive.predict(switches, samples, tiny_images, labels, seed=0)
    # A budget that fits two draws' copies of the batch at a time: three chunks, the same predictions.
    monkeypatch.setattr(predictive, "_MAX_ACTIVATION", 2 * len(tiny_images) * largest)
    calls = []
    real = predictive.Predictive
    monkeypatch.setattr(predictive, "Predictive", lambda *a, **k: calls.append(1) or real(*a, **k))
    chunked = predictive.predict(switches, samples, tiny_images, labels, seed=0)
    assert len(calls) == 3
    np.testing.assert_allclose(chunked["log_likelihood"], whole["log_likelihood"], rtol=1e-5)
    np.testing.assert_allclose(chunked["probabilities"], whole["probabilities"], rtol=1e-5)
