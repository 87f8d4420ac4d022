import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyro_dirichlet.models.lenet import LeNet300100, LeNet5Caffe
from pyro_dirichlet.data import Split
from pyro_dirichlet.measure import (
    Stopwatch,
    accuracy,
    count_flops,
    count_parameters,
    latency_seconds,
    layer_costs,
    median_seconds,
)


@pytest.fixture(scope="module")
def mnist_test(mnist) -> Split:
    return mnist.test


def lenet5_macs(conv1: int, conv2: int, fc1: int, num_classes: int = 10) -> int:
    # Output pixels x output channels x (input channels x 5 x 5) for each convolution.
    return (
        24 * 24 * conv1 * (1 * 5 * 5)
        + 8 * 8 * conv2 * (conv1 * 5 * 5)
        + conv2 * 4 * 4 * fc1
        + fc1 * num_classes
    )


class OneHotOfPixel(nn.Module):
    """Reads the label written into pixel (0, 0) and answers it as a one-hot score."""

    def forward(self, x):
        return F.one_hot(x[:, 0, 0, 0].long(), 10).float()


class Constant(nn.Module):
    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.unused = nn.Linear(1, 1)  # gives the model a device to report

    def forward(self, x):
        return F.one_hot(torch.full((x.shape[0],), self.label), 10).float()


# --- parameters ----------------------------------------------------------------------


def test_lenet5_parameter_count():
    assert count_parameters(LeNet5Caffe()) == 431080


def test_lenet300_parameter_count():
    assert count_parameters(LeNet300100()) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_frozen_parameters_are_counted():
    model = LeNet5Caffe()
    model.conv1.requires_grad_(False)
    assert count_parameters(model) == 431080


def test_count_parameters_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        count_parameters([torch.zeros(3)])


# --- FLOPs ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7])
def test_linear_flops(batch):
    assert count_flops(nn.Linear(10, 5), torch.zeros(batch, 10)) == 2 * 10 * 5


@pytest.mark.parametrize("widths", [(20, 50, 500), (5, 12, 40), (1, 1, 1)])
def test_lenet5_flops_are_twice_the_macs(widths):
    conv1, conv2, fc1 = widths
    model = LeNet5Caffe(conv1=conv1, conv2=conv2, fc1=fc1)
    assert count_flops(model, torch.zeros(4, 1, 28, 28)) == 2 * lenet5_macs(conv1, conv2, fc1)


def test_lenet5_flops_match_docstring():
    assert count_flops(LeNet5Caffe(), torch.zeros(1, 1, 28, 28)) == 4_586_000
    assert count_flops(LeNet300100(), torch.zeros(1, 1, 28, 28)) == 532_400


@pytest.mark.parametrize("training", [True, False])
def test_count_flops_restores_training_flag(training):
    model = LeNet5Caffe().train(training)
    count_flops(model, torch.zeros(1, 1, 28, 28))
    assert model.training is training


def test_count_flops_rejects_unbatched_scalar():
    with pytest.raises(ValueError, match="example_input"):
        count_flops(nn.Linear(1, 1), torch.tensor(1.0))


# --- accuracy ------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1000, 333, 20000])
def test_accuracy_of_model_that_reads_the_label_is_one(mnist_test, batch_size):
    labels = mnist_test.labels
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    assert accuracy(OneHotOfPixel(), Split(images, labels), batch_size=batch_size) == 1.0


@pytest.mark.parametrize("label", [0, 3, 9])
def test_accuracy_of_constant_model_is_class_frequency(mnist_test, label):
    expected = (mnist_test.labels == label).sum().item() / len(mnist_test)
    assert accuracy(Constant(label), mnist_test) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_accuracy_restores_training_flag(mnist_test, training):
    model = LeNet5Caffe().train(training)
    value = accuracy(model, mnist_test.subset(100, seed=0), device="cpu")
    assert 0.0 <= value <= 1.0
    assert model.training is training


def test_accuracy_uses_eval_mode():
    seen = []

    class RecordsMode(Constant):
        def forward(self, x):
            seen.append(self.training)
            return super().forward(x)

    split = Split(torch.zeros(5, 1, 2, 2), torch.tensor([1, 1, 2, 1, 0]))
    assert accuracy(RecordsMode(1).train(), split, batch_size=2) == pytest.approx(3 / 5)
    assert seen == [False, False, False]


def test_accuracy_rejects_empty_split():
    empty = Split(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="split"):
        accuracy(Constant(0), empty)


# --- timing --------------------------------------------------------------------------


def test_stopwatch_measures_a_sleep():
    with Stopwatch() as watch:
        time.sleep(0.02)
    assert 0.02 <= watch.seconds < 1.0


def test_stopwatch_elapsed_reads_a_running_block():
    with pytest.raises(RuntimeError, match="not been started"):
        Stopwatch().elapsed
    with Stopwatch() as watch:
        time.sleep(0.01)
        running = watch.elapsed
        time.sleep(0.01)
    assert 0.01 <= running < watch.seconds


def test_median_seconds_calls_warmup_then_repeats():
    calls = []
    durations = iter([0.0, 0.03, 0.0, 0.01])  # the warm-up call first, then three timed ones

    def work():
        calls.append(1)
        time.sleep(next(durations))

    seconds = median_seconds(work, repeats=3, warmup=1)
    assert len(calls) == 4
    # The untimed 0.0 s warm-up leaves (0.03, 0.0, 0.01), whose median is the 0.01 s call.
    assert 0.01 <= seconds < 0.03


def test_median_seconds_is_middle_value():
    durations = iter([0.05, 0.0, 0.02])

    seconds = median_seconds(lambda: time.sleep(next(durations)), repeats=3, warmup=0)
    assert 0.02 <= seconds < 0.05


@pytest.mark.parametrize("repeats, warmup, name", [(0, 1, "repeats"), (1, -1, "warmup"), (2.5, 0, "repeats")])
def test_median_seconds_rejects_bad_counts(repeats, warmup, name):
    with pytest.raises(ValueError, match=name):
        median_seconds(lambda: None, repeats=repeats, warmup=warmup)


def test_latency_seconds_times_eval_mode_forward_passes_without_gradients():
    calls = []

    class Slow(nn.Module):
        def forward(self, x):
            calls.append((self.training, torch.is_grad_enabled()))
            time.sleep(0.01)
            return x

    model = Slow().train()
    seconds = latency_seconds(model, torch.zeros(4, 3), repeats=3, warmup=2)
    assert len(calls) == 5 and set(calls) == {(False, False)}
    assert 0.01 <= seconds < 0.5
    assert model.training  # the flag is restored


def test_latency_seconds_rejects_what_is_not_a_model_or_a_batch():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        latency_seconds(lambda x: x, torch.zeros(1))
    with pytest.raises(TypeError, match="inputs must be a Tensor"):
        latency_seconds(nn.Linear(2, 2), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        latency_seconds(nn.Linear(2, 2), torch.zeros(1, 2), repeats=0)


def test_layer_costs_count_each_module_alone_on_the_input_it_receives():
    torch.manual_seed(0)
    model = LeNet5Caffe().train()
    example = torch.zeros(3, 1, 28, 28)
    costs = layer_costs(model, ["conv2", "fc1"], example)
    # conv2 sees conv1's pooled 20x12x12 map: 8x8 outputs x 50 channels x (20x5x5) MACs, two FLOPs each.
    assert costs["conv2"] == {"params": 50 * 20 * 25 + 50, "flops": 2 * 8 * 8 * 50 * 20 * 25}
    assert costs["fc1"] == {"params": 800 * 500 + 500, "flops": 2 * 800 * 500}
    assert list(costs) == ["conv2", "fc1"] and model.training
    with pytest.raises(ValueError, match=r"names \['conv9'\] are not submodules"):
        layer_costs(model, ["conv9"], example)
    unused = nn.ModuleDict({"used": nn.Linear(2, 2), "spare": nn.Linear(2, 2)})
    unused.forward = lambda x: unused["used"](x)
    with pytest.raises(ValueError, match=r"modules \['spare'\] are never called"):
        layer_costs(unused, ["spare"], torch.zeros(1, 2))
