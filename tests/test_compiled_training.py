"""Training through torch.compile: the same training, full batches compiled, an eager fallback."""

from __future__ import annotations

import contextlib
import shutil
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from pyro_dirichlet.data import DataSplits, Split
from pyro_dirichlet.repair.compiled import CompiledForward
from pyro_dirichlet.repair.train import TrainConfig, train_classifier


def _data(train: int = 72) -> DataSplits:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(train + 32, 3, 8, 8, generator=generator)
    labels = (images[:, 0].mean((1, 2)) > 0).long()
    return DataSplits(train=Split(images[:train], labels[:train]), validation=Split(images[train:], labels[train:]),
                      test=Split(images[train:], labels[train:]), name="random", num_classes=2, input_shape=(3, 8, 8))


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))


def test_full_batches_run_compiled_and_a_smaller_last_batch_eagerly():
    torch._dynamo.reset()
    counter = CompileCounter()
    network = _network()
    forward = CompiledForward(network, batch_size=16, backend=counter)
    images = torch.randn(16, 3, 8, 8)
    torch.testing.assert_close(forward(images), network(images))
    forward(torch.randn(16, 3, 8, 8))
    assert counter.frame_count == 1  # one graph, traced once, reused for the second full batch
    forward(torch.randn(5, 3, 8, 8))
    assert counter.frame_count == 1  # the short batch did not recompile
    assert forward.failed is None


def test_a_compiler_failure_warns_once_and_trains_eagerly():
    torch._dynamo.reset()

    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    network = _network()
    forward = CompiledForward(network, batch_size=16, backend=broken)
    images = torch.randn(16, 3, 8, 8)
    with pytest.warns(RuntimeWarning, match="torch.compile failed, training eagerly instead"):
        out = forward(images)
    torch.testing.assert_close(out, network(images))
    assert "no C++ compiler here" in forward.failed
    with _no_warnings():
        forward(images)  # the next steps go straight to the eager module


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="Inductor needs a C++ compiler")
def test_compiled_training_ends_with_the_weights_of_eager_training():
    torch._dynamo.reset()
    data = _data()  # 72 examples: four full batches of 16 and a last batch of 8
    eager, compiled = _network(), _network()
    results = []
    with _no_warnings():
        for network, flag in ((eager, False), (compiled, True)):
            results.append(train_classifier(network, data, TrainConfig(epochs=2, batch_size=16, lr=1e-2, compile=flag),
                                            progress=False))
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert results[0].train_loss == pytest.approx(results[1].train_loss, rel=1e-4)
    # the compiled network is still the user's plain module: its state dict has no _orig_mod prefix
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_compile_is_off_by_default_and_never_part_of_a_cache_key():
    assert TrainConfig().compile is False
    assert TrainConfig(compile=True).to_dict() == TrainConfig().to_dict()
    with pytest.raises(ValueError, match="compile must be True or False"):
        TrainConfig(compile="yes")


@contextlib.contextmanager
def _no_warnings():
    """Any warning inside the block fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
