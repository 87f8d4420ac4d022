"""The benchmark suite (``python -m benchmarks``): its quick run's JSON, and the plain-torch step it compares Pyro with."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from benchmarks import BARS, TorchSVI, judge
from benchmarks.__main__ import main
from pyro_dirichlet.data import Split
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.measure import peak_memory_bytes
from pyro_dirichlet.infer.switches import DirichletSwitches


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_suite_writes_one_sane_json(tmp_path, capsys, restore_threads):
    path = tmp_path / "suite.json"
    assert main(["--quick", "--repeats", "1", "--json", str(path)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(path.read_text())
    assert json.loads(printed[-1]) == result
    assert any("bar " in line for line in printed)

    assert result["quick"] is True and result["device"] == "cpu" and result["threads"] == 1
    for name in ("lenet5", "vgg16"):
        epochs = result["epochs"][name]
        assert len(epochs["train_seconds"]) == len(epochs["svi_seconds"]) == 1
        assert epochs["train_seconds_median"] > 0 and epochs["svi_seconds_median"] > 0
        assert epochs["svi_over_train"] == pytest.approx(epochs["svi_seconds"][0] / epochs["train_seconds"][0])
        overhead = result["overhead"][name]
        assert overhead["svi_step_seconds_median"] > 0 and overhead["torch_step_seconds_median"] > 0
        assert -math.inf < overhead["pyro_overhead_fraction"] < 1
        inference = result["inference"][name]
        assert inference["parameters"]["pruned"] < inference["parameters"]["full"]
        assert inference["flops"]["pruned"] < inference["flops"]["full"]
        for variant in ("full", "pruned"):
            assert set(inference["seconds"][variant]) == set(inference["peak_bytes"][variant]) == {"1", "8"}
            assert all(seconds > 0 for seconds in inference["seconds"][variant].values())
            assert all(peak >= 0 for peak in inference["peak_bytes"][variant].values())
    assert result["inference"]["lenet5"]["parameters"] == {"full": 431080, "pruned": 9772}
    # Every switch of VGG-16: 13 convolutions and fc1.
    assert result["posterior"]["layers"] == 14 and result["posterior"]["channels"] == 4736
    assert result["posterior"]["total_seconds"] > 0
    assert set(result["bars_met"]) == {bar.figure for bar in BARS}
    assert result["bars_met"] == judge(result["figures"])


def test_plain_torch_step_is_the_step_fit_takes(tiny_cnn, one_thread):
    # The overhead benchmark is only fair if the plain-torch step computes what fit's step does.
    generator = torch.Generator().manual_seed(1)
    data = Split(torch.randn(16, 1, 14, 14, generator=generator), torch.randint(0, 3, (16,), generator=generator))
    # The benchmark's plain step is the paper's model: no gain, plain Adam at a constant rate.
    switches = DirichletSwitches(tiny_cnn, data.images[:2], gain="none")
    result = fit(switches, data, FitConfig(epochs=1, batch_size=16, seed=3, device="cpu", progress=False, lr_decay=1.0,
                                           optimizer="adam"))

    pyro.clear_param_store()
    torch.manual_seed(3)
    step = TorchSVI(switches, size=len(data))
    loss = step(data.images, data.labels)
    assert -loss == pytest.approx(result.elbo[0], rel=1e-5)
    for name, log_concentration in step.log_concentration.items():
        torch.testing.assert_close(log_concentration.detach().exp(), result.concentrations[name], rtol=1e-5, atol=1e-6)


def test_peak_memory_counts_the_tensors_held_at_once_inside_the_call():
    def two_buffers():
        first = torch.ones(1 << 20)  # 4 MiB each
        second = torch.ones(1 << 20)
        return (first + second).sum()  # a third 4 MiB buffer while both live

    assert peak_memory_bytes(two_buffers) == pytest.approx(12 << 20, abs=1024)
    assert peak_memory_bytes(lambda: None) == 0


def test_one_bar_system_judges_and_prints_both_harnesses():
    from analysis.reproduction import MAX_BASELINE_EPOCHS
    from benchmarks.bars import CORE_BARS, REPRODUCTION_BARS, SUITE_BARS, VGG_SPEED_BAR, Bar, bar_lines

    figures = {"total_seconds": 120.0, "baseline_test_accuracy": 0.985, "params_fraction": 0.02}
    assert judge(figures, CORE_BARS) == {"total_seconds": True, "baseline_test_accuracy": False, "params_fraction": True}
    assert judge({"vgg16_pyro_overhead": 0.2}) == judge({"vgg16_pyro_overhead": 0.2}, SUITE_BARS) == {"vgg16_pyro_overhead": False}
    lines = bar_lines(figures, CORE_BARS, per_run=[{"total_seconds": 110.0, "baseline_test_accuracy": 0.98, "params_fraction": 0.02}])
    assert len(lines) == 3 and "NOT MET" in lines[1] and "ok" in lines[0] and "110" in lines[0]
    assert VGG_SPEED_BAR.met(0.6) and not VGG_SPEED_BAR.met(0.59)
    median = {"error": 0.009, "flops_reduction": 12.0, "params_reduction": 39.0, "fit_and_finetune_in_baseline_epochs": 2.5}
    assert judge(median, REPRODUCTION_BARS) == {
        "error": True, "flops_reduction": True, "params_reduction": False, "fit_and_finetune_in_baseline_epochs": True}
    assert MAX_BASELINE_EPOCHS == 3.0
    with pytest.raises(ValueError, match="op must be one of"):
        Bar("x", "<", 1.0, "x")
