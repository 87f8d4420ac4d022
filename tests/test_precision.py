"""bf16 autocast where asked (or where the hardware has it), fp32 untouched, on real networks and real MNIST."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from pyro_dirichlet.repair.calibrate import CalibrationConfig, calibrate
from pyro_dirichlet.infer.fit import FitConfig, network_context
from pyro_dirichlet.measure import accuracy, latency_seconds
from pyro_dirichlet.models import LeNet5Caffe
from pyro_dirichlet.precision import PRECISIONS, autocast, check_precision, native_bf16, resolve_precision
from pyro_dirichlet.surgery import prune_channels
from pyro_dirichlet.repair.train import TrainConfig, finetune, train_classifier


def test_precision_names_are_checked_and_resolved():
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(ValueError, match=r"^precision must be one of auto, fp32, bf16, got 'fp16'\.$"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="FitConfig.precision"):
        FitConfig(precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="half")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert not native_bf16("meta")


def test_bf16_runs_matrix_products_in_bfloat16_and_fp32_enters_no_autocast():
    layer = nn.Linear(4, 3)
    inputs = torch.randn(2, 4)
    with autocast("bf16", "cpu") as resolved:
        assert resolved == "bf16" and layer(inputs).dtype == torch.bfloat16
    with autocast("fp32", "cpu") as resolved:
        assert resolved == "fp32" and not torch.is_autocast_enabled("cpu")
        assert layer(inputs).dtype == torch.float32
    # The older FitConfig spelling still means bf16; precision alone says the same.
    for config in (FitConfig(autocast="bf16"), FitConfig(precision="bf16")):
        with network_context(config, "cpu"):
            assert layer(inputs).dtype == torch.bfloat16


def test_fp32_never_enters_autocast(monkeypatch, mnist_small, one_thread):
    """fp32 is the computation as it was before precision existed: no autocast anywhere on its path."""

    def refuse(*args, **kwargs):
        raise AssertionError("fp32 entered torch.autocast")

    data = mnist_small.subset(train=256, validation=128, test=128, seed=0)
    torch.manual_seed(0)
    net = LeNet5Caffe()
    monkeypatch.setattr(torch, "autocast", refuse)
    train_classifier(net, data, TrainConfig(epochs=1, precision="fp32"), progress=False)
    accuracy(net, data.test, precision="fp32")
    latency_seconds(net, data.test.images[:8], repeats=1, precision="fp32")
    calibrate(net, data.train, data.train.images[:2], CalibrationConfig(steps=2, precision="fp32"))
    with network_context(FitConfig(), "cpu"):
        net(data.test.images[:2])


@pytest.mark.slow
def test_bf16_training_finetuning_and_calibration_of_lenet5_match_fp32(mnist_small, one_thread):
    data = mnist_small.subset(train=3000, validation=1000, test=1000, seed=0)
    trained = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = LeNet5Caffe()
        result = train_classifier(net, data, TrainConfig(epochs=2, lr=3e-3, precision=precision, seed=0), progress=False)
        assert all(parameter.dtype == torch.float32 for parameter in net.parameters())
        assert isinstance(result.train_loss[0], float)
        trained[precision] = net
    fp32 = accuracy(trained["fp32"], data.test)
    bf16 = accuracy(trained["bf16"], data.test, precision="bf16")
    assert fp32 > 0.9 and bf16 > 0.9
    # Measured: 2 epochs on 3,000 images, 93.6% in fp32, 93.8% in bf16; 1.5 points leaves room for other CPUs.
    assert abs(bf16 - fp32) < 0.015, (fp32, bf16)
    # The same network scored in both precisions: bf16 rounding flips few arg-maxes.
    assert abs(accuracy(trained["fp32"], data.test, precision="bf16") - fp32) < 0.005

    # Pruned to half its channels, fine-tuned and calibrated in bf16: it works and stays float32.
    example = data.train.images[:2]
    small = prune_channels(trained["fp32"], {"conv1": list(range(10)), "conv2": list(range(25)), "fc1": list(range(250))},
                           example)
    before = accuracy(small, data.test, precision="bf16")
    finetune(small, data, epochs=1, precision="bf16", progress=False)
    assert accuracy(small, data.test, precision="bf16") >= before - 0.01
    calibrated = calibrate(small, data.train, example, CalibrationConfig(steps=20, precision="bf16"))
    assert calibrated.loss_after <= calibrated.loss_before
    assert all(scale.dtype == torch.float32 for scale in calibrated.scales.values())


def test_the_cli_records_the_precision_it_resolved(small_run):
    manifest = json.loads((small_run / "run.json").read_text())
    expected = resolve_precision("auto", "cpu")
    for step in ("train", "fit", "prune", "finetune"):
        record = manifest["steps"][step]
        assert record["config"]["precision"] == "auto", step
        assert record["result"]["precision"] == expected, step
    assert manifest["steps"]["fit"]["config"]["fit"]["precision"] == expected
    report = json.loads((small_run / "report.json").read_text())
    assert report["latency"]["precision"] == expected
