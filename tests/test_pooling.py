import pyro
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyro_dirichlet.infer._fast as pooling
from pyro_dirichlet.models.lenet import LeNet5Caffe
from pyro_dirichlet.data import Split
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer._fast import NoGradMaxPool, max_of_slices
from pyro_dirichlet.infer.switches import DirichletSwitches


@pytest.mark.parametrize("shape, window", [((2, 3, 8, 8), 2), ((2, 3, 9, 7), 2), ((1, 4, 10, 11), 3), ((2, 1, 5, 5), 5)])
def test_max_of_slices_equals_max_pool2d(shape, window):
    torch.manual_seed(0)
    images = torch.randn(shape)
    images[0, 0, 1, 1] = float("nan")
    expected = F.max_pool2d(images, window)
    assert torch.equal(max_of_slices(images, window).isnan(), expected.isnan())
    assert torch.equal(max_of_slices(images, window).nan_to_num(), expected.nan_to_num())


@pytest.fixture
def spy(monkeypatch):
    calls = []

    def counting(images, window):
        calls.append(window)
        return max_of_slices(images, window)

    monkeypatch.setattr(pooling, "max_of_slices", counting)
    return calls


def test_no_grad_pooling_takes_the_slices_for_functions_and_modules(spy):
    images = torch.randn(2, 3, 8, 8)
    with NoGradMaxPool():
        functional = F.max_pool2d(images, 2)
        module = nn.MaxPool2d((2, 2))(images)
        strided = F.max_pool2d(images, kernel_size=2, stride=2, padding=0)
    assert spy == [2, 2, 2]
    for pooled in (functional, module, strided):
        assert torch.equal(pooled, F.max_pool2d(images, 2))


@pytest.mark.parametrize(
    "call",
    [
        lambda x: F.max_pool2d(x, 3, stride=1),  # overlapping windows
        lambda x: F.max_pool2d(x, 2, padding=1),
        lambda x: F.max_pool2d(x, 2, ceil_mode=True),
        lambda x: F.max_pool2d(x, 2, dilation=2),
        lambda x: F.max_pool2d(x, (2, 3)),
        lambda x: F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2),
        lambda x: F.max_pool2d(x, 2, return_indices=True)[0],
    ],
)
def test_every_other_pooling_goes_to_pytorch(spy, call):
    images = torch.randn(2, 3, 8, 8)
    with NoGradMaxPool():
        pooled = call(images)
    assert spy == []
    assert torch.equal(pooled, call(images))


def test_pooling_that_needs_a_gradient_goes_to_pytorch(spy):
    images = torch.randn(2, 3, 8, 8, requires_grad=True)
    with NoGradMaxPool():
        F.max_pool2d(images, 2).sum().backward()
    assert spy == []
    assert images.grad.sum() == 2 * 3 * 4 * 4  # one gradient per window, as max_pool2d routes it
    with NoGradMaxPool(), torch.no_grad():
        F.max_pool2d(images, 2)
    assert spy == [2]


def test_fit_gives_the_same_posterior_with_and_without_fast_pooling(spy, one_thread):
    torch.manual_seed(0)
    network = LeNet5Caffe(conv1=6, conv2=8, fc1=16)
    data = Split(torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)))
    results = []
    for fast in (True, False):
        pyro.clear_param_store()
        switches = DirichletSwitches(network, data.images[:2])
        # fast pooling replaces the channels-first kernel only (channels-last pooling is already fast)
        config = FitConfig(epochs=1, batch_size=64, device="cpu", progress=False, fast_pooling=fast, channels_last=False)
        results.append(fit(switches, data, config))
        used = len(spy)
    fast, plain = results
    # the first pooling (before any switch) took the slices in each of the 4 steps, then never
    assert used == 4
    assert fast.elbo == plain.elbo
    for layer in fast.concentrations:
        assert torch.equal(fast.concentrations[layer], plain.concentrations[layer])


def test_fast_pooling_must_be_a_bool():
    with pytest.raises(ValueError, match="FitConfig.fast_pooling must be True or False"):
        FitConfig(fast_pooling="yes")
