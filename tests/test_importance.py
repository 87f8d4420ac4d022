import pytest
import torch
from torch import nn

from pyro_dirichlet.data import Split
from pyro_dirichlet.importance import batchnorm_scale, l1_norm, posterior_lower_bound, random_scores, taylor, top_k_probability
from pyro_dirichlet.posterior import sample_posterior
from pyro_dirichlet.structure import find_prunable_layers


def test_l1_norm_sums_each_filter(tiny_cnn, tiny_images):
    layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
    scores = l1_norm(tiny_cnn, layers)
    assert torch.allclose(scores["conv2"][3], tiny_cnn.conv2.weight[3].abs().sum().double())
    assert torch.allclose(scores["fc1"], tiny_cnn.fc1.weight.abs().sum(1).double())
    assert {k: v.shape[0] for k, v in scores.items()} == {"conv1": 6, "conv2": 8, "fc1": 12}


def test_random_scores_are_seeded():
    layers = find_prunable_layers(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), torch.zeros(2, 4))
    assert torch.equal(random_scores(layers, seed=1)["0"], random_scores(layers, seed=1)["0"])
    assert not torch.equal(random_scores(layers, seed=1)["0"], random_scores(layers, seed=2)["0"])


def test_batchnorm_scale_reads_gamma_and_rejects_layers_without_bn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.ReLU(), nn.Linear(3, 2))
    net[1].weight.data = torch.tensor([0.5, -2.0, 1.0, 0.1])
    layers = find_prunable_layers(net, torch.zeros(2, 1, 6, 6))
    assert torch.allclose(batchnorm_scale(net, layers[:1])["0"], torch.tensor([0.5, 2.0, 1.0, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="'4' has no affine BatchNorm"):
        batchnorm_scale(net, layers)


def test_taylor_matches_a_hand_computed_score(tiny_cnn, tiny_images):
    layers = find_prunable_layers(tiny_cnn, tiny_images[:2])
    labels = torch.arange(16) % 3
    data = Split(tiny_images, labels)
    scores = taylor(tiny_cnn, layers, data, batches=1, batch_size=16)
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
