"""The one pipeline class: Pruner's score -> plan -> cut -> repair equals the stages by hand, over one trace."""

import json

import pytest
import torch
from pyro_dirichlet.models.lenet import LeNet5Caffe
from torch import nn

from pyro_dirichlet import Pruner
from pyro_dirichlet.criteria import get_criterion
from pyro_dirichlet.criteria.posterior import posterior_mean
from pyro_dirichlet.data import DataSplits, Split
from pyro_dirichlet.measure import count_flops
from pyro_dirichlet.planning.allocation import keep_from_budget
from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.posterior import from_concentrations
from pyro_dirichlet.pruning import prune_by_posterior_mean, prune_to_keep, switch_scales
from pyro_dirichlet.repair.calibrate import CalibrationConfig
from pyro_dirichlet.repair.train import TrainConfig
from pyro_dirichlet.structure import find_prunable_layers, recording_traces
from pyro_dirichlet.structure.naming import CLI_SPELLING
from pyro_dirichlet.surgery import fold_scales, prune_channels
from coupled_networks import Residual

TARGET = {"conv1": 5, "conv2": 12, "fc1": 40}


@pytest.fixture(scope="module")
def lenet():
    """A LeNet-5 with seeded random weights, an example batch and a posterior over its three layers."""
    torch.manual_seed(0)
    network = LeNet5Caffe().eval()
    example = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    phi = {name: 0.5 + 5 * torch.rand(width, generator=generator) for name, width in (("conv1", 20), ("conv2", 50), ("fc1", 500))}
    return network, example, from_concentrations(phi, num_samples=20, seed=0)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_score_plan_cut_equals_the_stages_by_hand_and_the_old_functions(lenet):
    network, example, posterior = lenet
    before = {k: v.clone() for k, v in network.state_dict().items()}
    pruner = Pruner(network, example, layers=["conv1", "conv2", "fc1"])
    scores = pruner.score(posterior)
    expected_scores = posterior_mean(posterior)
    assert list(scores) == list(expected_scores) and all(torch.equal(scores[k], expected_scores[k]) for k in scores)

    keep = pruner.plan(scores, TARGET)
    assert keep == plan_keep(expected_scores, TARGET)
    scales = switch_scales(scores)
    small = pruner.cut(keep, scales)
    by_hand = prune_channels(fold_scales(network, scales, example), keep, example)
    assert same_weights(small, by_hand)
    assert [small.conv1.out_channels, small.conv2.out_channels, small.fc1.out_features] == [5, 12, 40]

    old, old_keep = prune_by_posterior_mean(network, posterior, TARGET, example)
    assert old_keep == keep and same_weights(old, small)
    assert same_weights(prune_to_keep(network, keep, example, scales=scales), small)
    assert same_weights(pruner.cut(keep), prune_channels(network, keep, example))
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # never modified


def test_a_posterior_scores_the_layers_it_switched(lenet):
    network, example, posterior = lenet
    partial = from_concentrations({"conv2": torch.ones(50)}, num_samples=5, seed=0)
    assert list(Pruner(network, example).score(partial)) == ["conv2"]
    with pytest.raises(ValueError, match=r"switches layers \['conv1', 'fc1'\] that are not among"):
        Pruner(network, example, layers=["conv2"]).score(posterior)


def test_a_criterion_by_name_by_object_and_a_fraction(lenet):
    network, example, _ = lenet
    pruner = Pruner(network, example)
    assert pruner.names == ["conv1", "conv2", "fc1"]
    drawn = pruner.score("random", seed=3)
    assert all(torch.equal(drawn[k], v) for k, v in get_criterion("random", seed=3)(network, pruner.layers).items())
    l1 = pruner.score(get_criterion("l1-norm"))
    assert pruner.plan(l1, 0.5) == plan_keep(l1, 0.5)
    with pytest.raises(TypeError, match="options"):
        pruner.score(get_criterion("l1-norm"), seed=1)
    with pytest.raises(ValueError, match="not registered"):
        pruner.score("no-such-criterion")
    # A subset keeps the order it is given: per-layer random draws follow it.
    backwards = pruner.subset(["fc1", "conv1"])
    assert backwards.names == ["fc1", "conv1"]
    assert list(backwards.score("random", seed=0)) == ["fc1", "conv1"]
    with pytest.raises(ValueError, match="conv9"):
        pruner.subset(["conv9"])


def test_budget_planning_matches_keep_from_budget_without_tracing_again(lenet):
    network, example, posterior = lenet
    with recording_traces() as traced:
        pruner = Pruner(network, example)
        scores = pruner.score(posterior)
        keep = pruner.plan(scores, budget=0.2)
        again = pruner.plan(scores, budget=0.1, cost="params")  # a second cost model, still no trace
        small = pruner.cut(keep, switch_scales(scores))
    assert len(traced) == 1
    assert keep == keep_from_budget(network, scores, example, budget=0.2)
    assert count_flops(small, example) <= 0.2 * count_flops(network, example)
    assert sum(map(len, again.values())) < sum(map(len, keep.values()))
    with recording_traces() as traced:
        Pruner(network, example, layers=find_prunable_layers(network, example)).plan(scores, budget=0.2)
    assert len(traced) == 1  # the find above; the pruner built on its layers traces nothing


def test_bad_keep_sets_are_refused_with_the_clear_messages(lenet):
    network, example, posterior = lenet
    pruner = Pruner(network, example)
    scores = pruner.score(posterior)
    with pytest.raises(ValueError, match="exactly one"):
        pruner.plan(scores)
    with pytest.raises(ValueError, match="exactly one"):
        pruner.plan(scores, TARGET, budget=0.5)
    with pytest.raises(ValueError, match="'fc9' is not a switched layer"):
        pruner.plan(scores, {"fc9": 3})
    with pytest.raises(ValueError, match="between 1 and its width 20"):
        pruner.plan(scores, {"conv1": 21})
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
        pruner.plan(scores, 1.5)
    with pytest.raises(ValueError, match="budget"):
        pruner.plan(scores, budget=1e-9)
    with pytest.raises(TypeError, match="mix"):
        Pruner(network, example, layers=["conv1", pruner.layers[1]])

    residual = Residual()
    x = torch.randn(2, 3, 8, 8)
    grouped = Pruner(residual, x)
    group_scores = {layer.name: torch.rand(layer.channels) for layer in grouped.layers}
    with pytest.raises(ValueError, match="as the group 'stem'.*name 'stem' instead"):
        grouped.plan(group_scores, {"block.0": 4})
    skipping = Pruner(residual, x, coupled="skip")
    assert skipping.names == ["inner"]
    with pytest.raises(ValueError, match="--coupled group"):
        skipping.plan({"inner": torch.rand(6)}, {"block.0": 4}, spelling=CLI_SPELLING)


def test_repair_calibrates_and_fine_tunes_a_copy():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    images = torch.randn(300, 1, 2, 4)
    labels = network(images).argmax(1)
    split = lambda a, b: Split(images[a:b], labels[a:b])
    data = DataSplits(split(0, 200), split(200, 250), split(250, 300), "toy", 3, (1, 2, 4))
    pruner = Pruner(network, images[:2])
    small = pruner.cut(pruner.plan(pruner.score("l1-norm"), {"1": 6}))
    before = {k: v.clone() for k, v in small.state_dict().items()}
    calibrated = pruner.repair(small, data, calibrate=CalibrationConfig(steps=5, batchnorm_batches=0, check_batches=2))
    assert calibrated is not small and calibrated[1].out_features == 6
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # calibration works on a copy
    tuned = pruner.repair(small, data, finetune=TrainConfig(epochs=1, batch_size=50))
    assert tuned is small and tuned[1].out_features == 6
    assert pruner.repair(small, data) is small


def test_cli_prune_traces_the_network_once(run_copy, small_mnist_everywhere):
    """`pyro-dirichlet prune` builds one Pruner: one trace of the network for the plan, the cut and the check."""
    from pyro_dirichlet.app.cli import main

    with recording_traces() as traced:
        assert main(["prune", "--run", str(run_copy), "--no-check", "--quiet"]) == 0
    assert len(traced) == 1
    with recording_traces() as traced:
        assert main(["prune", "--run", str(run_copy), "--budget", "0.1", "--quiet"]) == 0
    # With the decision check on, only its pruned candidates are traced besides (each for its calibration).
    full = [model for model in traced if model.conv1.out_channels == 20]
    assert len(full) == 1
    record = json.loads((run_copy / "run.json").read_text())["steps"]["prune"]["result"]
    assert "decision_check" in record and len(traced) == 1 + 5
