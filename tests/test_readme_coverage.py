"""The coverage figures of docs/architectures.md are those of the committed ``benchmarks/results/coverage.json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def section() -> str:
    text = (ROOT / "docs" / "architectures.md").read_text()
    start = text.index("## Coverage: torchvision and timm")
    return text[start:text.index("\n## ", start + 1)]


def coverage() -> dict:
    return json.loads((ROOT / "benchmarks/results/coverage.json").read_text())


def test_the_totals_row_is_the_jsons():
    totals = coverage()["totals"]
    row = re.search(r"^\| all \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", section(), re.M)
    assert row, "the coverage totals row of docs/architectures.md is missing"
    assert [int(v) for v in row.groups()] == [totals["models"], totals["raise"], totals["skip"], totals["torch_pruning"]]


def test_every_model_row_is_the_jsons():
    entries = {entry["model"]: entry for entry in coverage()["models"]}
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| (\d\.\d{3}) \| (\d\.\d{3}|fails) \|$", section(), re.M)
    assert len(rows) >= 7
    for name, sites, kept, theirs in rows:
        skip, tp = entries[name]["ours"]["skip"], entries[name]["torch_pruning"]
        assert int(sites) == skip["sites"] and skip["ok"], name
        assert kept == f"{skip['params_kept']:.3f}", name
        assert theirs == (f"{tp['params_kept']:.3f}" if tp.get("ok") else "fails"), name


def test_every_model_torch_pruning_alone_prunes_is_explained():
    text = section()
    for name in coverage()["totals"]["torch_pruning_only"]:
        assert f"`{name}`" in text, f"docs/architectures.md does not say why {name} is pruned by Torch-Pruning only"


def test_the_claim_that_torch_pruning_prunes_nothing_more_holds():
    if "Every model Torch-Pruning prunes, this project prunes too" in section():
        assert coverage()["totals"]["torch_pruning_only"] == []
