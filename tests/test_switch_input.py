import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.models.lenet import LeNet5Caffe
from pyro_dirichlet.baselines.registry import get_model_entry
from pyro_dirichlet.structure import find_prunable_layers
from pyro_dirichlet.structure.placement import SwitchInput
from pyro_dirichlet.infer.switches import DirichletSwitches


def _inputs(layers):
    return {layer.name: layer.switch_input for layer in layers}


def test_lenet_switches_move_past_relu_pool_and_flatten():
    found = _inputs(find_prunable_layers(LeNet5Caffe(), torch.zeros(2, 1, 28, 28)))
    assert found["conv1"] == SwitchInput("conv2", 1, 1, ("relu", "max_pool2d"))
    # conv2's 50 channels reach fc1 flattened, 4 * 4 features each
    assert found["conv2"] == SwitchInput("fc1", 1, 16, ("relu_1", "max_pool2d_1", "flatten"))
    assert found["fc1"] == SwitchInput("fc2", 1, 1, ("relu_2",))


def test_batchnorm_switch_moves_past_relu_and_pool_to_the_next_conv():
    layers = find_prunable_layers(get_model_entry("vgg16").build(), torch.zeros(2, 3, 32, 32))
    first = layers[1]  # conv1_2 -> bn1_2 -> relu -> max-pool -> conv2_1
    assert first.switch_at == "bn1_2"
    assert first.switch_input.module == "conv2_1" and len(first.switch_input.passes) == 2


class _Branches(nn.Module):
    """Each hidden layer is followed by something the switch cannot move past."""

    def __init__(self) -> None:
        super().__init__()
        self.direct = nn.Conv2d(3, 4, 3)  # read straight by the next conv: nothing to move past
        self.bent = nn.Conv2d(4, 4, 3)  # GELU does not commute with a scale
        self.forked = nn.Conv2d(4, 4, 1)  # its ReLU output is read twice
        self.clipped = nn.Conv2d(4, 4, 1)  # ReLU6 clips at 6
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.bent(self.direct(x))
        x = self.forked(F.gelu(x))
        r = F.relu(x)
        x = self.clipped(self.left(r) + self.right(r))
        return self.fc(F.relu6(x).mean((2, 3)))


class _SharedActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3)
        self.second = nn.Conv2d(4, 4, 3)
        self.act = nn.GELU()  # one module, called after both convolutions
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act(F.relu(self.first(x)))
        x = self.act(self.second(x))
        return self.fc(x.mean((2, 3)))


def test_a_shared_module_never_takes_a_switch_on_its_input():
    torch.manual_seed(0)
    network = _SharedActivation().eval()
    images = torch.randn(2, 3, 10, 10)
    [first] = find_prunable_layers(network, images, ["first"])
    assert first.switch_input is None  # a pre-hook on `act` would scale its second call too
    moved, _ = _logits_and_grads(network, images, images, "input", "skip", None)
    kept, _ = _logits_and_grads(network, images, images, "output", "skip", None)
    assert torch.allclose(moved, kept)


class _Unshared(_SharedActivation):
    def __init__(self) -> None:
        super().__init__()
        self.act2 = nn.GELU()

    def forward(self, x):
        x = self.act(F.relu(self.first(x)))
        x = self.act2(self.second(x))
        return self.fc(x.mean((2, 3)))


def test_a_module_called_once_takes_the_switch_even_if_it_does_not_commute_itself():
    # scaling GELU's input is scaling the ReLU's output, which is what the switch does
    [first] = find_prunable_layers(_Unshared(), torch.zeros(2, 3, 10, 10), ["first"])
    assert first.switch_input == SwitchInput("act", 1, 1, ("relu",))


def test_switch_stays_at_the_output_when_something_does_not_commute():
    layers = find_prunable_layers(_Branches(), torch.zeros(2, 3, 12, 12), ["direct", "bent", "forked", "clipped"])
    assert all(layer.switch_input is None for layer in layers)


class _Views(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.token = nn.Linear(5, 6)
        self.fc = nn.Linear(3 * 2 * 2, 4)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        x = nn.functional.avg_pool2d(self.conv(x).relu(), 2)
        x = self.fc(x.view(x.size(0), -1))
        # a linear layer on (N, T, 5): its features are the last dimension
        t = F.relu(self.token(x.reshape(-1, 2, 2)[..., :1].expand(-1, 2, 5)))
        return self.out(t).mean(1) + x[:, :2]


def test_switch_moves_past_a_view_by_size_and_along_a_linear_layers_last_dimension():
    found = _inputs(find_prunable_layers(_Views(), torch.zeros(2, 1, 6, 6), ["conv", "token"]))
    assert found["conv"] == SwitchInput("fc", 1, 4, ("relu", "avg_pool2d", "view"))
    assert found["token"] == SwitchInput("out", 2, 1, ("relu_1",))


def test_scale_repeats_each_channel_over_its_flattened_features():
    point = SwitchInput("fc", 1, 2, ())
    values = torch.tensor([1.0, 3.0])
    assert point.scale(values, 2).tolist() == [[1.0, 1.0, 3.0, 3.0]]
    particles = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert point.scale(particles, 2).shape == (2, 1, 4)
    assert SwitchInput("c", 1, 1, ()).scale(values, 4).shape == (1, 2, 1, 1)


def _draws(switches, particles=None):
    generator = torch.Generator().manual_seed(1)
    draws = {}
    for layer in switches.layers:
        concentration = torch.rand(layer.channels, generator=generator) * 2 + 0.1
        shape = () if particles is None else (particles,)
        torch.manual_seed(len(draws))
        draws[layer.name] = dist.Dirichlet(concentration).sample(shape).requires_grad_()
    return draws


def _logits_and_grads(network, example, images, placement, coupled="skip", particles=None):
    switches = DirichletSwitches(network, example, placement=placement, coupled=coupled)
    draws = _draws(switches, particles)
    if particles is not None:
        images = images.expand(particles, *images.shape).flatten(0, 1)
    with switches.switched(draws) as switched:
        logits = switched(images)
    logits.square().sum().backward()
    return logits.detach(), {name: value.grad for name, value in draws.items()}


@pytest.mark.parametrize(
    "name, shape, coupled",
    [("lenet5", (1, 28, 28), "skip"), ("vgg16", (3, 32, 32), "skip"), ("resnet20", (3, 32, 32), "group")],
)
@pytest.mark.parametrize("particles", [None, 3])
def test_input_placement_gives_the_output_placements_logits_and_gradients(name, shape, coupled, particles, one_thread):
    torch.manual_seed(0)
    network = get_model_entry(name).build().eval()
    images = torch.randn(4, *shape)
    moved, moved_grads = _logits_and_grads(network, images[:2], images, "input", coupled, particles)
    kept, kept_grads = _logits_and_grads(network, images[:2], images, "output", coupled, particles)
    assert torch.allclose(moved, kept, rtol=1e-4, atol=1e-5)
    assert moved_grads.keys() == kept_grads.keys()
    for layer in moved_grads:
        assert torch.allclose(moved_grads[layer], kept_grads[layer], rtol=1e-3, atol=1e-5), layer


def test_placement_is_checked(tiny_cnn, tiny_images):
    with pytest.raises(ValueError, match="placement must be 'input' or 'output'"):
        DirichletSwitches(tiny_cnn, tiny_images[:2], placement="after")


def test_switch_moves_past_the_rows_of_the_op_table_that_commute_with_a_scale():
    import torchvision

    class Commuting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.prelu = nn.PReLU()
            self.drop_path = torchvision.ops.StochasticDepth(0.1, "row")
            self.next = nn.Conv2d(4, 2, 1)
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            x = self.drop_path(self.conv(x))
            x = F.dropout3d(self.prelu(x.abs()), 0.1, training=False)
            return self.fc(self.next(x).mean((2, 3)))

    # (fx names the abs node abs_1 so that it does not shadow the builtin)
    (found,) = [l for l in find_prunable_layers(Commuting(), torch.zeros(2, 3, 6, 6)) if l.name == "conv"]
    assert found.switch_input == SwitchInput("next", 1, 1, ("stochastic_depth", "abs_1", "prelu", "dropout3d"))


def test_switches_in_partial_mode_cover_every_followable_layer_and_list_the_rest():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Softmax(dim=1), nn.Conv2d(8, 6, 3), nn.ReLU(),
        nn.Conv2d(6, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )
    x = torch.randn(2, 3, 10, 10)
    with pytest.raises(ValueError, match=r"layer '0' through module '1' \(Softmax\)"):
        DirichletSwitches(net, x)
    switches = DirichletSwitches(net, x, on_unsupported="skip")
    assert [layer.name for layer in switches.layers] == ["2", "4"]
    assert [(s.name, s.unsupported) for s in switches.layers.skipped] == [("0", True), ("6", False)]
    import pyro

    trace = pyro.poutine.trace(switches.model).get_trace(x, torch.zeros(2, dtype=torch.long))
    assert {name for name in trace.nodes if name.endswith(".switch")} == {"2.switch", "4.switch"}
