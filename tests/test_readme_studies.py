"""README's study figures come from the committed JSON the current study code writes."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.criteria import readme_tables

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ROOT / "analysis" / "results" / "lenet5-mnist" / "criteria.json"


def test_readme_criteria_tables_are_the_committed_json():
    result = json.loads(CRITERIA.read_text())
    # The current protocol: every criterion calibrated too, and the rows the README discusses.
    assert result["stages"][:2] == ["pruned", "calibrated"]
    assert {"dirichlet mean + fold", "dirichlet mean, no fold", "l1-norm", "random", "taylor"} <= {
        row["criterion"] for row in result["rows"]}
    assert len(result["seeds"]) == 3
    readme = (ROOT / "README.md").read_text()
    assert readme_tables(result) in readme, "README's criteria tables differ from readme_tables(criteria.json)"


def test_readme_tables_bold_only_differences_beyond_two_standard_errors():
    rows = [{"seed": s, "budget": "b", "criterion": c, "test_pruned": p}
            for s, (a, b, n) in enumerate([(0.60, 0.50, 0.40), (0.62, 0.50, 0.60), (0.61, 0.50, 0.35)])
            for c, p in (("dirichlet mean + fold", a), ("l1-norm", b), ("dirichlet mean, no fold", n))]
    summary = [{"budget": "b", "criterion": c, "pruned_mean": 0.5} for c in ("dirichlet mean + fold", "l1-norm")]
    tables = readme_tables({"stages": ["pruned"], "summary": summary, "rows": rows, "budgets": {"b": {}}})
    assert "| b | dirichlet mean + fold − l1-norm | **+11.0 ± 0.6** |" in tables
    assert "| b | dirichlet mean, no fold − l1-norm | -5.0 ± 7.6 |" in tables  # within 2 se: not bold
    assert "− random" not in tables  # rows not in the run are left out
