"""The report's "What next" advice (issue 32), read off the smoke run's report.json and variations of its numbers."""

import copy
import json

import numpy as np
import pytest

from pyro_dirichlet.app.report_advice import LOST_ACCURACY, MIN_SVI_STEPS, what_next


@pytest.fixture(scope="module")
def report(small_run):
    return json.loads((small_run / "report.json").read_text())


def kinds(report) -> list[str]:
    return [advice.kind for advice in what_next(report, "runs/mine")]


def settled(report):
    """The smoke run as if its fit had run long, settled and ranked its channels surely, losing no accuracy."""
    changed = copy.deepcopy(report)
    changed["svi"]["steps"] = 2 * MIN_SVI_STEPS
    changed["svi"]["elbo"] = list(-100 + np.random.default_rng(0).normal(0, 1, 2 * MIN_SVI_STEPS))
    changed["pruned"]["test_accuracy"] = changed["baseline"]["test_accuracy"]
    for row in changed["layers"].values():
        row["straddling_channels"] = row["straddling_channels"][:1]
    return changed


def test_the_smoke_run_gets_advice_on_its_short_fit_and_straddling_channels(report):
    advice = {item.kind: item.text for item in what_next(report, "runs/mine")}
    assert {"svi", "straddling", "deployment"} <= set(advice)
    assert f"only {report['svi']['steps']} SVI steps" in advice["svi"] and "pyro-dirichlet fit --epochs" in advice["svi"]
    assert "straddles the keep threshold" in advice["straddling"] and "fc1 500 of 500" in advice["straddling"]
    assert "95% HDI" in advice["straddling"]


def test_a_settled_run_that_lost_nothing_gets_only_the_deployment_advice(report):
    assert kinds(settled(report)) == ["deployment"]


def test_an_elbo_still_rising_asks_for_a_longer_fit(report):
    changed = settled(report)
    changed["svi"]["elbo"] = list(np.linspace(-200, -100, 2 * MIN_SVI_STEPS))
    (advice,) = [item for item in what_next(changed, "runs/mine") if item.kind == "svi"]
    assert "still rising" in advice.text


def test_lost_accuracy_names_the_fine_tune_and_budget_options(report):
    changed = settled(report)
    changed["pruned"]["test_accuracy"] = changed["baseline"]["test_accuracy"] - 2 * LOST_ACCURACY
    (advice,) = [item for item in what_next(changed, "runs/mine") if item.kind == "accuracy"]
    assert "--finetune-epochs" in advice.text and "--finetune-distillation" in advice.text and "--budget" in advice.text


def test_layers_a_group_coupling_would_free_are_named_with_the_cli_flag(report):
    changed = settled(report)
    changed["coupled"] = "skip"  # the default is group now: a run that asked for skip
    # The analysis's own sentence for a residual-coupled conv under coupled="skip" (structure/graph.py).
    changed["skipped_layers"].append({"layer": "layer1.0.conv2", "unsupported": False, "reason": (
        "its output channels are coupled with 'conv1' through 'add' (operator.add in module 'layer1.0'); coupled "
        "channels are left unpruned by default: pass coupled='group' to prune them as the group 'conv1'")})
    (advice,) = [item for item in what_next(changed, "runs/mine") if item.kind == "coupled"]
    assert "--coupled group" in advice.text and "layer1.0.conv2" in advice.text and "coupled='group'" not in advice.text
    changed["coupled"] = "group"
    assert "coupled" not in kinds(changed)


def test_the_deployment_advice_gives_the_recorded_preprocessing_and_the_factory(report):
    changed = settled(report)
    changed["model"] = "mynets:factory"
    changed["preprocessing"] = {"image_size": 32, "channel_order": "RGB",
                                "normalize": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}}
    (advice,) = what_next(changed, "runs/mine")
    assert "resized to 32 x 32, decoded as RGB" in advice.text
    assert "mean 0.4914,0.4822,0.4465 and std 0.247,0.2435,0.2616" in advice.text
    assert 'load_pruned("runs/mine/pruned", factory="mynets:factory")' in advice.text
    assert "torch.onnx.export" in advice.text and "torch.export.export" in advice.text
