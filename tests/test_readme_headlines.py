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


def test_the_ranking_summary_is_the_committed_study():
    records = {name: json.loads((ROOT / "analysis" / "results" / "ranking-quality" / f"{name}.json").read_text())
               for name in ("head-resnet", "resnet20", "lenet5")}
    text = headlines()
    assert "on one of three networks (the head ResNet) and behind both on ResNet-20 and LeNet-5" in text
    for name, record in records.items():
        spearman = {criterion: row["spearman_mean"] for criterion, row in record["criteria"].items()}
        cheap = (spearman["l1-norm"], spearman["taylor"])
        if name == "head-resnet":
            assert spearman["default"] > max(cheap), name
        else:
            assert spearman["default"] < min(cheap), name
    # "One gain per channel ranks ResNet-20 ahead of L1-norm (+0.19 against +0.11, three seeds) but ranked some never-firing units high"
    from analysis.ranking_summary import RESULTS, load_records, summarize

    resnet20 = summarize(load_records(RESULTS))["resnet20"]["criteria"]
    channel, l1 = resnet20["channel-gain"]["spearman_mean"], resnet20["l1-norm"]["spearman_mean"]
    assert channel["n"] == 3 and f"(+{channel['mean']:.2f} against +{l1['mean']:.2f}, three seeds)" in text
    assert records["head-resnet"]["criteria"]["channel-gain"]["dead_recall"]["fc1"] < 1.0
    # "lifts ResNet-20's calibrated accuracy over the default by 2.4 ± 0.7 and 7.8 ± 1.2 points"
    versus = summarize(load_records(RESULTS))["resnet20"]["versus"]["layer-adam"]["default"]["calibrated"]
    half, tight = (versus[budget] for budget in ("50% FLOPs", "30% FLOPs"))
    assert half["n"] == 3 and (f"by {100 * half['mean']:.1f} ± {100 * half['se']:.1f} and "
                               f"{100 * tight['mean']:.1f} ± {100 * tight['se']:.1f} points") in " ".join(text.split())


def test_the_torch_pruning_summary_is_the_committed_json():
    result = json.loads((ROOT / "benchmarks" / "results" / "versus_torch_pruning.json").read_text())
    text = headlines()
    assert "one seed, reduced data" in text

    def by_budget(network: str) -> dict[float, dict[str, dict]]:
        rows: dict[float, dict[str, dict]] = {}
        for row in result["networks"][network]["summary"]:
            assert row["seeds"] == 1
            rows.setdefault(row["budget"], {})[row["method"]] = row
        return rows

    # "within a point of the best Torch-Pruning importance, or ahead, on a small BN ResNet"
    for rows in by_budget("small-resnet").values():
        best = max(row["test_finetuned"] for method, row in rows.items() if method != "dirichlet")
        assert rows["dirichlet"]["test_finetuned"] >= best - 0.01
    # "behind on ResNet-20"
    for rows in by_budget("resnet20").values():
        best = max(row["test_finetuned"] for method, row in rows.items() if method != "dirichlet")
        assert rows["dirichlet"]["test_finetuned"] < best
    # "The fit costs minutes where Torch-Pruning's criteria cost about a second"
    seconds = [(method, row["seconds_to_pruned"]) for network in ("small-resnet", "resnet20")
               for rows in by_budget(network).values() for method, row in rows.items()]
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
