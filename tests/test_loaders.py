"""Data as any iterable of (inputs, targets) batches: the adapter, accuracy and training on a DataLoader (issue 12, item 1)."""

from __future__ import annotations

import pytest
import torch
from conftest import shrink
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from pyro_dirichlet.data import Batch, DataSplits, Split, count_batches, count_examples, iterate_batches
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.models.lenet import LeNet300100
from pyro_dirichlet.repair.train import TrainConfig, finetune, train_classifier


@pytest.fixture(scope="module")
def small_mnist(mnist) -> DataSplits:
    """Real MNIST cut to 1k train / 500 validation / 500 test examples."""
    return shrink(mnist, 1000, 500, 500)


def loader_of(split: Split, batch_size: int = 64, **kwargs) -> DataLoader:
    return DataLoader(TensorDataset(split.images, split.labels), batch_size=batch_size, **kwargs)


class Stream(IterableDataset):
    """An iterable data set with no len(), as a user's streaming source would be."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __iter__(self):
        return iter(zip(self.split.images, self.split.labels))


def seeded_mlp(seed: int = 0) -> LeNet300100:
    torch.manual_seed(seed)
    return LeNet300100()


# --- the adapter -----------------------------------------------------------------------


def test_iterate_batches_reads_a_dataloader_in_its_own_batches(small_mnist):
    split = small_mnist.test
    batches = list(iterate_batches(loader_of(split, 128), 7, shuffle=True))
    assert [len(batch.targets) for batch in batches] == [128, 128, 128, 116]
    assert all(isinstance(batch, Batch) and batch.indices is None for batch in batches)
    assert torch.equal(torch.cat([batch.inputs for batch in batches]), split.images)
    assert torch.equal(torch.cat([batch.targets for batch in batches]), split.labels)


def test_iterate_batches_slices_a_split_with_its_indices(small_mnist):
    split = small_mnist.test
    generator = torch.Generator().manual_seed(0)
    for inputs, targets, indices in iterate_batches(split, 100, shuffle=True, generator=generator):
        assert torch.equal(inputs, split.images[indices])
        assert torch.equal(targets, split.labels[indices])


@pytest.mark.parametrize(
    "data, says",
    [
        ([(torch.zeros(2, 3),)], "batch 0 is a tuple of length 1"),
        ([(torch.zeros(2, 3), torch.zeros(2)), {"x": 1}], "batch 1 is a dict"),
        ([(torch.zeros(2, 3), [0, 1])], r"batch 0 holds \(Tensor, list\)"),
        ([(torch.zeros(2, 3), torch.zeros(3))], r"batch 0 has inputs of shape \(2, 3\) and targets of shape \(3,\)"),
        ([(torch.zeros(()), torch.zeros(()))], "batch 0 has inputs of shape"),
        (torch.zeros(4, 3), "must be a Split or an iterable"),
        (42, "must be a Split or an iterable"),
    ],
)
def test_iterate_batches_names_what_is_wrong(data, says):
    with pytest.raises(TypeError, match=says):
        list(iterate_batches(data, 2, shuffle=False))


def test_count_examples_and_batches(small_mnist):
    split = small_mnist.test
    loader = loader_of(split, 64)
    assert count_examples(split) == 500 and count_batches(split, 64) == 8 and count_batches(split, 64, drop_last=True) == 7
    assert count_examples(loader) == 500 and count_batches(loader, 1) == 8
    batches = list(loader)
    assert count_examples(batches, 500) == 500 and count_batches(batches, 1) == 8
    with pytest.raises(ValueError, match="number of examples of a list is unknown"):
        count_examples(batches)
    with pytest.raises(ValueError, match="size must be a positive int"):
        count_examples(batches, 0)
    streaming = DataLoader(Stream(split), batch_size=64)
    assert count_batches(streaming, 64) is None
    with pytest.raises(ValueError, match="DataLoader is unknown"):
        count_examples(streaming)


# --- accuracy --------------------------------------------------------------------------


def test_accuracy_on_a_dataloader_equals_accuracy_on_the_split(small_mnist):
    model = seeded_mlp()
    train_classifier(model, small_mnist, TrainConfig(epochs=1), progress=False)
    split = small_mnist.test
    expected = accuracy(model, split)
    assert expected > 0.5  # a trained model, so the comparison means something
    assert accuracy(model, loader_of(split, 37)) == expected
    assert accuracy(model, DataLoader(Stream(split), batch_size=50)) == expected
    assert accuracy(model, list(loader_of(split, 100))) == expected


def test_accuracy_of_an_empty_loader_raises():
    with pytest.raises(ValueError, match="at least one example"):
        accuracy(seeded_mlp(), [])


# --- training --------------------------------------------------------------------------


def test_streamed_batches_in_the_split_order_train_the_same_model(small_mnist):
    config = TrainConfig(epochs=1, batch_size=100, seed=3)
    preloaded = seeded_mlp()
    train_classifier(preloaded, small_mnist, config, progress=False)
    # The same batches the preloaded path draws (its order comes from a generator seeded with config.seed).
    order = torch.randperm(len(small_mnist.train), generator=torch.Generator().manual_seed(3))
    batches = [
        (small_mnist.train.images[chunk], small_mnist.train.labels[chunk]) for chunk in order.split(100)
    ]
    streamed = seeded_mlp()
    train_classifier(streamed, batches, config, validation=loader_of(small_mnist.validation), progress=False)
    for (name, expected), actual in zip(preloaded.state_dict().items(), streamed.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=name)


def test_training_on_a_shuffling_dataloader_learns_and_is_reproducible(small_mnist):
    def trained():
        model = seeded_mlp()
        loader = loader_of(small_mnist.train, 32, shuffle=True)
        result = train_classifier(
            model, loader, TrainConfig(epochs=2, seed=1), validation=loader_of(small_mnist.validation), progress=False
        )
        return model, result

    model, result = trained()
    again, _ = trained()
    assert result.best_validation_accuracy > 0.8
    assert accuracy(model, small_mnist.test) > 0.8
    for expected, actual in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(actual, expected)  # the loader shuffles with torch's generator, seeded by the config


def test_a_stream_without_len_trains_with_a_constant_schedule(small_mnist):
    stream = DataLoader(Stream(small_mnist.train), batch_size=50)
    with pytest.raises(ValueError, match="schedule 'cosine' needs the number of batches"):
        train_classifier(seeded_mlp(), stream, TrainConfig(epochs=1), validation=small_mnist.validation, progress=False)
    result = train_classifier(
        seeded_mlp(), stream, TrainConfig(epochs=1, schedule="constant"), validation=small_mnist.validation, progress=False
    )
    assert result.validation_accuracy[0] > 0.5


def test_finetune_accepts_loaders_and_never_ends_worse(small_mnist):
    model = seeded_mlp()
    train_classifier(model, small_mnist, TrainConfig(epochs=1), progress=False)
    validation = loader_of(small_mnist.validation)
    before = accuracy(model, validation)
    result = finetune(model, loader_of(small_mnist.train, 64, shuffle=True), validation=validation, epochs=1, lr=1e-3, progress=False)
    assert result.initial_validation_accuracy == before
    assert accuracy(model, validation) >= before


@pytest.mark.parametrize(
    "data, validation, error, says",
    [
        ("splits", "loader", ValueError, "validation must be None when data is a DataSplits"),
        ("loader", None, ValueError, "validation is required"),
        ("generator", "loader", TypeError, "data is a one-shot iterator"),
        ("loader", "generator", TypeError, "validation is a one-shot iterator"),
        ("loader", 3.0, TypeError, "validation must be a Split or an iterable"),
        ("empty", "loader", ValueError, r"training data \(list\) holds no batches"),
        ("empty stream", "loader", ValueError, r"training data \(DataLoader\) yielded no batches in epoch 1"),
    ],
)
def test_bad_training_data_is_refused(small_mnist, data, validation, error, says):
    def make(kind):
        if kind == "splits":
            return small_mnist
        if kind == "loader":
            return loader_of(small_mnist.validation)
        if kind == "generator":
            return (batch for batch in loader_of(small_mnist.validation))
        if kind == "empty":
            return []
        if kind == "empty stream":
            return DataLoader(Stream(Split(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))), batch_size=4)
        return kind

    with pytest.raises(error, match=says):
        train_classifier(seeded_mlp(), make(data), TrainConfig(epochs=1, schedule="constant"), validation=make(validation), progress=False)
