"""Likelihood as a parameter: normal, bernoulli, a user's callable and a tempered loss, fitted from loaders (issue 12, item 3)."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyro_dirichlet.infer.checkpoint import FitCheckpoint
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer.guide import load_guide
from pyro_dirichlet.infer.likelihoods import SCALE_PARAM, NormalLikelihood, loss_likelihood
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.posterior.calibration import predictive_check

pytestmark = pytest.mark.usefixtures("one_thread")

SIGNAL = {5, 12}


def planted(n: int = 512, outputs: int = 1):
    """An MLP 8 -> 16 -> ``outputs`` whose output reads only hidden units 5 and 12, inputs, and targets.

    The targets are twice what the network outputs (plus noise 0.1 for regression): an
    underfit regression, as weight decay leaves one, so scaling the two signal units up
    raises the likelihood. (A network that fits its targets exactly gives the switch means
    no such push: its best switch is the prior mean for every unit that carries signal.)
    """
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, outputs))
    with torch.no_grad():
        network[0].bias.fill_(0.5)  # most units active on most inputs, so the silent ones are not silent by ReLU alone
        network[2].weight.zero_()
        network[2].bias.zero_()
        network[2].weight[:, sorted(SIGNAL)] = torch.tensor([1.0, -0.75])
    inputs = torch.randn(n, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = 2 * network(inputs)
    return network, inputs, clean


def quiet(**kwargs) -> FitConfig:
    # Concentration 10 at the start: less switch noise, whose variance would otherwise pull
    # every signal unit's mean down first (at 1, three epochs rank them last, not first).
    return FitConfig(**{"epochs": 1, "progress": False, "device": "cpu", "init_concentration": 10.0, **kwargs})


def loader(inputs, targets, batch_size=64):
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=True)


@pytest.mark.parametrize("likelihood", ["normal", NormalLikelihood(scale=None)], ids=["fixed-scale", "learned-scale"])
def test_a_normal_likelihood_ranks_the_two_planted_units_first(likelihood):
    network, inputs, clean = planted()
    targets = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    switches = DirichletSwitches(network, inputs[:2], likelihood=likelihood)
    result = fit(switches, loader(inputs, targets), quiet(epochs=3))
    concentration = result.concentrations["0"]
    assert set(concentration.argsort(descending=True)[:2].tolist()) == SIGNAL
    # well apart: the weakest signal unit above the strongest silent one
    assert concentration[sorted(SIGNAL)].min() > 1.3 * concentration[[c for c in range(16) if c not in SIGNAL]].max()
    assert result.elbo[-1] > result.elbo[0]
    if isinstance(likelihood, NormalLikelihood):
        # the noise scale is learned with the guide: from 1 toward the switch-noisy residual's
        scale = pyro.param(SCALE_PARAM).item()
        assert scale < 0.8
        assert SCALE_PARAM in result.parameters


def test_a_learned_scale_is_checkpointed_and_a_resumed_fit_matches(tmp_path):
    network, inputs, clean = planted(256)
    data = [(inputs[i : i + 64], clean[i : i + 64]) for i in range(0, 256, 64)]
    switches = DirichletSwitches(network, inputs[:2], likelihood=NormalLikelihood(scale=None))
    whole = fit(switches, data, quiet(epochs=2, data_size=256))
    path = tmp_path / "fit.ckpt"
    fit(switches, data, quiet(epochs=1, data_size=256), checkpoint=path)
    assert SCALE_PARAM in FitCheckpoint.load(path).params
    resumed = fit(switches, data, quiet(epochs=2, data_size=256), checkpoint=path)
    assert resumed.elbo == whole.elbo
    assert torch.equal(resumed.concentrations["0"], whole.concentrations["0"])
    # the saved posterior rebuilds the guide and the learned scale, bit for bit
    scale = pyro.param(SCALE_PARAM).detach().clone()
    posterior = resumed.posterior(num_samples=10)
    pyro.clear_param_store()
    load_guide(posterior, switches)
    assert torch.equal(pyro.param(SCALE_PARAM).detach(), scale)
    assert torch.equal(pyro.param("0.switch.concentration").detach(), resumed.concentrations["0"])


def test_a_bernoulli_likelihood_fits_multi_label_targets_and_draws_them():
    network, inputs, clean = planted(256, outputs=3)
    targets = (clean > clean.median(0).values).float()  # three labels per example, 0/1
    switches = DirichletSwitches(network, inputs[:2], likelihood="bernoulli")
    result = fit(switches, loader(inputs, targets), quiet(epochs=2))
    assert np.isfinite(result.elbo).all() and result.elbo[-1] > result.elbo[0]
    tree = result.posterior(num_samples=50, validation=loader(inputs[:40], targets[:40], 16), predictive_draws=10, validation_size=40)
    assert tree["log_likelihood"]["obs"].shape == (1, 10, 40)
    assert tree["posterior_predictive"]["obs"].shape == (1, 10, 40, 3)
    drawn = np.unique(tree["posterior_predictive"]["obs"].values)
    assert set(drawn.tolist()) == {0.0, 1.0}
    assert tree["observed_data"]["obs"].shape == (40, 3)
    with pytest.raises(ValueError, match="class probabilities"):
        predictive_check(tree)


def test_a_callable_likelihood_is_observed_under_the_plate():
    network, inputs, clean = planted(256)
    targets = clean.squeeze(1) + 0.1 * torch.randn(256, generator=torch.Generator().manual_seed(2))
    calls = []

    def student_t(outputs, targets):
        calls.append(outputs.shape)
        return dist.StudentT(3.0, outputs.squeeze(-1), 0.2)

    switches = DirichletSwitches(network, inputs[:2], likelihood=student_t)
    result = fit(switches, loader(inputs, targets), quiet(epochs=2))
    assert set(result.concentrations["0"].argsort(descending=True)[:2].tolist()) == SIGNAL
    assert calls.count(torch.Size([64, 1])) == result.steps == 8  # every step observed the whole batch
    tree = result.posterior(num_samples=40, validation=loader(inputs[:32], targets[:32]), predictive_draws=8, validation_size=32)
    expected = dist.StudentT(3.0, network(inputs[:32]).squeeze(-1), 0.2).log_prob(targets[:32])
    # at draws near the posterior mean the log-likelihood is near the unswitched network's
    assert tree["log_likelihood"]["obs"].shape == (1, 8, 32)
    assert np.isfinite(tree["log_likelihood"]["obs"].values).all()
    assert abs(float(tree["log_likelihood"]["obs"].mean()) - float(expected.mean())) < 3.0


def test_a_tempered_loss_fits_and_its_posterior_says_why_nothing_is_drawn():
    network, inputs, clean = planted(256)
    targets = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    per_example = lambda outputs, targets: F.mse_loss(outputs, targets, reduction="none")  # (batch, 1): summed per example
    switches = DirichletSwitches(network, inputs[:2], likelihood=loss_likelihood(per_example, temperature=0.02))
    result = fit(switches, loader(inputs, targets), quiet(epochs=3))
    assert set(result.concentrations["0"].argsort(descending=True)[:2].tolist()) == SIGNAL
    tree = result.posterior(num_samples=40, validation=loader(inputs[:32], targets[:32]), predictive_draws=8, validation_size=32)
    assert "posterior_predictive" not in tree.children
    assert "tempered loss" in tree["log_likelihood"].attrs["posterior_predictive"]
    log_likelihood = tree["log_likelihood"]["obs"].values
    assert log_likelihood.shape == (1, 8, 32) and (log_likelihood <= 0).all()  # -loss / T


def test_a_tempered_loss_is_the_categorical_likelihood_at_temperature_one_with_cross_entropy():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    inputs = torch.randn(128, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = network(inputs).argmax(1)
    data = [(inputs[i : i + 32], labels[i : i + 32]) for i in range(0, 128, 32)]
    fits = []
    for likelihood in ("categorical", loss_likelihood(lambda out, y: F.cross_entropy(out, y, reduction="none"))):
        pyro.clear_param_store()
        fits.append(fit(DirichletSwitches(network, inputs[:2], likelihood=likelihood), data, quiet(epochs=2, data_size=128)))
    np.testing.assert_allclose(fits[0].elbo, fits[1].elbo, rtol=1e-5)
    torch.testing.assert_close(fits[0].concentrations["0"], fits[1].concentrations["0"], rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "likelihood, says",
    [
        (lambda outputs, targets: dist.Normal(outputs, 1.0), r"likelihood <lambda> returned batch shape \(2, 1\) for network outputs of shape \(2, 1\), but its batch shape must be the batch \(2,\)"),
        (lambda outputs, targets: dist.Normal(outputs, 1.0).to_event(2), r"returned batch shape \(\) .* must be the batch \(2,\)"),
        (loss_likelihood(F.mse_loss), r"likelihood 'loss' returned batch shape \(\) .* must be the batch \(2,\)"),
    ],
    ids=["no-event-dims", "batch-as-event", "reduced-loss"],
)
def test_wrong_batch_shapes_are_one_sentence(likelihood, says):
    network, inputs, clean = planted(64)
    switches = DirichletSwitches(network, inputs[:2], likelihood=likelihood)
    with pytest.raises(ValueError, match=says) as error:
        fit(switches, loader(inputs, clean), quiet())
    assert "\n" not in str(error.value)  # not Pyro's trace table: one sentence


@pytest.mark.parametrize(
    "spec, error, says",
    [
        ("poisson", ValueError, r"likelihood must be one of \['bernoulli', 'categorical', 'normal'\]"),
        (3, TypeError, "likelihood must be a name or a callable"),
        (lambda outputs, targets: outputs, TypeError, "must return a pyro distribution, got Tensor"),
    ],
)
def test_bad_likelihoods_are_refused(spec, error, says):
    network, inputs, clean = planted(64)
    with pytest.raises(error, match=says):
        fit(DirichletSwitches(network, inputs[:2], likelihood=spec), loader(inputs, clean), quiet())


@pytest.mark.parametrize(
    "build, says",
    [
        (lambda: NormalLikelihood(scale=0.0), "NormalLikelihood.scale must be a positive finite number or None"),
        (lambda: loss_likelihood(F.mse_loss, temperature=-1), "temperature must be a positive finite number"),
        (lambda: loss_likelihood("mse"), "loss_fn must be callable"),
    ],
)
def test_bad_likelihood_settings_name_the_argument(build, says):
    with pytest.raises((ValueError, TypeError), match=says):
        build()
