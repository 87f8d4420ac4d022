"""Calibration after pruning: on a real pruned MNIST network it lowers the training loss, keeps accuracy, and folds exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.repair.calibrate import Calibration, CalibrationConfig, calibrate, scaled_channels, mean_loss, recalibrate_batchnorm
from pyro_dirichlet.data import Split, minibatches
from pyro_dirichlet.criteria import get_criterion
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.structure import find_prunable_layers
from pyro_dirichlet.surgery import prune_channels


class SmallBN(nn.Module):
    """conv(1->8)+BN -> pool -> conv(8->16)+BN -> pool -> fc(256->32) -> fc(32->10): BN where calibration must refit it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 5), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 5), nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def trained(mnist):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = mnist.train.subset(2000, seed=0)
    network = SmallBN()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for _, images, labels in minibatches(train, 64, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(network(images), labels).backward()
            optimizer.step()
    yield network.eval(), train
    torch.set_num_threads(threads)


def test_calibration_of_an_l1_pruned_network_lowers_loss_and_keeps_accuracy(trained):
    network, train = trained
    example = train.images[:2]
    layers = find_prunable_layers(network, example)
    keep = plan_keep(get_criterion("l1-norm")(network, layers), {"conv1": 3, "conv2": 5, "fc1": 8})
    pruned = prune_channels(network, keep, example).eval()
    config = CalibrationConfig(steps=60, batch_size=64, lr=0.05, batchnorm_batches=10, check_batches=8)
    result = calibrate(pruned, train, example, config)
    assert isinstance(result, Calibration) and result.scales_kept and result.batchnorm_recalibrated
    assert result.loss_after < result.loss_before
    # The loss it reports is the folded network's: measured again on the same batches.
    check = [(x, y) for _, x, y in minibatches(train, 64, shuffle=True, generator=torch.Generator().manual_seed(1))][:8]
    assert mean_loss(result.network, check) == pytest.approx(result.loss_after, rel=1e-4)
    assert mean_loss(pruned, check) == pytest.approx(result.loss_before, rel=1e-6)
    assert accuracy(result.network, train) >= accuracy(pruned, train)
    assert {k: v.shape for k, v in result.scales.items()} == {"conv1": (3,), "conv2": (5,), "fc1": (8,)}
    # A plain module of the pruned widths; the input network is untouched.
    assert (result.network.conv1.out_channels, result.network.conv2.out_channels, result.network.fc1.out_features) == (3, 5, 8)
    assert torch.equal(pruned(example), prune_channels(network, keep, example).eval()(example))


def test_folded_scales_compute_what_the_scaled_network_computes(trained):
    network, train = trained
    example = train.images[:2]
    keep = plan_keep(get_criterion("random", seed=0)(network, find_prunable_layers(network, example)), {"conv1": 4, "conv2": 8, "fc1": 16})
    pruned = prune_channels(network, keep, example).eval()
    result = calibrate(pruned, train, example, CalibrationConfig(steps=20, batch_size=64, lr=0.05, batchnorm_batches=0))
    assert result.scales_kept and not result.batchnorm_recalibrated
    assert any(not torch.allclose(s, torch.ones_like(s)) for s in result.scales.values())
    images = train.images[:64]
    with torch.no_grad(), scaled_channels(pruned, find_prunable_layers(pruned, example), result.scales):
        unfolded = pruned(images)
    with torch.no_grad():
        folded = result.network(images)
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-5)


def test_batchnorm_recalibration_averages_the_statistics_of_the_batches():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).eval()
    images = torch.randn(6, 1, 3, 3) * 3 + 1
    batches = [(images[:3], None), (images[3:], None)]
    refit = recalibrate_batchnorm(network, batches)
    with torch.no_grad():
        features = network[0](images)
    means = torch.stack([features[:3].mean((0, 2, 3)), features[3:].mean((0, 2, 3))]).mean(0)
    torch.testing.assert_close(refit[1].running_mean, means)
    assert refit[1].momentum == network[1].momentum and not refit[1].training
    assert torch.equal(network[1].running_mean, torch.zeros(2))  # the input is not modified


def test_calibration_that_cannot_help_is_undone():
    # Zero learning steps leave the scales at 1: nothing lowered the loss, nothing is folded.
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    data = Split(torch.randn(32, 1, 2, 2), torch.arange(32) % 3)
    result = calibrate(network, data, data.images[:2], CalibrationConfig(steps=0, batch_size=8))
    assert not result.scales_kept and result.loss_after == result.loss_before
    assert torch.equal(result.scales["1"], torch.ones(5))
    assert torch.equal(result.network(data.images), network(data.images))


def test_calibration_reads_a_dataloader_and_rejects_empty_data(trained):
    from torch.utils.data import DataLoader, TensorDataset

    network, train = trained
    example = train.images[:2]
    keep = plan_keep(get_criterion("l1-norm")(network, find_prunable_layers(network, example)), {"conv1": 4, "conv2": 8, "fc1": 16})
    pruned = prune_channels(network, keep, example).eval()
    loader = DataLoader(TensorDataset(train.images[:640], train.labels[:640]), batch_size=64)
    result = calibrate(pruned, loader, example, CalibrationConfig(steps=10, lr=0.05, batchnorm_batches=5, check_batches=4))
    assert result.loss_after <= result.loss_before
    assert result.network.conv2.out_channels == 8
    with pytest.raises(ValueError, match="data yielded no batches"):
        calibrate(pruned, [], example)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", -1, "steps must be a non-negative int or None"),
    ("batch_size", 0, "batch_size must be a positive int"),
    ("lr", float("nan"), "lr must be a positive finite number"),
    ("batchnorm_batches", -2, "batchnorm_batches must be a non-negative int"),
])
def test_calibration_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        CalibrationConfig(**{field: value})
