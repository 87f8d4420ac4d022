import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_dirichlet.infer.guide import DirichletGuide
from pyro_dirichlet.infer.switches import DirichletSwitches


def test_trace_has_one_switch_site_per_layer_with_the_layer_width(tiny_cnn, tiny_images):
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    labels = torch.zeros(16, dtype=torch.long)
    trace = poutine.trace(switches.model).get_trace(tiny_images, labels)
    sites = [name for name, node in trace.nodes.items() if node["type"] == "sample" and not site_is_subsample(node)]
    assert sites == ["conv1.switch", "conv2.switch", "fc1.switch", "obs"]
    for name, width in [("conv1.switch", 6), ("conv2.switch", 8), ("fc1.switch", 12)]:
        value = trace.nodes[name]["value"]
        assert value.shape == (width,)
        assert torch.allclose(value.sum(), torch.tensor(1.0))
        assert isinstance(trace.nodes[name]["fn"], dist.Dirichlet)
    assert trace.nodes["obs"]["is_observed"]


def test_network_is_unchanged_at_the_prior_mean(tiny_cnn, tiny_images):
    expected = tiny_cnn.eval()(tiny_images)
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    means = {layer.name: torch.full((layer.channels,), 1.0 / layer.channels) for layer in switches.layers}
    with switches.switched(means) as network:
        assert torch.allclose(network(tiny_images), expected, atol=1e-6)
    # and the hooks are gone afterwards
    assert all(not module._forward_hooks for module in tiny_cnn.modules())


def test_switch_scales_channels_by_value_times_width(tiny_cnn, tiny_images):
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2], layers=["conv1"])
    values = {"conv1": torch.tensor([0.5, 0.5, 0, 0, 0, 0])}  # channels 0, 1 scaled by 3, rest zeroed
    captured = {}
    tiny_cnn.conv1.register_forward_hook(lambda m, i, o: captured.setdefault("raw", o.detach()))
    seen = {}
    tiny_cnn.conv2.register_forward_pre_hook(lambda m, i: seen.setdefault("input", i[0].detach()))
    with switches.switched(values) as network:
        network(tiny_images)
    import torch.nn.functional as F

    raw = captured["raw"]
    scaled = raw * torch.tensor([3.0, 3, 0, 0, 0, 0]).view(1, -1, 1, 1)
    assert torch.allclose(seen["input"], F.max_pool2d(F.relu(scaled), 2))


def test_under_bf16_autocast_the_switch_multiplies_and_gets_its_gradient_in_float32(tiny_cnn, tiny_images):
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2], layers=["conv1"])
    value = torch.full((6,), 1 / 6, requires_grad=True)
    seen = {}
    tiny_cnn.conv2.register_forward_pre_hook(lambda m, i: seen.update(dtype=i[0].dtype))
    with switches.switched({"conv1": value}) as network, torch.autocast("cpu", dtype=torch.bfloat16):
        logits = network(tiny_images)
    # conv1's bf16 output times the float32 switch: float32 up to conv2 (which casts it back)
    assert seen["dtype"] == torch.float32
    logits.float().sum().backward()
    # the gradient summed in float32: not a bfloat16 value (8 significant bits) cast up
    assert value.grad.dtype == torch.float32 and value.grad.abs().sum() > 0
    assert not torch.equal(value.grad, value.grad.bfloat16().float())


def test_network_is_frozen(tiny_cnn, tiny_images):
    tiny_cnn.train()
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    assert not tiny_cnn.training
    assert all(not p.requires_grad for p in tiny_cnn.parameters())
    tiny_cnn.train()  # a user flips it back: the model call must not run in train mode
    switches.model(tiny_images, torch.zeros(16, dtype=torch.long))
    assert not tiny_cnn.training


def test_plate_scales_the_likelihood_to_the_data_size(tiny_cnn, tiny_images):
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    labels = torch.zeros(16, dtype=torch.long)
    trace = poutine.trace(switches.model).get_trace(tiny_images, labels, subsample=torch.arange(16), size=1600)
    assert trace.nodes["obs"]["scale"] == pytest.approx(100.0)


def test_guide_params_are_positive_with_the_layer_shapes(tiny_cnn, tiny_images):
    switches = DirichletSwitches(tiny_cnn, tiny_images[:2])
    guide = DirichletGuide(switches.layers, init_concentration=2.0)
    trace = poutine.trace(guide).get_trace(tiny_images)
    store = pyro.get_param_store()
    for name, width in [("conv1", 6), ("conv2", 8), ("fc1", 12)]:
        concentration = store[f"{name}.switch.concentration"]
        assert concentration.shape == (width,)
        assert torch.equal(concentration, torch.full((width,), 2.0))
        # stored unconstrained as log(concentration): positive whatever the optimiser does
        assert torch.allclose(store._params[f"{name}.switch.concentration"], torch.log(concentration))
        assert trace.nodes[f"{name}.switch"]["value"].shape == (width,)


def test_guide_rejects_bad_init():
    with pytest.raises(ValueError, match="init_concentration"):
        DirichletGuide([], init_concentration=0.0)


def test_closed_form_dirichlet_kl_matches_monte_carlo():
    q = dist.Dirichlet(torch.tensor([0.7, 2.0, 5.0, 1.3], dtype=torch.float64))
    p = dist.Dirichlet(torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64))
    torch.manual_seed(0)
    s = q.sample((400_000,))
    log_ratio = q.log_prob(s) - p.log_prob(s)
    mc, stderr = log_ratio.mean(), log_ratio.std() / len(s) ** 0.5
    assert abs(kl_divergence(q, p) - mc) < 4 * stderr


def test_coupled_group_gets_one_switch_shared_by_all_its_members():
    from pyro_dirichlet.models.wrn import WideResNet10x1

    torch.manual_seed(0)
    net = WideResNet10x1().eval()
    images = torch.randn(4, 3, 32, 32)
    expected = net(images)
    skip = DirichletSwitches(net, images[:2], coupled="skip")
    group = DirichletSwitches(net, images[:2])
    grouped = [layer for layer in group.layers if layer.is_group]
    assert grouped and {layer.name for layer in skip.layers} < {layer.name for layer in group.layers}
    # at the prior mean every member of the group is scaled by 1: the network is unchanged
    means = {layer.name: torch.full((layer.channels,), 1.0 / layer.channels) for layer in group.layers}
    with group.switched(means) as switched:
        assert torch.allclose(switched(images), expected, atol=1e-5)
    # zeroing the group's switch silences every member at once
    stream = grouped[0]
    seen = {}
    with group.switched({stream.name: torch.zeros(stream.channels)}) as switched:
        # registered after the switch hooks, so they see the switched outputs
        hooks = [dict(net.named_modules())[point].register_forward_hook(lambda m, i, o, p=point: seen.__setitem__(p, o.abs().max()))
                 for point in stream.switch_points]
        switched(images)
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(stream.switch_points) >= 2 and all(value == 0 for value in seen.values())


def test_a_reswitched_batchnorm_is_multiplied_by_the_same_switch():
    # A pre-activation stream (BN -> ReLU -> zero-padded conv): the switch multiplies the stream
    # and the BatchNorm that reads it; the switched network is the one the posterior is folded
    # into, and with the switch at zero it is the pruned one.
    from pyro_dirichlet.surgery import fold_scales, prune_channels
    from tests.test_surgery import PreActivation

    torch.manual_seed(0)
    net = PreActivation().eval()
    images = torch.randn(4, 3, 8, 8)
    switches = DirichletSwitches(net, images[:2])
    stream = switches.layers[0]
    assert stream.reswitch_points == ("bn1",)
    values = {stream.name: torch.tensor([0.3, 0.0, 0.2, 0.0, 0.1, 0.4])}
    with torch.no_grad(), switches.switched(values) as switched:
        got = switched(images)
    assert not torch.allclose(got, net(images), atol=1e-3)
    folded = fold_scales(net, {stream.name: values[stream.name] * stream.channels}, images[:2])
    pruned = prune_channels(folded, {stream.name: [0, 2, 4, 5]}, images[:2])
    with torch.no_grad():
        assert torch.allclose(got, folded(images), atol=1e-5)
        assert torch.allclose(got, pruned(images), atol=1e-5)
