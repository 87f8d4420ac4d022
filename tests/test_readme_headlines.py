"""README's "Headline results" are those of the committed JSON the studies wrote."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Headline results"


def headlines() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(HEADING)
    end = text.find("\n## ", start + 1)
    return " ".join(text[start:end if end != -1 else None].split())


def test_the_lenet5_reproduction_figures_are_the_committed_json():
    result = json.loads((ROOT / "analysis" / "results" / "lenet5-mnist" / "reproduction.json").read_text())
    median, text = result["median"], headlines()
    assert len(result["rows"]) == 3 and {row["architecture"] for row in result["rows"]} == {"5-12-40"}
    assert result["finetune_epochs"] == 8 and "3 seeds; pruned to 5-12-40" in text and "then 8 fine-tune epochs" in text
    assert (f"{100 * median['error']:.2f}% test error (median), with {median['params']:,} parameters "
            f"({median['params_reduction']:.0f}x fewer) and {median['flops']:,} FLOPs "
            f"({median['flops_reduction']:.1f}x fewer)") in text
    assert f"cost {median['fit_and_finetune_in_baseline_epochs']:.1f} baseline training epochs" in text


def _points(stat: dict) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['se']:.1f}"


def test_the_ranking_summary_is_the_committed_study():
    from analysis.ranking_summary import RESULTS, load_records, summarize

    summary, text = summarize(load_records(RESULTS)), headlines()
    resnet20, head = summary["resnet20"], summary["head-resnet"]
    # "ahead of L1-norm by 4.1 ± 1.1 and 8.5 ± 1.0 points at 50% and 30% FLOPs after the same
    # calibration, and of random by ..."
    for other, spelled in (("l1-norm", "L1-norm"), ("random", "random")):
        calibrated = resnet20["versus"]["default"][other]["calibrated"]
        half, tight = calibrated["50% FLOPs"], calibrated["30% FLOPs"]
        assert half["n"] == tight["n"] == 3 and half["mean"] > 2 * half["se"] and tight["mean"] > 2 * tight["se"], other
        assert f"{spelled} by {_points(half)} and {_points(tight)} points" in text, other
    # "Spearman correlation with each channel's removal cost is +0.21 against L1-norm's +0.11 and Taylor's +0.19"
    spearman = {name: resnet20["criteria"][name]["spearman_mean"]["mean"] for name in ("default", "l1-norm", "taylor")}
    assert spearman["default"] > max(spearman["l1-norm"], spearman["taylor"])
    assert (f"+{spearman['default']:.2f} against L1-norm's +{spearman['l1-norm']:.2f} and Taylor's "
            f"+{spearman['taylor']:.2f}") in text
    # "after one fine-tune epoch, ahead of L1-norm by ... (n seeds)"
    tuned = resnet20["versus"]["default"]["l1-norm"]["fine_tuned"]["50% FLOPs"]
    assert tuned["mean"] > 0 and f"after one fine-tune epoch {100 * tuned['mean']:+.1f} points against L1-norm" in text
    # the head ResNet: every never-firing unit below every useful one, and after the same fine-tune
    records = load_records(RESULTS)["head-resnet"]
    assert len(records) == 3 and all(r["criteria"]["default"]["dead_recall"]["fc1"] == 1.0 for r in records)
    head_tuned = head["versus"]["default"]["l1-norm"]["fine_tuned"]["50% FLOPs"]
    assert f"{_points(head_tuned)} points ahead of L1-norm at 50% FLOPs" in text
    # and the earlier default, against which the change is measured
    earlier = resnet20["versus"]["layer-gain-adam"]["l1-norm"]["calibrated"]["50% FLOPs"]
    assert f"trailed L1-norm by {-100 * earlier['mean']:.1f} points" in text


def test_the_torch_pruning_summary_is_the_committed_json():
    result = json.loads((ROOT / "benchmarks" / "results" / "versus_torch_pruning.json").read_text())
    text = headlines()
    assert "three seeds, reduced data" in text

    def by_budget(network: str) -> dict[float, dict[str, dict]]:
        rows: dict[float, dict[str, dict]] = {}
        for row in result["networks"][network]["summary"]:
            assert row["seeds"] == 3
            rows.setdefault(row["budget"], {})[row["method"]] = row
        return rows

    def best(rows: dict[str, dict]) -> dict:
        return max((row for method, row in rows.items() if method != "dirichlet"), key=lambda row: row["test_finetuned"])

    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    resnet20, small = by_budget("resnet20"), by_budget("small-resnet")
    # "on ResNet-20 level with Torch-Pruning's best at 50% FLOPs after one fine-tune epoch (70.1%
    # against magnitude's 69.9%) and ahead at 30% (43.6% against 32.6%)"
    half = resnet20[0.5]
    assert best(half)["method"] == "tp-magnitude"
    assert abs(half["dirichlet"]["test_finetuned"] - best(half)["test_finetuned"]) < 0.01
    assert f"({pct(half['dirichlet']['test_finetuned'])} against magnitude's {pct(best(half)['test_finetuned'])})" in text
    for rows in (resnet20[0.3], small[0.3]):
        assert rows["dirichlet"]["test_finetuned"] > best(rows)["test_finetuned"]
        assert f"({pct(rows['dirichlet']['test_finetuned'])} against {pct(best(rows)['test_finetuned'])})" in text
    # "on a small BN ResNet ... 1.4 points behind magnitude at 50%"
    gap = best(small[0.5])["test_finetuned"] - small[0.5]["dirichlet"]["test_finetuned"]
    assert best(small[0.5])["method"] == "tp-magnitude" and f"{100 * gap:.1f} points behind magnitude at 50%" in text
    # "The fit costs minutes where Torch-Pruning's criteria cost about a second"
    seconds = [(method, row["seconds_to_pruned"]) for rows in (*resnet20.values(), *small.values())
               for method, row in rows.items()]
    assert all(s >= 60 for method, s in seconds if method == "dirichlet")
    assert all(s < 5 for method, s in seconds if method != "dirichlet")


def test_the_coverage_counts_are_the_committed_json():
    coverage = json.loads((ROOT / "benchmarks" / "results" / "coverage.json").read_text())
    totals = coverage["totals"]
    sources = [entry["source"] for entry in coverage["models"]]
    assert len(sources) == totals["models"]
    assert (f"of {totals['models']} networks ({sources.count('torchvision')} torchvision classification builders "
            f"and the {sources.count('registry')} registered models), "
            f"{totals['raise']} prune with every layer followed and {totals['skip']} with the layers the analysis "
            f"cannot follow left whole; Torch-Pruning 1.6 runs on {totals['torch_pruning']}") in headlines()


def test_the_timm_and_transformers_counts_are_the_committed_jsons():
    results = ROOT / "benchmarks" / "results"
    timm = json.loads((results / "coverage_timm.json").read_text())["totals"]
    hf = json.loads((results / "coverage_transformers.json").read_text())
    assert (f"Of {timm['models']} timm families, {timm['raise']} and {timm['skip']} "
            f"(Torch-Pruning {timm['torch_pruning']})") in headlines()
    totals = hf["totals"]
    assert totals["raise"] == totals["models"] == 13
    assert (f"of {totals['models']} Hugging Face transformers models") in headlines()
    assert f"all {totals['raise']} with every layer followed" in headlines()
    assert f"(Torch-Pruning {totals['torch_pruning']})" in headlines()
    with_heads = sum(entry["ours"]["skip"]["head_sites"] > 0 for entry in hf["models"])
    assert f"the attention heads of {with_heads}" in headlines()
