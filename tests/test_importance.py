import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pyro_dirichlet.data import Split
from pyro_dirichlet.criteria import (
    CRITERIA,
    BatchNormScale,
    Criterion,
    L1Norm,
    RandomScores,
    Taylor,
    get_criterion,
    register_criterion,
)
from pyro_dirichlet.criteria.posterior import posterior_lower_bound, posterior_mean, top_k_probability
from pyro_dirichlet.posterior import sample_posterior
from pyro_dirichlet.structure import find_prunable_layers


def test_l1_norm_sums_each_filter(tiny_cnn, tiny_images):
    layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
    scores = L1Norm()(tiny_cnn, layers)
    assert torch.allclose(scores["conv2"][3], tiny_cnn.conv2.weight[3].abs().sum().double())
    assert torch.allclose(scores["fc1"], tiny_cnn.fc1.weight.abs().sum(1).double())
    assert {k: v.shape[0] for k, v in scores.items()} == {"conv1": 6, "conv2": 8, "fc1": 12}


def test_random_scores_are_seeded():
    layers = find_prunable_layers(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), torch.zeros(2, 4))
    assert torch.equal(RandomScores(seed=1)(None, layers)["0"], RandomScores(seed=1)(None, layers)["0"])
    assert not torch.equal(RandomScores(seed=1)(None, layers)["0"], RandomScores(seed=2)(None, layers)["0"])


def test_batchnorm_scale_reads_gamma_and_rejects_layers_without_bn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.ReLU(), nn.Linear(3, 2))
    net[1].weight.data = torch.tensor([0.5, -2.0, 1.0, 0.1])
    layers = find_prunable_layers(net, torch.zeros(2, 1, 6, 6))
    assert torch.allclose(BatchNormScale()(net, layers[:1])["0"], torch.tensor([0.5, 2.0, 1.0, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="'4' has no affine BatchNorm"):
        BatchNormScale()(net, layers)


def test_taylor_matches_a_hand_computed_score(tiny_cnn, tiny_images):
    layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
    labels = torch.arange(16) % 3
    data = Split(tiny_images, labels)
    scores = Taylor(batches=1, batch_size=16)(tiny_cnn, layers, data)
    captured = {}
    def grab(module, inputs, output):
        output.retain_grad()
        captured["a"] = output

    tiny_cnn.fc1.register_forward_hook(grab)
    torch.nn.functional.cross_entropy(tiny_cnn(tiny_images.requires_grad_(True)), labels, reduction="sum").backward()
    a = captured["a"]
    assert torch.allclose(scores["fc1"], (a * a.grad).abs().sum(0).double() / 16, rtol=1e-4)
    assert (scores["conv1"] >= 0).all() and scores["conv2"].shape == (8,)


def test_posterior_lower_bound_prefers_sure_channels():
    # channel 0: mean 0.5 with huge spread; channel 1: slightly lower mean, tightly known
    posterior = sample_posterior({"fc": torch.tensor([0.5, 40.0, 40.5])}, num_samples=4000)
    lower = posterior_lower_bound(posterior)["fc"]
    assert lower[1] > lower[0]


def test_top_k_probability_counts_how_often_each_channel_is_kept():
    # Channel 0 always dominates; channels 1 and 2 share the second place; 3 never makes it.
    posterior = sample_posterior({"fc": torch.tensor([200.0, 50.0, 50.0, 1.0])}, num_samples=2000, seed=0)
    scores = top_k_probability(posterior, {"fc": 2})["fc"]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert scores[1] + scores[2] == pytest.approx(1.0, abs=1e-6)
    assert 0.4 < scores[1] < 0.6
    assert scores[3] < 1e-6
    # A full-width budget keeps every channel in every draw.
    assert torch.allclose(top_k_probability(posterior, {"fc": 4})["fc"], torch.ones(4, dtype=torch.float64), atol=1e-6)


def test_top_k_probability_rejects_bad_counts():
    posterior = sample_posterior({"fc": torch.ones(4)}, num_samples=10)
    with pytest.raises(ValueError, match=r"counts\['fc'\] must be an integer in \[1, 4\]"):
        top_k_probability(posterior, {"fc": 5})
    with pytest.raises(ValueError, match="does not have"):
        top_k_probability(posterior, {"conv": 1})


def test_l1_ranking_imports_neither_pyro_nor_arviz():
    # A fresh interpreter: this test process has imported Pyro already.
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "import pyro_dirichlet.criteria as criteria\n"
        "from pyro_dirichlet.structure import find_prunable_layers\n"
        "net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))\n"
        "layers = find_prunable_layers(net, torch.zeros(2, 4))\n"
        "scores = criteria.get_criterion('l1-norm')(net, layers)\n"
        "assert scores['0'].shape == (5,)\n"
        "assert sorted(criteria.CRITERIA) and 'posterior-mean' in criteria.CRITERIA\n"
        "loaded = [m for m in ('pyro', 'arviz', 'xarray') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_every_registered_criterion_is_a_criterion_and_scores_each_channel(tiny_cnn, tiny_images):
    layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
    posterior = sample_posterior({l.name: torch.ones(l.channels) for l in layers}, num_samples=50, seed=0)
    data = Split(tiny_images, torch.arange(16) % 3)
    options = {
        "posterior-mean": {"posterior": posterior},
        "posterior-lower-bound": {"posterior": posterior},
        "top-k-probability": {"posterior": posterior, "counts": {l.name: 2 for l in layers}},
        "taylor": {"batches": 1, "batch_size": 8},
    }
    assert {"random", "l1-norm", "taylor", "posterior-mean", "posterior-lower-bound", "top-k-probability"} <= set(CRITERIA)
    for name in ("random", "l1-norm", "taylor", "posterior-mean", "posterior-lower-bound", "top-k-probability"):
        criterion = get_criterion(name, **options.get(name, {}))
        assert isinstance(criterion, Criterion)
        scores = criterion(tiny_cnn, layers, data)
        assert {k: v.shape for k, v in scores.items()} == {l.name: (l.channels,) for l in layers}, name


def test_posterior_mean_criterion_matches_the_function_and_rejects_unknown_layers():
    posterior = sample_posterior({"fc": torch.tensor([1.0, 3.0, 6.0])}, num_samples=200, seed=0)
    layers = find_prunable_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"layers \['0'\] have no switches in the posterior"):
        get_criterion("posterior-mean", posterior=posterior)(None, layers)
    assert posterior_mean(posterior)["fc"].argmax() == 2


def test_register_criterion_adds_one_class_and_get_criterion_rejects_unknown_names(tiny_cnn, tiny_images):
    @register_criterion("test-width")
    class Width:
        def __call__(self, network, layers, data=None):
            return {layer.name: torch.full((layer.channels,), float(layer.channels)) for layer in layers}

    try:
        layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
        assert get_criterion("test-width")(tiny_cnn, layers)["fc1"].tolist() == [12.0] * 12
        with pytest.raises(ValueError, match="criterion name 'l1-norm' is already registered to .*L1Norm"):
            register_criterion("l1-norm")(Width)
    finally:
        CRITERIA._entries.pop("test-width")
    with pytest.raises(ValueError, match="criterion name 'no-such' is not registered; known criteria: .*'l1-norm'"):
        get_criterion("no-such")


def test_taylor_criterion_rejects_missing_data(tiny_cnn, tiny_images):
    layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
    with pytest.raises(TypeError, match="taylor criterion needs data"):
        get_criterion("taylor")(tiny_cnn, layers)
    with pytest.raises(TypeError, match="data must yield"):
        get_criterion("taylor")(tiny_cnn, layers, [tiny_images])


def test_taylor_reads_a_dataloader_like_the_split_it_wraps(tiny_cnn, tiny_images):
    from torch.utils.data import DataLoader, TensorDataset

    layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
    labels = torch.arange(16) % 3
    # One batch holding everything: the order cannot matter, so both must agree exactly.
    from_split = get_criterion("taylor", batches=None, batch_size=16)(tiny_cnn, layers, Split(tiny_images, labels))
    loader = DataLoader(TensorDataset(tiny_images, labels), batch_size=16)
    from_loader = get_criterion("taylor", batches=None)(tiny_cnn, layers, loader)
    for name in from_split:
        torch.testing.assert_close(from_loader[name], from_split[name])


def test_posterior_criteria_come_from_one_registration_and_the_package_exports_them():
    from pyro_dirichlet import posterior_mean as exported
    from pyro_dirichlet.criteria import CRITERIA
    from pyro_dirichlet.criteria import posterior as module

    assert exported is posterior_mean is module.posterior_mean
    # Registered by name in pyro_dirichlet.criteria only: the module's classes carry no decorator.
    for name, factory in (("posterior-mean", module.PosteriorMean), ("posterior-lower-bound", module.PosteriorLowerBound),
                          ("top-k-probability", module.TopKProbability)):
        assert CRITERIA[name] is factory
    assert "register_criterion" not in Path(module.__file__).read_text()
