"""The ranking study's metrics, and the table of docs/results.md kept equal to the committed JSON."""

import json
from pathlib import Path

import pytest
import torch

from analysis.ranking_quality import dead_recall, markdown, spearman

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "analysis" / "results" / "ranking-quality"


def test_spearman_is_one_for_a_monotone_map_and_minus_one_reversed():
    x = torch.tensor([0.3, 1.0, -2.0, 5.0])
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_dead_recall_counts_inert_channels_below_every_useful_one():
    cost = torch.tensor([0.0, 0.5, 0.0, 0.2, 1e-5])  # channels 0 and 2 inert, 4 negligible
    inert = torch.tensor([True, False, True, False, False])
    assert dead_recall(torch.tensor([0.0, 3.0, 0.1, 2.0, 0.05]), inert, cost) == 1.0  # 0, 4, 2 lowest: fine
    assert dead_recall(torch.tensor([0.0, 3.0, 9.0, 2.0, 0.05]), inert, cost) == 0.5
    assert dead_recall(torch.ones(5), torch.zeros(5, dtype=torch.bool), cost) is None


def test_results_page_table_is_the_committed_study():
    records = [json.loads((RESULTS / f"{name}.json").read_text()) for name in ("head-resnet", "resnet20", "lenet5")]
    assert markdown(records) in (ROOT / "docs" / "results.md").read_text()
    head, resnet20 = records[0]["criteria"], records[1]["criteria"]
    assert head["default"]["dead_recall"]["fc1"] == 1.0 and head["paper"]["dead_recall"]["fc1"] < 0.5
    assert head["channel-gain"]["dead_recall"]["fc1"] < 1.0  # a gain per channel under plain Adam: why LayerAdam too
    # the default fit converges by the rule, and a fit twice as long keeps at least 0.9 of its channels
    assert resnet20["default"]["convergence"]["converged"] and resnet20["default"]["overlap_with_twice_as_long"] >= 0.9


def test_summary_pairs_criteria_by_seed_and_gives_the_standard_error_of_the_differences():
    from analysis.ranking_summary import markdown as summary_markdown
    from analysis.ranking_summary import summarize

    def record(seed, posterior, l1, random):
        def row(accuracy):
            scores = {"conv": [accuracy, 1.0, 2.0 + seed * (accuracy < 0.45)]}  # random's order changes with the seed
            return {"spearman_mean": accuracy, "calibrated": {"50% FLOPs": {"validation": accuracy}}, "scores": scores}
        return {"network": "net", "seed": seed, "criteria": {"default": row(posterior), "l1-norm": row(l1), "random": row(random)}}

    # Differences to L1 per seed: +0.02, +0.04, +0.06 -> mean 0.04, sd 0.02, se 0.02 / sqrt(3).
    summary = summarize({"net": [record(0, 0.52, 0.50, 0.40), record(1, 0.54, 0.50, 0.41), record(2, 0.56, 0.50, 0.30)]})
    versus = summary["net"]["versus"]["default"]["l1-norm"]["calibrated"]["50% FLOPs"]
    assert versus["mean"] == pytest.approx(0.04) and versus["se"] == pytest.approx(0.02 / 3 ** 0.5) and versus["n"] == 3
    assert "fine_tuned" not in summary["net"]["versus"]["default"]["l1-norm"]  # nothing measured, nothing claimed
    assert summary["net"]["criteria"]["random"]["calibrated"]["50% FLOPs"]["mean"] == pytest.approx(0.37)
    assert summary["net"]["criteria"]["l1-norm"]["seed_agreement"] == pytest.approx(1.0)
    assert "| net | default | l1-norm | 3 | +4.0 ± 1.2 | - |" in summary_markdown(summary)


def test_the_committed_summary_is_what_the_records_give_and_the_results_page_shows_it():
    from analysis.ranking_summary import load_records, summarize
    from analysis.ranking_summary import markdown as summary_markdown

    summary = summarize(load_records(RESULTS))
    committed = json.loads((RESULTS / "summary.json").read_text())
    assert json.loads(json.dumps(summary)) == committed  # regenerating changes nothing
    assert summary_markdown(summary) in (ROOT / "docs" / "results.md").read_text()
