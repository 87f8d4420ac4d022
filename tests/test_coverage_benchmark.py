"""``python -m benchmarks.coverage`` on a registered model: the JSON's shape and its bad input."""

from __future__ import annotations

import json

import pytest

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


def test_update_replaces_the_rerun_rows_recomputes_the_totals_and_records_the_rerun(tmp_path, capsys):
    path = tmp_path / "coverage.json"
    assert main(["--models", "registered:lenet5", "registered:lenet300", "--no-torch-pruning", "--json", str(path)]) == 0
    full = json.loads(path.read_text())
    # a stale row, as an older full run would have left it
    full["models"][0]["ours"]["skip"]["params_kept"] = 0.99
    full["totals"]["skip"] = 0
    path.write_text(json.dumps(full))
    assert main(["--models", "registered:lenet5", "--no-torch-pruning", "--update", str(path)]) == 0
    updated = json.loads(path.read_text())
    assert [entry["model"] for entry in updated["models"]] == ["registered:lenet5", "registered:lenet300"]
    assert updated["models"][0]["ours"]["skip"]["params_kept"] < 0.3  # rerun
    assert updated["models"][1] == full["models"][1]  # left as the full run wrote it
    assert updated["totals"]["models"] == 2 and updated["totals"]["skip"] == 2
    assert updated["command"] == full["command"]
    (rerun,) = updated["reruns"]
    assert rerun["models"] == ["registered:lenet5"] and "--update" in rerun["command"]


def test_update_refuses_models_the_full_run_lacks_and_a_missing_file(tmp_path, capsys):
    path = tmp_path / "coverage.json"
    assert main(["--models", "registered:lenet5", "--no-torch-pruning", "--json", str(path)]) == 0
    before = path.read_text()
    assert main(["--models", "registered:lenet300", "--no-torch-pruning", "--update", str(path)]) == 2
    assert "has no rows for ['registered:lenet300']" in capsys.readouterr().err
    assert path.read_text() == before
    for argv in (["--update", str(path)], ["--models", "registered:lenet5", "--update", str(tmp_path / "none.json")]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2


def test_resume_keeps_the_rows_an_interrupted_run_wrote_and_measures_only_the_rest(tmp_path, capsys):
    path = tmp_path / "coverage.json"
    assert main(["--models", "registered:lenet5", "--no-torch-pruning", "--json", str(path)]) == 0
    first = json.loads(path.read_text())
    first["models"][0]["ours"]["skip"]["params_kept"] = 0.123  # marks the row as the earlier run's
    first["complete"] = False
    path.write_text(json.dumps(first))
    capsys.readouterr()
    assert main(["--models", "registered:lenet5", "registered:lenet300", "--no-torch-pruning", "--json", str(path), "--resume"]) == 0
    report = json.loads(path.read_text())
    assert [entry["model"] for entry in report["models"]] == ["registered:lenet5", "registered:lenet300"]
    assert report["models"][0]["ours"]["skip"]["params_kept"] == 0.123  # kept, not measured again
    assert "complete" not in report and report["totals"]["models"] == 2
    assert "registered:lenet5 " not in capsys.readouterr().out


def test_the_table_renders_each_row_and_fills_the_missing_ones_from_a_log(tmp_path, capsys):
    from benchmarks.coverage_table import main as table

    path = tmp_path / "coverage.json"
    assert main(["--models", "registered:lenet5", "--no-torch-pruning", "--json", str(path)]) == 0
    log = tmp_path / "run.log"
    log.write_text(
        "registered:lenet5      skip  kept 0.900 diff 1.0e-07 sites   1 unsupported   1  TP fails  1s\n"
        "timm:big               stopped at the time limit (90 s)\n"
        "timm:small             skip  kept 0.500 diff 2.0e-07 sites   3 unsupported   2  TP 0.250  5s\n"
    )
    capsys.readouterr()
    assert table([str(path), "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "| registered:lenet5 | raise | 0.25" in out  # the JSON's row, not the log's
    assert "| timm:small | skip (log) | 0.500 | 2.0e-07 | 3 | 2 | 0.250 |" in out
    assert "| timm:big (stopped at the time limit (90 s)) | no (log) |" in out
    assert "3 models: 1 prune in raise mode, 2 in skip mode; Torch-Pruning runs on 1" in out


def test_the_architectures_page_shows_the_committed_transformers_coverage():
    import json
    from pathlib import Path

    from benchmarks.coverage_table import render, rows

    root = Path(__file__).resolve().parents[1]
    report = json.loads((root / "benchmarks" / "results" / "coverage_transformers.json").read_text())
    table = render(rows(report))
    assert "13 models: 13 prune in raise mode, 13 in skip mode" in table
    assert table in (root / "docs" / "architectures.md").read_text()
