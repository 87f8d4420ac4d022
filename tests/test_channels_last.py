"""Training in the channels-last layout: the same training, a faster step, the usual layout afterwards."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pyro_dirichlet.data import DataSplits, Split
from pyro_dirichlet.repair.train import TrainConfig, train_classifier


def _data() -> DataSplits:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(96, 3, 8, 8, generator=generator)
    labels = (images[:, 0].mean((1, 2)) > 0).long()
    return DataSplits(train=Split(images[:64], labels[:64]), validation=Split(images[64:], labels[64:]),
                      test=Split(images[64:], labels[64:]), name="random", num_classes=2,
                      input_shape=(3, 8, 8))


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))


def test_channels_last_trains_the_same_network_and_gives_the_usual_layout_back():
    data = _data()
    trained, losses = {}, {}
    for layout in (False, True):
        network = _network()
        result = train_classifier(network, data, TrainConfig(epochs=2, batch_size=16, lr=1e-2, channels_last=layout),
                                  progress=False)
        trained[layout], losses[layout] = network.eval(), result.train_loss
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    # The same function up to summation order. (The conv has no bias, as before a BatchNorm it
    # should not: its gradient is rounding noise alone, which Adam's normalised step amplifies
    # into a different bias and running mean for either layout.)
    with torch.no_grad():
        torch.testing.assert_close(trained[True](data.test.images), trained[False](data.test.images), rtol=1e-3, atol=1e-4)
    # safetensors saves contiguous tensors only.
    assert all(value.is_contiguous() for value in trained[True].state_dict().values())


def test_channels_last_is_the_default_and_leaves_baseline_cache_keys_as_they_were():
    assert TrainConfig().channels_last is True
    assert "channels_last" not in TrainConfig().to_dict()
    assert TrainConfig(channels_last=False).to_dict()["channels_last"] is False
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        TrainConfig(channels_last="yes")


def test_the_default_layout_leaves_a_channels_last_model_as_it_is():
    network = _network().to(memory_format=torch.channels_last)
    before = copy.deepcopy(network)
    train_classifier(network, _data(), TrainConfig(epochs=0, channels_last=False), progress=False)
    assert network[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(network.state_dict(), before.state_dict())
