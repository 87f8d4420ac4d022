import dataclasses

import pytest
from conftest import shrink
import torch

import pyro_dirichlet.repair.train as training
from pyro_dirichlet.models.lenet import LeNet300100, LeNet5Caffe
from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.repair.train import TrainConfig, TrainResult, train_classifier


@pytest.fixture(scope="module")
def small_mnist(mnist) -> DataSplits:
    """Real MNIST cut to 2k train / 1k validation / 500 test examples."""
    return shrink(mnist, 2000, 1000, 500)


def seeded_lenet5(seed: int = 0) -> LeNet5Caffe:
    torch.manual_seed(seed)
    return LeNet5Caffe()


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


# --- TrainConfig ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", -1),
        ("epochs", 2.0),
        ("batch_size", 0),
        ("batch_size", True),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("lr", "0.1"),
        ("optimizer", "rmsprop"),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -1e-4),
        ("schedule", "step"),
        ("seed", 1.5),
    ],
)
def test_bad_config_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_defaults_and_dict():
    config = TrainConfig()
    assert config.to_dict() == {
        "epochs": 4,
        "batch_size": 128,
        "lr": 1e-3,
        "optimizer": "adam",
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "seed": 0,
    }


# --- training on real MNIST ----------------------------------------------------------


def test_one_epoch_on_2k_examples_learns(small_mnist):
    model = seeded_lenet5()
    result = train_classifier(model, small_mnist, TrainConfig(epochs=1, batch_size=32), progress=False)
    assert result.epochs == 1
    assert result.validation_accuracy[0] > 0.80
    assert result.best_epoch == 0
    assert len(result.train_loss) == 1 and 0.0 < result.train_loss[0] < 2.3
    assert len(result.seconds_per_epoch) == 1 and result.seconds_per_epoch[0] > 0.0
    assert result.to_dict()["validation_accuracy"] == result.validation_accuracy


def test_returned_model_holds_best_validation_epoch(small_mnist):
    torch.manual_seed(0)
    model = LeNet300100()
    config = TrainConfig(epochs=3, batch_size=64, optimizer="sgd", lr=0.05, schedule="constant")
    result = train_classifier(model, small_mnist, config, progress=False)
    best = max(result.validation_accuracy)
    assert result.best_epoch == result.validation_accuracy.index(best)
    assert accuracy(model, small_mnist.validation) == result.validation_accuracy[result.best_epoch]
    assert result.best_validation_accuracy == best


def test_best_epoch_weights_are_restored_not_the_last(small_mnist, monkeypatch):
    # The validation score is scripted so that epoch 1 is the best and epoch 2 is worse:
    # the model must come back with the weights it had right after epoch 1.
    scripted = iter([0.5, 0.9, 0.7])
    snapshots = []

    def scripted_accuracy(model, split, **kwargs):
        snapshots.append(state_of(model))
        return next(scripted)

    monkeypatch.setattr(training, "accuracy", scripted_accuracy)
    model = LeNet300100()
    config = TrainConfig(epochs=3, batch_size=256, schedule="constant")
    result = train_classifier(model, small_mnist, config, progress=False)
    assert result.best_epoch == 1
    assert result.validation_accuracy == [0.5, 0.9, 0.7]
    final = model.state_dict()
    assert all(torch.equal(final[name], snapshots[1][name]) for name in final)
    assert not torch.equal(final["fc1.weight"], snapshots[2]["fc1.weight"])


def test_same_seed_gives_identical_weights(small_mnist):
    config = TrainConfig(epochs=1, batch_size=100, seed=3)
    first, second = LeNet300100(), LeNet300100()
    second.load_state_dict(first.state_dict())
    train_classifier(first, small_mnist, config, progress=False)
    train_classifier(second, small_mnist, config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))

    third = LeNet300100()
    third.load_state_dict(state_of(second))
    train_classifier(third, small_mnist, dataclasses.replace(config, seed=4), progress=False)
    assert not torch.equal(first.fc1.weight, third.fc1.weight)


def test_only_trainable_parameters_change(small_mnist):
    model = LeNet300100()
    model.fc1.requires_grad_(False)
    before = state_of(model)
    train_classifier(model, small_mnist, TrainConfig(epochs=1, batch_size=500), progress=False)
    assert torch.equal(model.fc1.weight, before["fc1.weight"])
    assert not torch.equal(model.fc2.weight, before["fc2.weight"])


@pytest.mark.parametrize("training_mode", [True, False])
def test_training_mode_is_restored(small_mnist, training_mode):
    model = LeNet300100().train(training_mode)
    train_classifier(model, small_mnist, TrainConfig(epochs=1, batch_size=500), progress=False)
    assert model.training is training_mode


def test_zero_epochs_changes_nothing(small_mnist):
    model = LeNet300100()
    before = state_of(model)
    result = train_classifier(model, small_mnist, TrainConfig(epochs=0), progress=False)
    assert result == TrainResult(epochs=0)
    assert result.best_validation_accuracy is None
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_only_when_asked(small_mnist, capsys, progress):
    train_classifier(LeNet300100(), small_mnist, TrainConfig(epochs=1, batch_size=500), progress=progress)
    assert ("epoch 1/1" in capsys.readouterr().err) is progress


def test_model_without_trainable_parameters_raises(small_mnist):
    model = LeNet300100().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        train_classifier(model, small_mnist, TrainConfig(epochs=1), progress=False)


def test_wrong_argument_types_raise(small_mnist):
    with pytest.raises(TypeError, match="config"):
        train_classifier(LeNet300100(), small_mnist, {"epochs": 1}, progress=False)
    with pytest.raises(TypeError, match="data must be a DataSplits, a Split or an iterable"):
        train_classifier(LeNet300100(), 42, TrainConfig(), progress=False)
    with pytest.raises(ValueError, match="validation is required"):
        train_classifier(LeNet300100(), small_mnist.train, TrainConfig(), progress=False)
