"""The optimiser wrappers fit hands to pyro.infer.SVI: skipping non-finite steps, all-reducing gradients."""

import pyro
import pyro.optim
import pytest
import torch
import torch.distributed as dist
from torch.distributions import constraints

from pyro_dirichlet.infer.distributed import AllReduceGradients, DataParallel
from pyro_dirichlet.infer.optim import SkipNonFinite


def param_with_grad(name, value, grad):
    param = pyro.param(name, torch.tensor(value), constraint=constraints.real).unconstrained()
    param.grad = torch.tensor(grad)
    return param


def test_skip_non_finite_steps_on_finite_gradients_and_skips_otherwise():
    optim = SkipNonFinite(pyro.optim.SGD({"lr": 0.5}))
    a = param_with_grad("a", [1.0, 2.0], [1.0, -2.0])
    optim([a])
    assert not optim.skipped and a.tolist() == [0.5, 3.0]

    b = param_with_grad("b", [1.0], [float("nan")])
    a.grad = torch.tensor([1.0, 1.0])
    optim([a, b])  # one bad gradient: no parameter moves
    assert optim.skipped and a.tolist() == [0.5, 3.0] and b.tolist() == [1.0]
    assert set(optim.get_state()) == {"a"}  # b never got an optimiser, its state stays clean


def test_wrapper_state_is_the_wrapped_optimisers():
    adam = pyro.optim.Adam({"lr": 0.1})
    optim = SkipNonFinite(adam)
    optim([param_with_grad("a", [1.0], [1.0])])
    assert optim.get_state().keys() == adam.get_state().keys() == {"a"}
    with pytest.raises(TypeError, match="optim must be a pyro.optim.PyroOptim"):
        SkipNonFinite(torch.optim.SGD)


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend in this torch build")
def test_all_reduce_weighs_gradients_in_name_order_before_the_step(tmp_path):
    # A group of one: the all-reduce is the identity, so what is left is the weight and the step.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduce = AllReduceGradients(pyro.optim.SGD({"lr": 1.0}), DataParallel(rank=0, world_size=1))
        reduce.weight = 0.25
        b, a = param_with_grad("b", [0.0], [4.0]), param_with_grad("a", [0.0, 0.0], [8.0, -4.0])
        reduce({b, a})
        assert a.tolist() == [-2.0, 1.0] and b.tolist() == [-1.0]
    finally:
        dist.destroy_process_group()
