import math

import pyro
import pytest
import torch

from pyro_dirichlet.data import Split
from pyro_dirichlet.fitting import FitConfig, FitDivergedError, fit, resolve_device
from pyro_dirichlet.switches import DirichletSwitches


def synthetic_split(tiny_cnn, n=256, seed=0) -> Split:
    """Inputs labelled by the frozen network itself, so the switches have a likelihood to fit."""
    images = torch.randn(n, 1, 14, 14, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        labels = tiny_cnn.eval()(images).argmax(1)
    return Split(images, labels)


def quiet(**kwargs) -> FitConfig:
    return FitConfig(progress=False, device="cpu", **kwargs)


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
     ({"init_concentration": -1.0}, "init_concentration"), ({"effective_data_size": 0}, "effective_data_size")],
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
