"""``python -m benchmarks.coverage`` on a registered model: the JSON's shape and its bad input."""

from __future__ import annotations

import json

from benchmarks.coverage import main


def test_coverage_checks_a_model_in_both_modes_and_writes_the_json(tmp_path, capsys):
    path = tmp_path / "coverage.json"
    assert main(["--models", "registered:lenet5", "--no-torch-pruning", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["totals"] == {
        "models": 1, "raise": 1, "skip": 1, "torch_pruning": 0, "torch_pruning_only": [], "not_in_raise_mode": [],
    }
    (entry,) = report["models"]
    assert entry["model"] == "registered:lenet5" and entry["source"] == "registry" and entry["input_shape"] == [2, 1, 28, 28]
    skip = entry["ours"]["skip"]
    assert skip["ok"] and skip["sites"] == 3 and skip["relative_difference"] <= 1e-4
    assert 0.2 < skip["params_kept"] < 0.3  # conv1, conv2 and fc1 halved: about a quarter of LeNet-5 is left
    assert "registered:lenet5      raise kept 0.25" in capsys.readouterr().out


def test_coverage_refuses_an_unknown_model_by_name(tmp_path, capsys):
    path = tmp_path / "coverage.json"
    assert main(["--models", "lenet5", "--json", str(path)]) == 2  # registered ones are "registered:lenet5"
    assert "--models names ['lenet5']" in capsys.readouterr().err
    assert not path.exists()
