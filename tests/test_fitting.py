import math
from dataclasses import replace

import pyro
import pytest
import torch
from ranks import spearman

from pyro_dirichlet.data import Split
from pyro.infer import TraceMeanField_ELBO

from pyro_dirichlet.devices import resolve_device
from pyro_dirichlet.infer.fit import FitConfig, FitDivergedError, fit, fit_model
from pyro_dirichlet.infer.guide import DirichletGuide
from pyro_dirichlet.infer.switches import DirichletSwitches


def synthetic_split(tiny_cnn, n=256, seed=0) -> Split:
    """Inputs labelled by the frozen network itself, so the switches have a likelihood to fit."""
    images = torch.randn(n, 1, 14, 14, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        labels = tiny_cnn.eval()(images).argmax(1)
    return Split(images, labels)


def quiet(**kwargs) -> FitConfig:
    return FitConfig(**{"epochs": 1, "progress": False, "device": "cpu", **kwargs})


def test_fit_records_history_and_moves_concentrations(tiny_cnn, tiny_images):
    data = synthetic_split(tiny_cnn)
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    result = fit(switches, data, quiet(epochs=10, batch_size=32))
    assert result.steps == 10 * 8 == len(result.elbo)
    assert all(math.isfinite(e) for e in result.elbo)
    # the ELBO improves: the last two epochs beat the first two on average
    assert sum(result.elbo[-16:]) / 16 > sum(result.elbo[:16]) / 16 + 5
    for layer in switches.layers:
        concentration = result.concentrations[layer.name]
        assert concentration.shape == (layer.channels,)
        assert (concentration > 0).all()
        assert not torch.allclose(concentration, torch.ones(layer.channels))
        assert torch.equal(pyro.param(f"{layer.name}.switch.concentration").detach(), concentration)
    assert result.to_dict()["steps"] == 80 and result.device == "cpu"


def test_fit_is_reproducible_with_a_seed(tiny_cnn, tiny_images):
    data = synthetic_split(tiny_cnn)
    first = fit(DirichletSwitches(tiny_cnn, tiny_images[:2]), data, quiet(seed=3, batch_size=64))
    second = fit(DirichletSwitches(tiny_cnn, tiny_images[:2]), data, quiet(seed=3, batch_size=64))
    other = fit(DirichletSwitches(tiny_cnn, tiny_images[:2]), data, quiet(seed=4, batch_size=64))
    assert first.elbo == second.elbo
    for name in first.concentrations:
        assert torch.equal(first.concentrations[name], second.concentrations[name])
    assert first.elbo != other.elbo


def test_monte_carlo_kl_and_particles_run(tiny_cnn, tiny_images):
    data = synthetic_split(tiny_cnn, n=64)
    result = fit(DirichletSwitches(tiny_cnn, tiny_images[:2]), data, quiet(analytic_kl=False, num_particles=2, batch_size=32))
    assert result.steps == 2 and all(math.isfinite(e) for e in result.elbo)


def test_tempering_makes_the_prior_matter(tiny_cnn, tiny_images):
    """With a tiny effective data size a sparse prior pulls the posterior far more."""
    data = synthetic_split(tiny_cnn)

    def total_concentration(size):
        switches = DirichletSwitches(tiny_cnn, tiny_images[:2], prior=0.05)
        result = fit(switches, data, quiet(epochs=3, batch_size=32, effective_data_size=size))
        return sum(c.sum().item() for c in result.concentrations.values())

    assert total_concentration(2) < total_concentration(100_000)


def test_nan_elbo_stops_and_keeps_the_last_good_state(tiny_cnn, tiny_images):
    data = synthetic_split(tiny_cnn, n=64)
    images = data.images.clone()
    images[40] = float("nan")
    with pytest.raises(FitDivergedError, match="ELBO became nan at SVI step") as caught:
        fit(DirichletSwitches(tiny_cnn, tiny_images[:2]), Split(images, data.labels), quiet(batch_size=8))
    error = caught.value
    assert len(error.elbo) == error.step
    for name, concentration in error.concentrations.items():
        assert torch.isfinite(concentration).all()
        assert torch.equal(pyro.param(f"{name}.switch.concentration").detach(), concentration)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"lr": 0}, "lr"),
     ({"init_concentration": -1.0}, "init_concentration"), ({"effective_data_size": 0}, "effective_data_size"),
     ({"checkpoint_every": 0}, "checkpoint_every"), ({"autocast": "fp8"}, "autocast"),
     ({"channels_last": 1}, "channels_last"), ({"vectorize_particles": "yes"}, "vectorize_particles")],
)
def test_bad_fit_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FitConfig(**kwargs)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bf16_autocast_elbo_of_a_fixed_guide_agrees_with_float32(tiny_cnn, tiny_images, one_thread):
    data = synthetic_split(tiny_cnn)
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    guide = DirichletGuide(switches.layers, init_concentration=2.0)
    guide.initialise()
    kwargs = {"subsample": torch.arange(len(data)), "size": 1000}
    for seed in range(3):
        losses = []
        for autocast in (None, "bf16"):
            pyro.set_rng_seed(seed)  # the same switch draw in both precisions
            model = fit_model(switches, quiet(autocast=autocast), "cpu")
            losses.append(TraceMeanField_ELBO().loss(model, guide, data.images, data.labels, **kwargs))
        # bfloat16 keeps 8 significant bits (~0.4% per value); over 256 examples the errors
        # mostly cancel: measured 2.4e-4 relative, so 2e-3 is a bound with room.
        assert losses[1] == pytest.approx(losses[0], rel=2e-3)


def test_bf16_fit_ranks_channels_like_float32(tiny_cnn, tiny_images, one_thread):
    data = synthetic_split(tiny_cnn)
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    settings = quiet(epochs=4, batch_size=32, num_particles=8)
    results = {}
    for autocast in (None, "bf16"):
        pyro.clear_param_store()
        results[autocast] = fit(switches, data, replace(settings, autocast=autocast)).concentrations
    # Measured here: Spearman 0.83-1.0 per layer (mean 0.93); two float32 seeds agree at a
    # mean of 0.81. Demanding a mean of 0.8 says bf16 moves the ranking no more than reseeding.
    rhos = [spearman(results[None][layer.name], results["bf16"][layer.name]) for layer in switches.layers]
    assert sum(rhos) / len(rhos) > 0.8, rhos


def test_channels_last_fit_matches_and_restores_the_layout(tiny_cnn, tiny_images, one_thread):
    data = synthetic_split(tiny_cnn)
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    plain = fit(switches, data, quiet(epochs=2, batch_size=32))
    pyro.clear_param_store()
    channels_last = fit(switches, data, quiet(epochs=2, batch_size=32, channels_last=True))
    # other convolution kernels, same arithmetic up to float32 rounding (measured 4e-5 relative)
    for name, concentration in plain.concentrations.items():
        torch.testing.assert_close(channels_last.concentrations[name], concentration, rtol=1e-3, atol=0)
    assert tiny_cnn.conv2.weight.is_contiguous()  # the network got its usual layout back
