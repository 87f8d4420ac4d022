"""The study figures of docs/results.md come from the committed JSON the current study code writes."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.criteria import readme_tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PAGE = ROOT / "docs" / "results.md"
CRITERIA = ROOT / "analysis" / "results" / "lenet5-mnist" / "criteria.json"
CPU_FINETUNE = ROOT / "analysis" / "results" / "resnet20-cifar10-cpu-finetune"
#: The recipe candidates run on this CPU (seed 0, L1-norm, 50% FLOPs, lr 0.05), as docs/results.md names them.
CPU_PROBES = ("distil0", "distil0.9", "epochs30", "smoothing0.1")


def cpu_probe_choice() -> dict:
    """What analysis.finetune_recipe chooses from the committed CPU candidates, in :data:`CPU_PROBES` order."""
    from analysis.finetune_recipe import choose

    return choose([json.loads((CPU_FINETUNE / "parts" / f"probe-lr0.05-{name}" / "comparison.json").read_text())
                   for name in CPU_PROBES])


def l1_at_half_flops(result: dict) -> dict:
    """The summary entry of L1-norm at 50% of the FLOPs in a ResNet-20 comparison."""
    return next(e for e in result["summary"] if e["budget"] == "50% FLOPs" and e["criterion"] == "l1-norm")


def test_readme_criteria_tables_are_the_committed_json():
    result = json.loads(CRITERIA.read_text())
    # The current protocol: every criterion calibrated too, and the rows the page discusses.
    assert result["stages"][:2] == ["pruned", "calibrated"]
    assert {"dirichlet mean + fold", "dirichlet mean, no fold", "l1-norm", "random", "taylor"} <= {
        row["criterion"] for row in result["rows"]}
    assert len(result["seeds"]) == 3
    page = RESULTS_PAGE.read_text()
    assert readme_tables(result) in page, "the criteria tables of docs/results.md differ from readme_tables(criteria.json)"


def test_readme_tables_bold_only_differences_beyond_two_standard_errors():
    rows = [{"seed": s, "budget": "b", "criterion": c, "test_pruned": p}
            for s, (a, b, n) in enumerate([(0.60, 0.50, 0.40), (0.62, 0.50, 0.60), (0.61, 0.50, 0.35)])
            for c, p in (("dirichlet mean + fold", a), ("l1-norm", b), ("dirichlet mean, no fold", n))]
    summary = [{"budget": "b", "criterion": c, "pruned_mean": 0.5} for c in ("dirichlet mean + fold", "l1-norm")]
    tables = readme_tables({"stages": ["pruned"], "summary": summary, "rows": rows, "budgets": {"b": {}}})
    assert "| b | dirichlet mean + fold − l1-norm | **+11.0 ± 0.6** |" in tables
    assert "| b | dirichlet mean, no fold − l1-norm | -5.0 ± 7.6 |" in tables  # within 2 se: not bold
    assert "− random" not in tables  # rows not in the run are left out


RESNET20 = ROOT / "analysis" / "results" / "resnet20-cifar10-h200" / "comparison.partial.json"


def test_readme_resnet20_tables_and_figures_are_the_committed_json():
    from analysis.resnet20_cifar10 import GAIN_METHOD, METHOD
    from analysis.resnet20_cifar10 import readme_tables as resnet20_tables

    result = json.loads(RESNET20.read_text())
    page = RESULTS_PAGE.read_text()
    assert resnet20_tables(result) in page, "the ResNet-20 tables of docs/results.md differ from readme_tables(comparison.partial.json)"
    # The baseline the comparison ran on is the committed one, and the page quotes its accuracy.
    recipe = json.loads((ROOT / "analysis" / "baselines" / "resnet20-cifar10.json").read_text())
    assert result["weights"]["sha256"] == recipe["sha256"]
    assert f"{100 * result['baseline']['test_accuracy']:.2f}% test accuracy" in page
    # The fine-tuned runs the GPU call finished before its limit, as the page quotes them.
    tuned = {r["criterion"]: r["test_finetuned"] for r in result["rows"] if "test_finetuned" in r}
    assert f"Dirichlet row {100 * tuned[METHOD]:.2f}%, L1-norm {100 * tuned['l1-norm']:.2f}%" in page
    paired = {(p["budget"], p["method"], p["versus"], p["stage"]): p for p in result["paired"]}
    for budget in ("30% FLOPs", "keep 0.25"):  # the bar the page says is met there
        assert all(paired[(budget, GAIN_METHOD, other, "calibrated")]["ahead"] for other in ("l1-norm", "random"))


def test_readme_resnet20_finetuned_comparison_is_the_committed_json():
    from analysis.resnet20_cifar10 import readme_tables as resnet20_tables

    result = json.loads((ROOT / "analysis" / "results" / "resnet20-cifar10-30pct-finetune" / "comparison.json").read_text())
    page = RESULTS_PAGE.read_text()
    assert resnet20_tables(result) in page
    calibrated = next(p for p in result["paired"] if p["stage"] == "calibrated")
    per_seed = ", ".join(f"{100 * d:+.1f}" for d in calibrated["per_seed"])
    assert f"(per seed {per_seed} here" in page
    finetuned = next(p for p in result["paired"] if p["stage"] == "finetuned")
    assert finetuned["behind"] and f"L1-norm is ahead by {-100 * finetuned['mean']:.1f} points" in page


def test_readme_quotes_the_fifteen_epoch_finetune():
    result = json.loads((ROOT / "analysis" / "results" / "resnet20-cifar10-50pct-15epochs" / "comparison.json").read_text())
    assert result["protocol"]["finetune_epochs"] == 15 and result["protocol"]["seeds"] == [0]
    (tuned,) = [r["test_finetuned"] for r in result["rows"] if "test_finetuned" in r]
    assert f"fine-tuned 15 epochs on this CPU reaches {100 * tuned:.2f}%" in " ".join(RESULTS_PAGE.read_text().split())



def test_readme_resnet20_finetune_with_a_chosen_recipe_is_the_committed_json():
    from analysis.finetune_recipe import choose
    from analysis.resnet20_cifar10 import readme_tables as resnet20_tables

    folder = ROOT / "analysis" / "results" / "resnet20-cifar10-h200-finetune"
    result = json.loads((folder / "comparison.json").read_text())
    page = RESULTS_PAGE.read_text()
    assert resnet20_tables(result) in page
    flat = " ".join(page.split())
    # The recipe the page names is what analysis.finetune_recipe chooses from the committed candidates.
    probes = [json.loads((folder / "parts" / name / "comparison.json").read_text()) for name in ("probe-lr0.05", "probe-lr0.2")]
    choice = choose(probes)
    assert choice["chosen"]["finetune_lr"] == result["protocol"]["finetune_lr"] == 0.05
    means = {c["finetune_lr"]: c["validation_mean"] for c in choice["candidates"]}
    assert f"mean validation accuracy {100 * means[0.05]:.2f}% against {100 * means[0.2]:.2f}%" in flat
    l1 = l1_at_half_flops(result)
    gap = 100 * (result["baseline"]["test_accuracy"] - l1["finetuned_mean"])
    assert f"L1-norm recovers to {100 * l1['finetuned_mean']:.2f} ± {100 * l1['finetuned_sd']:.2f}%" in flat
    assert gap > 1.5 and f"is missed by {gap - 1.5:.2f} points" in flat
    paired = next(p for p in result["paired"] if p["budget"] == "50% FLOPs" and p["stage"] == "finetuned")
    assert paired["behind"] and f"behind L1-norm by {-100 * paired['mean']:.2f} ± {100 * paired['se']:.2f} points" in flat


def test_readme_quotes_the_distillation_probe_and_the_cpu_30pct_pair():
    from analysis.finetune_recipe import RECIPE_FIELDS
    from analysis.resnet20_cifar10 import GAIN_METHOD

    flat = " ".join(RESULTS_PAGE.read_text().split())
    choice = cpu_probe_choice()
    # Validation decides: 30 epochs on the labels alone, neither distillation nor label smoothing.
    assert (choice["chosen"]["finetune_epochs"], choice["chosen"]["finetune_distillation"],
            choice["chosen"]["finetune_label_smoothing"]) == (30, 0.0, 0.0)
    committed = json.loads((CPU_FINETUNE / "recipe.json").read_text())["chosen"]
    assert all(committed[field] == choice["chosen"][field] for field in RECIPE_FIELDS)
    by_name = dict(zip(CPU_PROBES, choice["candidates"]))
    assert (f"30 epochs reach {100 * by_name['epochs30']['validation_mean']:.2f}% validation (test "
            f"{100 * by_name['epochs30']['test_mean']:.2f}%), label smoothing 0.1 "
            f"{100 * by_name['smoothing0.1']['validation_mean']:.2f}% (test {100 * by_name['smoothing0.1']['test_mean']:.2f}%)") in flat
    means = {c["finetune_distillation"]: c for c in choice["candidates"][:2]}
    assert (f"reaches {100 * means[0.9]['validation_mean']:.2f}% validation accuracy against "
            f"{100 * means[0.0]['validation_mean']:.2f}% on the labels alone") in flat
    assert f"test {100 * means[0.9]['test_mean']:.2f}% and {100 * means[0.0]['test_mean']:.2f}%" in flat
    # The 30% pair on this CPU, one seed of each row, joined by analysis.merge_comparisons.
    result = json.loads((CPU_FINETUNE / "comparison.json").read_text())
    assert result["device"] == "cpu" and result["protocol"]["finetune_epochs"] == 20
    tuned = {(r["budget"], r["criterion"]): r["test_finetuned"] for r in result["rows"]}
    assert (f"L1-norm {100 * tuned[('30% FLOPs', 'l1-norm')]:.2f}%, the gain row "
            f"{100 * tuned[('30% FLOPs', GAIN_METHOD)]:.2f}%") in flat
    calibrated = {r["criterion"]: r["test_calibrated"] for r in result["rows"] if r["budget"] == "30% FLOPs"}
    assert f"after calibration {100 * calibrated['l1-norm']:.1f}% and {100 * calibrated[GAIN_METHOD]:.1f}%" in flat
    paired = {p["stage"]: p["mean"] for p in result["paired"]}
    assert f"row leads by {100 * paired['pruned']:.1f} points" in flat
    assert paired["finetuned"] < 0 and f"by {-100 * paired['finetuned']:.1f} points on one seed" in flat


def test_readme_quotes_the_30_epoch_recipe_over_three_seeds():
    from analysis.finetune_recipe import RECIPE_FIELDS, recipe_of

    # Validation chose 30 epochs on seed 0; seeds 1 and 2 ran with it, and
    # analysis.merge_comparisons joined the three parts into epochs30/comparison.json.
    result = json.loads((CPU_FINETUNE / "epochs30" / "comparison.json").read_text())
    chosen = json.loads((CPU_FINETUNE / "recipe.json").read_text())["chosen"]
    assert result["device"] == "cpu" and result["complete"] and result["protocol"]["seeds"] == [0, 1, 2]
    assert recipe_of(result["protocol"]) == {field: chosen[field] for field in RECIPE_FIELDS}
    l1 = l1_at_half_flops(result)
    seeds = [100 * r["test_finetuned"] for r in sorted(result["rows"], key=lambda r: r["seed"])]
    flat = " ".join(RESULTS_PAGE.read_text().split())
    assert (f"L1-norm reaches {100 * l1['finetuned_mean']:.2f} ± {100 * l1['finetuned_sd']:.2f}% (per seed "
            + ", ".join(f"{s:.2f}" for s in seeds) + ")") in flat
    gap = 100 * (result["baseline"]["test_accuracy"] - l1["finetuned_mean"])
    assert f"{gap:.2f} points under the {100 * result['baseline']['test_accuracy']:.2f}% baseline" in flat
    assert f"by {gap - 1.5:.2f} with the validation-chosen 30" in flat
    # The four learning-rate-0.05 candidates on seed 0 (this CPU) span what the page says.
    tests = [100 * c["test_mean"] for c in cpu_probe_choice()["candidates"]]
    assert f"within {max(tests) - min(tests):.2f} points of each other on test ({min(tests):.2f}-{max(tests):.2f}%)" in flat
    h200 = json.loads((ROOT / "analysis" / "results" / "resnet20-cifar10-h200-finetune" / "parts" / "probe-lr0.2" / "comparison.json").read_text())
    l1_at_02 = next(r for r in h200["rows"] if r["criterion"] == "l1-norm")["test_finetuned"]
    assert f"0.2 is worse ({100 * l1_at_02:.2f}% on the H200)" in flat
