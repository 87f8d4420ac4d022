"""The head to head with Torch-Pruning: its pruning hits the FLOPs budget, the default coupling
switches every layer Torch-Pruning prunes, and the table in docs/results.md is the committed JSON's."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.small_resnet import SmallResNet
from benchmarks.versus_torch_pruning import RESULTS, RESULTS_PAGE, TABLE_END, TABLE_START, readme_table, tp_prune_to_flops
from pyro_dirichlet.measure import count_flops
from pyro_dirichlet.structure import find_prunable_layers


def _pruned_by(original: nn.Module, pruned: nn.Module) -> set[str]:
    """Conv2d/Linear layers whose output width changed."""
    widths = {name: m.weight.shape[0] for name, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return {name for name, m in original.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and widths[name] != m.weight.shape[0]}


@pytest.mark.parametrize("budget", [0.5, 0.3])
def test_torch_pruning_reaches_the_flops_budget_and_every_layer_it_cuts_is_switched(budget):
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    net, x = SmallResNet().eval(), torch.randn(2, 3, 32, 32)
    pruned, ratio = tp_prune_to_flops(net, "tp-magnitude", budget, x)
    flops = count_flops(pruned, x) / count_flops(net, x)
    assert budget - 0.05 < flops <= budget and 0 < ratio < 0.95
    # Issue 29's bar: with the default coupling, every layer Torch-Pruning cuts is a switch site's member.
    members = {m for layer in find_prunable_layers(net, x) for m in layer.members}
    cut = _pruned_by(net, pruned)
    assert cut >= {"stem", "layer2.shortcut.0", "layer3.shortcut.0", "fc1"} and cut <= members


def test_the_results_page_table_is_the_committed_json():
    result = json.loads(RESULTS.read_text())
    text = RESULTS_PAGE.read_text()
    table = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)].strip()
    assert table == readme_table(result)
    assert set(result["networks"]) >= {"small-resnet", "resnet20"}
    for entry in result["networks"].values():
        methods = {row["method"] for row in entry["rows"]}
        assert "dirichlet" in methods and methods & {"tp-magnitude", "tp-taylor", "tp-lamp", "tp-hessian"}
        for row in entry["rows"]:  # equal FLOPs: every row at or under its budget
            assert row["flops"] <= row["budget"] * entry["baseline"]["flops"]


def test_the_results_page_quotes_the_diagnosis_json():
    diagnosis = json.loads((RESULTS.parent / "versus_torch_pruning_diagnosis.json").read_text())
    rows = {(r["ranking"], r["allocation"], r["fold"]): r for r in diagnosis["fits"][0]["rows"]}
    text = " ".join(RESULTS_PAGE.read_text().split())
    for key in [("dirichlet", "dirichlet", True), ("dirichlet", "dirichlet", False), ("l1-norm", "dirichlet", False)]:
        quoted = f"{100 * rows[key]['test_pruned']:.1f} / {100 * rows[key]['test_calibrated']:.1f}%"
        assert quoted in text, key
