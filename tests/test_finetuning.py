import dataclasses

import pytest
import torch

from pyro_dirichlet.models.lenet import LeNet300100
from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.repair.train import finetune
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.repair.train import TrainResult


@pytest.fixture(scope="module")
def small_mnist(mnist) -> DataSplits:
    return dataclasses.replace(
        mnist, train=mnist.train.subset(2000, seed=1), validation=mnist.validation.subset(1000, seed=1)
    )


def pruned_lenet300() -> LeNet300100:
    torch.manual_seed(0)
    return LeNet300100(fc1=30, fc2=30)


def test_finetune_trains_frozen_parameters_and_keeps_best_epoch(small_mnist):
    model = pruned_lenet300().eval().requires_grad_(False)
    before = model.fc1.weight.clone()
    untrained_accuracy = accuracy(model, small_mnist.validation)
    result = finetune(model, small_mnist, epochs=2, lr=3e-3, batch_size=32, progress=False)
    assert result.epochs == 2 and len(result.validation_accuracy) == 2
    assert not torch.equal(model.fc1.weight, before)
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert accuracy(model, small_mnist.validation) == result.validation_accuracy[result.best_epoch]
    assert result.best_validation_accuracy > max(0.8, untrained_accuracy + 0.5)
    assert model.training is False


def test_finetune_zero_epochs_is_a_no_op(small_mnist):
    model = pruned_lenet300()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    result = finetune(model, small_mnist, epochs=0, progress=False)
    assert result == TrainResult(epochs=0)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("argument, value", [("epochs", -1), ("lr", 0.0), ("batch_size", 0)])
def test_finetune_rejects_bad_arguments(small_mnist, argument, value):
    with pytest.raises(ValueError, match=argument):
        finetune(pruned_lenet300(), small_mnist, progress=False, **{argument: value})


def test_finetune_keeps_the_handed_over_weights_when_training_only_hurts(small_mnist):
    model = pruned_lenet300()
    finetune(model, small_mnist, epochs=2, lr=3e-3, batch_size=32, progress=False)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    good = accuracy(model, small_mnist.validation)
    result = finetune(model, small_mnist, epochs=1, lr=5.0, batch_size=32, progress=False)  # a destructive step size
    assert result.validation_accuracy[0] < good
    assert result.best_epoch == -1 and result.best_validation_accuracy == result.initial_validation_accuracy == good
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
