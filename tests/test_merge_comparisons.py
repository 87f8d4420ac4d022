"""Parts of one ResNet-20 comparison, run as separate processes, join into what one process reports."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import cifar_shaped, random_resnet20

from analysis.merge_comparisons import main, merge
from analysis.resnet20_cifar10 import GAIN_METHOD, Protocol, run

CRITERIA = (GAIN_METHOD, "l1-norm", "random")


@pytest.fixture(scope="module")
def network():
    return random_resnet20()


def _run(network, seeds, shares):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        protocol = Protocol(seeds=seeds, flop_budgets=shares, keep_ratios=(), criteria=CRITERIA, finetune_epochs=1)
        result = run(network, cifar_shaped(), protocol, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    result["weights"] = {"sha256": "0" * 64}
    return result


def _untimed(row: dict) -> dict:
    return {key: value for key, value in row.items() if not key.endswith("seconds")}


@pytest.fixture(scope="module")
def whole_and_parts(network):
    whole = _run(network, (0, 1), (0.5, 0.3))
    parts = [_run(network, (seed,), (share,)) for share in (0.3, 0.5) for seed in (1, 0)]  # any order
    return whole, parts


@pytest.mark.slow  # four small comparisons and a whole one
def test_parts_merge_into_the_comparison_one_process_makes(whole_and_parts):
    whole, parts = whole_and_parts
    merged = merge(parts)
    assert list(map(_untimed, merged["rows"])) == list(map(_untimed, whole["rows"]))
    assert merged["summary"] == whole["summary"] and merged["paired"] == whole["paired"]
    assert merged["budgets"] == whole["budgets"] and merged["finetuned"] == whole["finetuned"]
    assert merged["protocol"]["seeds"] == [0, 1] and sorted(merged["protocol"]["flop_budgets"]) == [0.3, 0.5]
    assert merged["complete"] and merged["parts"] == 4 and merged["seconds"] == max(p["seconds"] for p in parts)
    assert any(p["se"] is not None for p in merged["paired"])  # two seeds give standard errors no part has alone


@pytest.mark.slow
def test_parts_split_by_criterion_merge_with_their_paired_differences(whole_and_parts):
    # One process fine-tunes the gain row while another fine-tunes the rest, as on a 2-core CPU.
    whole, _ = whole_and_parts
    parts = []
    for criteria in ((GAIN_METHOD,), CRITERIA[1:]):
        part = copy.deepcopy(whole)
        part["protocol"]["criteria"] = list(criteria)
        part["rows"] = [row for row in part["rows"] if row["criterion"] in criteria]
        parts.append(part)
    merged = merge(parts)
    assert list(map(_untimed, merged["rows"])) == list(map(_untimed, whole["rows"]))
    assert merged["protocol"]["criteria"] == list(CRITERIA)
    assert merged["paired"] == whole["paired"] and merged["summary"] == whole["summary"]
    assert {p["versus"] for p in merged["paired"]} == {"l1-norm", "random"}


@pytest.mark.slow
def test_parts_that_do_not_belong_together_are_refused_by_name(whole_and_parts):
    _, parts = whole_and_parts
    with pytest.raises(ValueError, match="no parts"):
        merge([])
    with pytest.raises(ValueError, match=r"b\.json: row \(1, '30% FLOPs', 'dirichlet mean \+ gain \+ fold'\) is in a\.json too"):
        merge([parts[0], copy.deepcopy(parts[0])], ["a.json", "b.json"])
    other = copy.deepcopy(parts[1])
    other["weights"]["sha256"] = "1" * 64
    with pytest.raises(ValueError, match="part 1: comes from other weights"):
        merge([parts[0], other])
    other = copy.deepcopy(parts[1])
    other["protocol"]["finetune_lr"] = 0.1
    with pytest.raises(ValueError, match="protocol differs"):
        merge([parts[0], other])
    other = copy.deepcopy(parts[1])
    other["budgets"]["30% FLOPs"] = {name: count + 1 for name, count in other["budgets"]["30% FLOPs"].items()}
    with pytest.raises(ValueError, match="budget '30% FLOPs' keeps other counts"):
        merge([parts[0], other])
    other = copy.deepcopy(parts[1])
    other["baseline"]["test_accuracy"] += 0.01
    with pytest.raises(ValueError, match="baseline test_accuracy"):
        merge([parts[0], other])


@pytest.mark.slow
def test_a_part_stopped_early_joins_and_marks_the_whole_incomplete(whole_and_parts, tmp_path):
    _, parts = whole_and_parts
    stopped = copy.deepcopy(parts[3])
    stopped["complete"] = False
    for row in stopped["rows"]:
        for key in ("test_finetuned", "validation_finetuned", "finetune_seconds"):
            row.pop(key, None)
    paths = []
    for index, part in enumerate([*parts[:3], stopped]):
        paths.append(tmp_path / f"part{index}.json")
        paths[-1].write_text(json.dumps(part))
    assert main([*map(str, paths), "--out", str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert not merged["complete"] and len(merged["rows"]) == 4 * len(CRITERIA)
    assert "| 50% FLOPs |" in (tmp_path / "out" / "comparison.md").read_text()


def test_the_cli_refuses_an_unreadable_part_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "part.json"
    bad.write_text("{not json")
    assert main([str(bad), "--out", str(tmp_path / "out")]) == 2
    assert f"part {bad} cannot be read as JSON" in capsys.readouterr().err
    bad.write_text("[1, 2]")
    assert main([str(bad), "--out", str(tmp_path / "out")]) == 2
    assert f"part {bad} holds a JSON list, not a comparison" in capsys.readouterr().err
    bad.write_text(json.dumps({"model": "resnet20"}))
    assert main([str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "do not make one comparison: a part lacks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
