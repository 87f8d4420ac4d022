"""The external check of the baseline criteria against Torch-Pruning (an optional analysis dependency)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from pyro_dirichlet.data import DataSplits, Split

pytest.importorskip("torch_pruning", reason="Torch-Pruning is the optional 'analysis' extra")

from analysis.external_baselines import compare_keep_sets, jaccard, markdown  # noqa: E402


class ConvBN(nn.Module):
    """conv(3->8)+BN -> relu -> conv(8->6)+BN -> relu -> pool -> flatten -> fc(6->3): every prunable layer has a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 1).flatten(1)
        return self.fc(x)


def tiny_data(seed: int = 0) -> DataSplits:
    generator = torch.Generator().manual_seed(seed)

    def split(n):
        return Split(torch.randn(n, 3, 6, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator))

    return DataSplits(split(64), split(16), split(32), "tiny", 3, (3, 6, 6))


def network(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = ConvBN()
    with torch.no_grad():  # distinct BatchNorm scales and statistics, as after training
        for norm in (net.bn1, net.bn2):
            norm.weight.uniform_(-2, 2)
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2)
    return net.eval()


BUDGETS = {"half": {"conv1": 4, "conv2": 3}, "quarter": {"conv1": 2, "conv2": 2}}


def test_jaccard():
    assert jaccard([0, 1, 2], [0, 1, 2]) == 1.0
    assert jaccard([0, 1], [2, 3]) == 0.0
    assert jaccard([0, 1, 2], [1, 2, 3]) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_criteria_give_identical_keep_sets(seed, one_thread):
    result = compare_keep_sets(network(seed), tiny_data(seed), BUDGETS, taylor_batches=2)
    assert result["layers"] == ["conv1", "conv2"]
    for budget, entry in result["budgets"].items():
        pairs = {(p["project"], p["external"]): p for p in entry["jaccard"]}
        # The same quantity on the same layer: sum |w| of its own filters, |gamma| of its BatchNorm.
        assert pairs[("l1-norm", "tp magnitude p=1, own layer")]["per_layer"] == {"conv1": 1.0, "conv2": 1.0}
        assert entry["keep"]["tp bn-scale"] == entry["keep"]["batchnorm-scale"]
        assert pairs[("batchnorm-scale", "tp bn-scale")]["mean"] == 1.0
        for layer, count in BUDGETS[budget].items():
            assert all(len(keep[layer]) == count for keep in entry["keep"].values())
        # Every keep set went through the project's surgery and was scored.
        assert set(entry["test_pruned"]) == set(entry["keep"])
        assert all(0.0 <= value <= 1.0 for value in entry["test_pruned"].values())
    assert "tp taylor" in markdown({"cases": [{"name": "tiny", "description": "", "baseline_test_accuracy": 0.5,
                                                "taylor_batches": 2, **result}]})


def test_torch_pruning_magnitude_scores_the_whole_group(one_thread):
    # conv1 channel 0 has the smallest filter but the largest weights in conv2 that read it:
    # the project's L1 (own filter) drops it, Torch-Pruning's group magnitude keeps it.
    net = network(0)
    with torch.no_grad():
        net.conv1.weight[0] *= 1e-3
        net.conv2.weight[:, 0] *= 1e3
    result = compare_keep_sets(net, tiny_data(0), {"half": BUDGETS["half"]}, taylor_batches=1, evaluate=False)
    keep = result["budgets"]["half"]["keep"]
    assert 0 not in keep["l1-norm"]["conv1"]
    assert 0 in keep["tp magnitude p=1"]["conv1"]
    assert 0 not in keep["tp magnitude p=1, own layer"]["conv1"]
