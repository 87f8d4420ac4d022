"""SVI over streamed data: fit on a DataLoader or any iterable of batches equals the preloaded fit on the same order (issue 12, item 1)."""

from __future__ import annotations

import pyro
import pytest
import torch
from conftest import shrink
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from fit_process import problem
from pyro_dirichlet.data import Split
from pyro_dirichlet.infer.checkpoint import FitCheckpoint
from pyro_dirichlet.infer.fit import FitConfig, FitDivergedError, fit
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.models.lenet import LeNet5Caffe

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(**kwargs) -> FitConfig:
    return FitConfig(**{"epochs": 1, "progress": False, "device": "cpu", **kwargs})


def split_order(split: Split, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches a one-epoch Split fit with ``seed`` slices, in its order."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return [(split.images[chunk], split.labels[chunk]) for chunk in order.split(batch_size)]


class Stream(IterableDataset):
    """An iterable data set without len(), as a user's streaming source would be."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __iter__(self):
        return iter(zip(self.split.images, self.split.labels))


@pytest.mark.slow
def test_a_dataloader_over_mnist_gives_the_posterior_of_the_preloaded_split(mnist):
    data = shrink(mnist, 512, 64, 64)
    torch.manual_seed(0)
    network = LeNet5Caffe()  # random weights: the posterior still moves, and both paths must move it alike
    config = quiet(batch_size=128, seed=3)
    switches = DirichletSwitches(network, data.train.images[:2])
    preloaded = fit(switches, data.train, config)
    before = preloaded.posterior(num_samples=100, validation=data.validation, predictive_draws=10, validation_size=32)

    batches = split_order(data.train, 128, seed=3)
    dataset = TensorDataset(data.train.images, data.train.labels)
    order = torch.randperm(512, generator=torch.Generator().manual_seed(3))
    loader = DataLoader(dataset, batch_size=128, sampler=order.tolist())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(loader, batches))  # the same batches in the same order
    pyro.clear_param_store()
    streamed = fit(switches, loader, config)
    validation = DataLoader(TensorDataset(data.validation.images, data.validation.labels), batch_size=20)
    after = streamed.posterior(num_samples=100, validation=validation, predictive_draws=10, validation_size=32)

    assert streamed.steps == preloaded.steps == 4
    torch.testing.assert_close(torch.tensor(streamed.elbo), torch.tensor(preloaded.elbo), rtol=1e-4, atol=0)
    for name, concentration in preloaded.concentrations.items():
        torch.testing.assert_close(streamed.concentrations[name], concentration, rtol=1e-4, atol=0)
        assert not torch.allclose(concentration, torch.ones_like(concentration))  # the fit moved them
    for group, variable in [("variational", "conv2.switch.mean"), ("log_likelihood", "obs"), ("posterior", "fc1.switch")]:
        torch.testing.assert_close(
            torch.as_tensor(after[group][variable].values), torch.as_tensor(before[group][variable].values), rtol=1e-4, atol=1e-7
        )
    assert (after["observed_data"]["obs"].values == before["observed_data"]["obs"].values).all()


def test_a_plain_shuffling_dataloader_fits_reproducibly_whatever_the_global_stream():
    switches, data = problem(192)
    loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=32, shuffle=True)
    torch.manual_seed(123)
    first = fit(switches, loader, quiet(epochs=2))
    torch.manual_seed(456)  # fit seeds the switch draws, and the loader shuffles on a stream of its own
    second = fit(switches, loader, quiet(epochs=2))
    assert first.steps == 12 and first.elbo == second.elbo
    assert all(torch.equal(first.concentrations[name], second.concentrations[name]) for name in first.concentrations)
    third = fit(switches, loader, quiet(epochs=2, seed=1))
    assert third.elbo != first.elbo


def test_an_iterable_without_len_streams_with_its_data_size():
    switches, data = problem(128)
    stream = DataLoader(Stream(data), batch_size=32)
    with pytest.raises(ValueError, match=r"number of examples of train \(DataLoader\) is unknown: give it as FitConfig\(data_size=\.\.\.\)"):
        fit(switches, stream, quiet())
    result = fit(switches, stream, quiet(data_size=128))
    assert result.steps == 4
    # the data size scales the likelihood: the same batches told of ten times the data move further
    larger = fit(switches, stream, quiet(data_size=1280))
    change = {name: (value - 1).abs().sum() for name, value in result.concentrations.items()}
    assert all((larger.concentrations[name] - 1).abs().sum() > change[name] for name in change)
    with pytest.raises(ValueError, match="a checkpoint needs the number of batches per epoch"):
        fit(switches, stream, quiet(data_size=128), checkpoint="unused.ckpt")


def test_ctrl_c_mid_epoch_on_a_shuffling_loader_resumes_exactly(tmp_path):
    path = tmp_path / "fit.ckpt"
    switches, data = problem(128)
    loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=32, shuffle=True)
    uninterrupted = fit(switches, loader, quiet(epochs=3))
    model, calls = switches.model, []

    def interrupted_model(*args, **kwargs):
        calls.append(None)
        if len(calls) == 7:  # during step 7 of 12, in the second epoch
            raise KeyboardInterrupt
        return model(*args, **kwargs)

    switches.model = interrupted_model
    with pytest.raises(KeyboardInterrupt):
        fit(switches, loader, quiet(epochs=3, checkpoint_every=4), checkpoint=path)
    assert FitCheckpoint.load(path).step == 6
    switches.model = model
    pyro.clear_param_store()
    resumed = fit(switches, loader, quiet(epochs=3, checkpoint_every=4), checkpoint=path)
    assert resumed.elbo == uninterrupted.elbo
    assert all(torch.equal(resumed.concentrations[name], uninterrupted.concentrations[name]) for name in resumed.concentrations)


@pytest.mark.parametrize(
    "make, error, says",
    [
        (lambda data: iter([(data.images, data.labels)]), TypeError, "train is a one-shot iterator"),
        (lambda data: [], ValueError, r"train \(list\) holds no batches"),
        (lambda data: data.images, TypeError, "train must be a Split or an iterable"),
        (lambda data: [(data.images[:4],)], TypeError, "batch 0 is a tuple of length 1"),
    ],
    ids=["generator", "empty", "tensor", "not-a-pair"],
)
def test_bad_streamed_data_is_one_sentence(make, error, says):
    switches, data = problem(32)
    with pytest.raises(error, match=says):
        fit(switches, make(data), quiet(data_size=32))


def test_data_size_must_agree_with_a_split():
    switches, data = problem(32)
    with pytest.raises(ValueError, match="FitConfig.data_size is 10, but the train Split holds 32 examples"):
        fit(switches, data, quiet(data_size=10))
    with pytest.raises(ValueError, match="FitConfig.data_size must be None or a positive integer"):
        quiet(data_size=0)


def test_a_nan_batch_stops_a_streamed_fit_with_the_last_good_guide():
    switches, data = problem(64)
    images = data.images.clone()
    images[27] = float("nan")  # in the fourth batch of eight
    batches = [(images[i : i + 8], data.labels[i : i + 8]) for i in range(0, 64, 8)]
    with pytest.raises(FitDivergedError, match="ELBO became nan at SVI step 3") as caught:
        fit(switches, batches, quiet(data_size=64))
    error = caught.value
    assert error.step == len(error.elbo) == 3
    for name, concentration in error.concentrations.items():
        assert torch.isfinite(concentration).all()
        assert torch.equal(pyro.param(f"{name}.switch.concentration").detach(), concentration)
