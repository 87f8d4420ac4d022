"""The method studies in analysis/: their arithmetic on known inputs, and one end-to-end run on a little real MNIST."""

import json

import pytest
import torch

from analysis import compare, criteria
from analysis.ablation import channels_in_use
from analysis.reproduction import lenet5_cost
from analysis.study import Fitted
from pyro_dirichlet.models.lenet import LeNet5Caffe
from pyro_dirichlet.measure import count_flops, count_parameters
from pyro_dirichlet.surgery import prune_channels


def test_lenet5_cost_matches_the_measured_counts_of_real_networks():
    torch.manual_seed(0)
    network, example = LeNet5Caffe().eval(), torch.zeros(2, 1, 28, 28)
    assert lenet5_cost(20, 50, 800, 500) == (count_parameters(network), count_flops(network, example)) == (431_080, 4_586_000)
    keep = {"conv1": list(range(5)), "conv2": list(range(12)), "fc1": list(range(40))}
    pruned = prune_channels(network, keep, example)
    # The papers write fc1 by its inputs: 12 channels times the 4x4 map.
    assert lenet5_cost(5, 12, 12 * 16, 40) == (count_parameters(pruned), count_flops(pruned, example))


def test_channels_in_use_is_one_for_a_uniform_posterior_and_small_for_a_peaked_one():
    uniform = Fitted(None, None, None, {"a": torch.full((10,), 0.1, dtype=torch.float64)})
    peaked = Fitted(None, None, None, {"a": torch.tensor([0.91] + [0.01] * 9, dtype=torch.float64)})
    assert channels_in_use(uniform) == pytest.approx(1.0)
    assert channels_in_use(peaked) < 0.2


def _rows(method_minus_l1: list[float], stage_offsets=(0.0, 0.0, 0.0)):
    rows = []
    for seed, gap in enumerate(method_minus_l1):
        for name, extra in ((criteria.METHOD, gap), ("l1-norm", 0.0), ("random", -0.1)):
            row = {"seed": seed, "budget": "b", "criterion": name, "params": 1, "flops": 1}
            for stage, offset in zip(criteria.STAGES, stage_offsets):
                row[f"test_{stage}"] = 0.9 + offset + extra
            rows.append(row)
    return rows


def test_verdicts_read_paired_differences_per_seed():
    ahead = criteria.verdicts(_rows([0.02, 0.03, 0.01]), ["b"])["b"]
    assert ahead["l1-norm"]["beats_right_after_pruning"] and ahead["random"]["beats_right_after_pruning"]
    assert ahead["l1-norm"]["pruned_difference"]["mean"] == pytest.approx(0.02)
    behind = criteria.verdicts(_rows([-0.02, -0.021, -0.019]), ["b"])["b"]["l1-norm"]
    assert not behind["beats_right_after_pruning"]
    # Consistently 2 points behind with almost no spread is worse, not noise.
    assert not behind["not_worse_after_finetune"]
    noisy = criteria.verdicts(_rows([-0.001, 0.002, -0.002]), ["b"])["b"]["l1-norm"]
    assert noisy["not_worse_after_finetune"]


def test_compare_writes_every_requested_part_and_the_index(small_mnist_everywhere, tmp_path):
    out = tmp_path / "results"
    argv = ["--seeds", "2", "--subset", "300", "--train-epochs", "1", "--finetune-epochs", "1",
            "--criteria", criteria.METHOD, "random", "l1-norm", "taylor", "dirichlet P(top-k) + fold",
            "--parts", "criteria", "allocation", "uncertainty", "--calibrate", "--out", str(out)]
    assert compare.main(argv) == 0
    combined = json.loads((out / "comparison.json").read_text())
    assert set(combined["parts"]) == {"criteria", "allocation", "uncertainty"}
    table = combined["parts"]["criteria"]["summary"]
    names = {e["criterion"] for e in table}
    assert names == {criteria.METHOD, "random", "l1-norm", "taylor", "dirichlet P(top-k) + fold"}
    assert combined["parts"]["criteria"]["stages"] == ["pruned", "calibrated", "finetune_1"]
    # Every criterion gets the same calibration column.
    rows = combined["parts"]["criteria"]["rows"]
    assert all(0.0 <= row["test_calibrated"] <= 1.0 and row["calibration_seconds"] > 0 for row in rows)
    verdict = combined["parts"]["criteria"]["verdicts"][next(iter(compare.BUDGETS["lenet5"]))]["l1-norm"]
    assert {"calibrated_difference", "beats_after_calibration", "not_worse_after_finetune"} <= set(verdict)
    # Equal keep counts: every criterion at a budget has the same size.
    for budget in compare.BUDGETS["lenet5"]:
        assert len({e["params"] for e in table if e["budget"] == budget}) == 1
    allocation = combined["parts"]["allocation"]
    assert {r["allocation"] for r in allocation["rows"]} == {"automatic (posterior threshold)", "uniform ratio"}
    baseline_flops = 4_586_000
    assert all(r["flops"] <= budget * baseline_flops for r in allocation["rows"] for budget in [r["budget"]])
    assert (out / "uncertainty_mass.png").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "importance criteria at equal keep counts" in readme and "uniform per-layer ratios" in readme


def _fake_study(network, layers, names, images):
    from types import SimpleNamespace

    from pyro_dirichlet.data import Split

    # No posterior: asking for a posterior criterion here would fail, so only asked-for ones may run.
    fitted = Fitted(SimpleNamespace(layers=layers), None, None, None)
    data = SimpleNamespace(train=Split(images, torch.arange(len(images)) % 2))
    return SimpleNamespace(criteria=names, network=lambda seed: network, default_fit=lambda seed: fitted, data=data)


def test_criteria_computes_only_the_rows_asked_for_through_the_registry():
    from pyro_dirichlet.criteria import L1Norm, RandomScores
    from pyro_dirichlet.structure import find_prunable_layers

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    images = torch.randn(8, 1, 2, 2)
    layers = find_prunable_layers(network, images[:2])
    found = criteria.criteria(_fake_study(network, layers, ("l1-norm", "random"), images), 3, {"1": 2})
    assert list(found) == ["l1-norm", "random"]
    assert torch.equal(found["l1-norm"][0]["1"], L1Norm()(network, layers)["1"]) and found["l1-norm"][1] is False
    assert torch.equal(found["random"][0]["1"], RandomScores(seed=3)(network, layers)["1"])
    # No BatchNorm after the layers: the BN row is skipped, not an error.
    assert criteria.criteria(_fake_study(network, layers, ("batchnorm |gamma|",), images), 0, {"1": 2}) == {}
    with pytest.raises(ValueError, match=r"criteria \['l2'\] are not rows of the comparison"):
        criteria.criteria(_fake_study(network, layers, ("l2",), images), 0, {"1": 2})


def test_study_prunes_the_way_prune_by_posterior_mean_does():
    from analysis.study import pruned_network
    from pyro_dirichlet.posterior import sample_posterior
    from pyro_dirichlet.criteria.posterior import posterior_mean
    from pyro_dirichlet.pruning import prune_by_posterior_mean

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).eval()
    example = torch.randn(5, 4)
    posterior = sample_posterior({"0": torch.tensor([1.0, 8.0, 2.0, 6.0, 0.5, 3.0])}, num_samples=500, seed=0)
    library, keep = prune_by_posterior_mean(network, posterior, {"0": 3}, example)
    assert keep == {"0": [1, 3, 5]}
    studied = pruned_network(network, keep, example, posterior_mean(posterior))
    assert torch.allclose(studied(example), library(example))
    unfolded = pruned_network(network, keep, example)
    assert not torch.allclose(unfolded(example), library(example))
