"""benchmarks.precision on a tiny LeNet-5 workload: every pass timed in both precisions, ratios from the repeats."""

from __future__ import annotations

import json

import pytest

from benchmarks import precision


def test_precision_benchmark_times_every_pass_in_both_precisions(mnist, monkeypatch, tmp_path, one_thread):
    monkeypatch.setitem(precision.NETWORKS, "lenet5", (256, 64, 55000))
    out = tmp_path / "precision.json"
    assert precision.main(["--models", "lenet5", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    model = result["models"]["lenet5"]
    assert model["images"] == 256 and model["full_epoch_images"] == 55000
    expected = {"train", "train_cpu", "svi", "svi_cpu", "calibration", "calibration_cpu", "inference_batch1", "inference_batch256"}
    assert set(model["passes"]) == expected
    for name, row in model["passes"].items():
        assert all(len(row["seconds"][p]) == 2 and min(row["seconds"][p]) > 0 for p in ("fp32", "bf16")), name
        ratios = sorted(b / f for b, f in zip(row["seconds"]["bf16"], row["seconds"]["fp32"]))
        assert row["bf16_over_fp32"] == pytest.approx(sum(ratios) / 2), name  # the median of two
    # Training and SVI are scaled from 256 images to the full 55,000-image epoch.
    assert model["passes"]["train"]["median"]["fp32"] > 55000 / 256 * 0.001
    assert "finetune" not in result and result["machine"]["threads"] == 1


def test_precision_benchmark_refuses_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as stop:
        precision.main(["--models", "lenet6"])
    assert stop.value.code == 2 and "--models" in capsys.readouterr().err
