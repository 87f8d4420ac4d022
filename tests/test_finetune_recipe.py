"""The fine-tune recipe is chosen on validation, from candidates alike but for their recipe."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest

from analysis.finetune_recipe import choose, flags, main

PROBES = Path(__file__).resolve().parents[1] / "analysis" / "results" / "resnet20-cifar10-h200-finetune" / "parts"


@pytest.fixture(scope="module")
def probes() -> list[dict]:
    """The two candidates the H200 ran: lr 0.05 and 0.2, 20 epochs at batch 512, gain row and L1-norm, seed 0."""
    return [json.loads((PROBES / name / "comparison.json").read_text()) for name in ("probe-lr0.05", "probe-lr0.2")]


def test_the_committed_probes_choose_the_best_validation_mean(probes):
    choice = choose(probes, ["lr0.05", "lr0.2"])
    for candidate, probe in zip(choice["candidates"], probes):
        rows = probe["rows"]
        assert candidate["validation_mean"] == pytest.approx(statistics.fmean(r["validation_finetuned"] for r in rows))
        assert candidate["finetune_lr"] == probe["protocol"]["finetune_lr"] and len(candidate["rows"]) == 2
    best = max(choice["candidates"], key=lambda c: c["validation_mean"])
    assert choice["chosen"] == {"source": best["source"], "finetune_epochs": 20, "finetune_lr": best["finetune_lr"],
                                "finetune_batch_size": 512, "finetune_distillation": 0.0, "finetune_label_smoothing": 0.0}
    assert flags(choice["chosen"]) == f"--finetune-epochs 20 --finetune-lr {best['finetune_lr']} --finetune-batch-size 512"
    # The test accuracy is carried for information only: making it favour the other candidate changes nothing.
    flipped = copy.deepcopy(probes)
    for probe in flipped:
        for row in probe["rows"]:
            row["test_finetuned"] = 1.0 - row["validation_finetuned"]
    assert choose(flipped)["chosen"]["finetune_lr"] == best["finetune_lr"]


def test_ties_go_to_the_cheaper_gentler_recipe(probes):
    tied = copy.deepcopy(probes)
    for row in tied[1]["rows"]:
        row["validation_finetuned"] = 0.5
    for row in tied[0]["rows"]:
        row["validation_finetuned"] = 0.5
    assert choose(tied)["chosen"]["finetune_lr"] == min(p["protocol"]["finetune_lr"] for p in probes)


def test_a_distilling_candidate_competes_as_a_recipe(probes):
    # Runs made before --finetune-distillation leave it out of their protocol: they are 0.
    distilled = copy.deepcopy(probes[0])
    distilled["protocol"]["finetune_distillation"] = 0.5
    for row in distilled["rows"]:
        row["validation_finetuned"] += 0.01
    choice = choose([*probes, distilled], ["lr0.05", "lr0.2", "distilled"])
    assert [c["finetune_distillation"] for c in choice["candidates"]] == [0.0, 0.0, 0.5]
    assert choice["chosen"]["source"] == "distilled"
    assert flags(choice["chosen"]).endswith("--finetune-batch-size 512 --finetune-distillation 0.5")
    # Level on validation, the recipe without a teacher wins: it is the cheaper one.
    for row in distilled["rows"]:
        row["validation_finetuned"] -= 0.01
    assert choose([probes[0], distilled], ["plain", "distilled"])["chosen"]["source"] == "plain"


def test_label_smoothing_competes_as_a_recipe_and_loses_ties(probes):
    # Runs made before --finetune-label-smoothing leave it out of their protocol: they smooth nothing.
    smoothed = copy.deepcopy(probes[0])
    smoothed["protocol"]["finetune_label_smoothing"] = 0.1
    for row in smoothed["rows"]:
        row["validation_finetuned"] += 0.002
    choice = choose([probes[0], smoothed], ["plain", "smoothed"])
    assert [c["finetune_label_smoothing"] for c in choice["candidates"]] == [0.0, 0.1]
    assert choice["chosen"]["source"] == "smoothed"
    assert flags(choice["chosen"]).endswith("--finetune-batch-size 512 --finetune-label-smoothing 0.1")
    for row in smoothed["rows"]:
        row["validation_finetuned"] -= 0.002
    assert choose([smoothed, probes[0]], ["smoothed", "plain"])["chosen"]["source"] == "plain"


def test_candidates_that_differ_in_more_than_the_recipe_are_refused(probes):
    with pytest.raises(ValueError, match="no candidates"):
        choose([])
    other = copy.deepcopy(probes[1])
    other["protocol"]["fit_images"] = 1000
    with pytest.raises(ValueError, match="b: differs from a in more than the recipe"):
        choose([probes[0], other], ["a", "b"])
    other = copy.deepcopy(probes[1])
    other["rows"] = other["rows"][:1]
    with pytest.raises(ValueError, match="fine-tunes other rows"):
        choose([probes[0], other])
    with pytest.raises(ValueError, match="share one recipe"):
        choose([probes[0], copy.deepcopy(probes[0])])
    other = copy.deepcopy(probes[1])
    for row in other["rows"]:
        del row["validation_finetuned"]
    with pytest.raises(ValueError, match="candidate 1: no such row was fine-tuned"):
        choose([probes[0], other])


def test_the_cli_writes_the_choice_and_refuses_bad_files(tmp_path, capsys):
    paths = [PROBES / name / "comparison.json" for name in ("probe-lr0.05", "probe-lr0.2")]
    assert main([*map(str, paths), "--json", str(tmp_path / "recipe.json")]) == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed and "chosen: --finetune-epochs 20" in printed
    assert json.loads((tmp_path / "recipe.json").read_text())["chosen"]["finetune_batch_size"] == 512
    broken = tmp_path / "broken.json"
    broken.write_text("[")
    assert main([str(paths[0]), str(broken), "--json", str(tmp_path / "again.json")]) == 2
    assert f"candidate {broken} cannot be read as JSON" in capsys.readouterr().err
    assert not (tmp_path / "again.json").exists()


def test_only_the_named_rows_count_so_a_larger_run_can_stand_beside_a_smaller_one(probes):
    """The committed whole comparison (both rows, 3 seeds, two budgets) against a run of L1-norm alone."""
    whole = json.loads((PROBES.parent / "comparison.json").read_text())
    alone = copy.deepcopy(whole)
    alone["protocol"].update(criteria=["l1-norm"], flop_budgets=[0.5], finetune_epochs=30)
    alone["rows"] = [row for row in alone["rows"] if row["criterion"] == "l1-norm" and row["budget"] == "50% FLOPs"]
    for row in alone["rows"]:
        row["validation_finetuned"] += 0.001
    with pytest.raises(ValueError, match="fine-tunes other rows"):
        choose([whole, alone])
    choice = choose([whole, alone], criterion="l1-norm", budget="50% FLOPs")
    assert [len(c["rows"]) for c in choice["candidates"]] == [3, 3] and choice["chosen"]["finetune_epochs"] == 30
    assert choice["candidates"][0]["device"] == "cuda" and "of l1-norm, 50% FLOPs" in choice["rule"]
    expected = statistics.fmean(r["validation_finetuned"] for r in whole["rows"]
                                if r["criterion"] == "l1-norm" and r["budget"] == "50% FLOPs")
    assert choice["candidates"][0]["validation_mean"] == pytest.approx(expected)
    other = copy.deepcopy(alone)
    other["protocol"]["calibration"]["steps"] = 10  # a protocol field beyond the rows and the recipe
    with pytest.raises(ValueError, match="more than the recipe"):
        choose([whole, other], criterion="l1-norm", budget="50% FLOPs")
