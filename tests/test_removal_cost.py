"""The removal-cost oracle: exact loss increases, inert channels found, both paths agree."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyro_dirichlet.criteria.removal_cost as removal
from pyro_dirichlet.data import Split
from pyro_dirichlet.criteria.removal_cost import removal_cost, removal_effects
from pyro_dirichlet.structure import find_prunable_layers


def mlp_with_dead_units():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        net[0].bias[[1, 4]] = -100.0  # units 1 and 4 never fire
        net[2].weight[:, 6] = 0.0  # unit 6 fires, nothing reads it
    images = torch.randn(50, 6)
    data = Split(images.reshape(50, 1, 2, 3), net(images).argmax(1))
    return net, data


def flat(net):
    return nn.Sequential(nn.Flatten(), *net).eval()


def test_costs_equal_the_loss_increase_measured_by_hand():
    base, data = mlp_with_dead_units()
    net = flat(base)
    layers = find_prunable_layers(net, data.images[:2])
    effects = removal_effects(net, layers, data)
    torch.set_grad_enabled(False)
    hidden = net[:3](data.images)
    intact = F.cross_entropy(net[3](hidden), data.labels)
    for unit in range(8):
        cut = hidden.clone()
        cut[:, unit] = 0
        expected = float(F.cross_entropy(net[3](cut), data.labels) - intact)
        assert effects.cost["1"][unit].item() == pytest.approx(expected, abs=1e-5)
    torch.set_grad_enabled(True)
    assert effects.examples == 50
    assert effects.baseline_loss == pytest.approx(float(intact), abs=1e-6)


def test_inert_channels_are_exactly_the_silent_and_unread_ones():
    base, data = mlp_with_dead_units()
    net = flat(base)
    effects = removal_effects(net, find_prunable_layers(net, data.images[:2]), data)
    assert effects.inert["1"].nonzero().flatten().tolist() == [1, 4, 6]
    assert effects.cost["1"][[1, 4, 6]].abs().max() == 0


def test_the_fast_graph_path_and_the_hook_path_agree(monkeypatch):
    from pyro_dirichlet.models.head_resnet import HeadResNet

    torch.manual_seed(1)
    net = HeadResNet(num_classes=3, width=4, hidden=6).eval()
    images = torch.randn(12, 3, 8, 8)
    data = Split(images, torch.randint(0, 3, (12,)))
    layers = find_prunable_layers(net, images[:2])
    fast = removal_effects(net, layers, data, batch_size=5)
    monkeypatch.setattr(removal._Tails, "_node", lambda self, layer: None)
    slow = removal_effects(net, layers, data, batch_size=5)
    for layer in fast.cost:
        torch.testing.assert_close(fast.cost[layer], slow.cost[layer], atol=1e-5, rtol=0)
        assert torch.equal(fast.inert[layer], slow.inert[layer])


def test_max_examples_limits_the_data_and_the_network_is_left_as_it_was():
    base, data = mlp_with_dead_units()
    net = flat(base).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    costs = removal_cost(net, find_prunable_layers(net, data.images[:2]), data, max_examples=7, batch_size=3)
    assert costs["1"].dtype == torch.float64 and costs["1"].shape == (8,)
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("option", ["max_examples", "batch_size"])
def test_bad_sizes_are_refused_naming_the_argument(option):
    base, data = mlp_with_dead_units()
    net = flat(base)
    with pytest.raises(ValueError, match=option):
        removal_effects(net, find_prunable_layers(net, data.images[:2]), data, **{option: 0})
