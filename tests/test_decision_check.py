"""The decision check: the chosen channels against L1-norm and random ones, calibrated alike."""

import pytest
import torch
from torch import nn

from pyro_dirichlet.data import DataSplits, Split
from pyro_dirichlet.decision_check import DecisionCheck, check_decision
from pyro_dirichlet.structure import find_prunable_layers


@pytest.fixture(scope="module")
def teacher_task():
    """A hidden layer where units 0-5 carry the labels and 6-11 are noise with large weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        net[3].weight[:, 6:] = 0.0  # units 6-11: nothing downstream reads them...
        net[1].weight[6:] *= 20.0  # ...but their filters have the largest L1 norms
        net[3].weight[:, :6] *= 5.0
    images = torch.randn(600, 1, 2, 4)
    with torch.no_grad():
        net[3].bias -= net(images).mean(0)  # balanced classes
    labels = net(images).argmax(1)
    split = lambda a, b: Split(images[a:b], labels[a:b])  # noqa: E731
    return net, DataSplits(split(0, 400), split(400, 500), split(500, 600), "toy", 3, (1, 2, 4))


def test_a_good_choice_beats_l1_and_random_and_says_nothing(teacher_task):
    net, data = teacher_task
    check = check_decision(net, {"1": list(range(6))}, data, data.train.images[:2])
    assert check.chosen > check.l1_norm + 0.2 and check.chosen > check.random
    assert check.loses_to == [] and check.warning() is None
    assert len(check.random_draws) == 3 and check.examples == 100
    assert "L1-norm" in check.describe() and "random" in check.describe()


def test_a_bad_choice_is_warned_about_in_one_sentence(teacher_task):
    net, data = teacher_task
    check = check_decision(net, {"1": list(range(6, 12))}, data, data.train.images[:2])
    assert "random" in check.loses_to
    sentence = check.warning()
    assert sentence.count(". ") == 0 and "lose to" in sentence and "same counts" in sentence
    record = check.to_dict()
    assert record["accuracy"]["posterior"] == check.chosen and record["loses_to"] == check.loses_to


def test_the_check_reads_no_test_data_and_leaves_the_network_alone(teacher_task):
    net, data = teacher_task
    poisoned = DataSplits(data.train, data.validation, Split(torch.full((5, 1, 2, 4), float("nan")), torch.zeros(5, dtype=torch.long)),
                          "toy", 3, (1, 2, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    check = check_decision(net, {"1": [0, 1, 2]}, poisoned, data.train.images[:2], layers=find_prunable_layers(net, data.train.images[:2]))
    assert 0 <= check.chosen <= 1
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_an_unknown_layer_is_refused(teacher_task):
    net, data = teacher_task
    with pytest.raises(ValueError, match="conv9"):
        check_decision(net, {"conv9": [0]}, data, data.train.images[:2])


def test_margin_keeps_a_tie_quiet():
    tie = DecisionCheck(chosen=0.80, l1_norm=0.803, random=0.70, margin=0.005)
    assert tie.warning() is None
    assert DecisionCheck(chosen=0.80, l1_norm=0.83, random=0.70, margin=0.005).loses_to == ["L1-norm"]


def test_prune_by_posterior_mean_warns_when_its_choice_loses(teacher_task):
    """A posterior that favours the unread units: pruning with check= says so in one sentence."""
    from pyro_dirichlet.decision_check import DecisionWarning
    from pyro_dirichlet.posterior import from_concentrations
    from pyro_dirichlet.pruning import prune_by_posterior_mean

    net, data = teacher_task
    phi = torch.cat([torch.full((6,), 1.0), torch.full((6,), 50.0)])
    posterior = from_concentrations({"1": phi}, num_samples=50, seed=0)
    with pytest.warns(DecisionWarning, match="lose to"):
        small, keep = prune_by_posterior_mean(net, posterior, {"1": 6}, data.train.images[:2], check=data)
    assert keep["1"] == list(range(6, 12)) and small[1].out_features == 6
