import os
import pickle
from pathlib import Path

import pytest
import torch

from pyro_dirichlet.data import (
    DATA_ENV_VAR,
    DatasetMissingError,
    Split,
    load_dataset,
    load_mnist,
    minibatches,
    resolve_data_root,
    split_indices,
)

# Official MNIST training-set class counts (train + validation together).
MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# ``mnist`` (the real 55k/5k/10k splits, loaded once per session) comes from conftest.py.


@pytest.fixture(scope="module")
def data_root() -> Path:
    root = os.environ.get(DATA_ENV_VAR)
    if not root:
        pytest.skip(f"set {DATA_ENV_VAR} to the folder holding MNIST/raw to compare with torchvision")
    return Path(root)


def small_split(n: int = 10) -> Split:
    # Each image is filled with its own index, so a batch can be checked against its indices.
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Split(images, torch.arange(n) % 3)


# --- resolve_data_root ---------------------------------------------------------------


def test_flag_wins_over_env(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "from-env"))
    assert resolve_data_root(tmp_path / "from-flag") == (tmp_path / "from-flag", False)


def test_env_used_without_flag(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert resolve_data_root() == (tmp_path, False)


@pytest.mark.parametrize("env_value", [None, ""])
def test_fallback_is_dot_data_with_download(monkeypatch, env_value):
    if env_value is None:
        monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(DATA_ENV_VAR, env_value)
    assert resolve_data_root() == (Path("data"), True)


def test_flag_of_wrong_type_raises():
    with pytest.raises(TypeError, match="data_dir"):
        resolve_data_root(42)


# --- missing data --------------------------------------------------------------------


def test_missing_mnist_names_files_and_ways_to_fix(tmp_path):
    with pytest.raises(DatasetMissingError) as caught:
        load_mnist(tmp_path)
    message = str(caught.value)
    assert "MNIST" in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte") in message
    assert DATA_ENV_VAR in message
    assert "--data-dir" in message
    assert "./data" in message
    assert isinstance(caught.value, FileNotFoundError)
    assert str(pickle.loads(pickle.dumps(caught.value))) == message


def test_missing_mnist_through_env_var_and_partial_files(monkeypatch, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(DatasetMissingError, match="3 file"):
        load_dataset("mnist")


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("imagenet")


# --- real MNIST ----------------------------------------------------------------------


def test_mnist_shapes_and_types(mnist):
    assert (len(mnist.train), len(mnist.validation), len(mnist.test)) == (55000, 5000, 10000)
    assert mnist.train.images.shape == (55000, 1, 28, 28)
    assert mnist.test.images.dtype == torch.float32
    assert mnist.validation.labels.dtype == torch.int64
    assert (mnist.name, mnist.num_classes, mnist.input_shape) == ("mnist", 10, (1, 28, 28))


def test_mnist_is_normalised(mnist):
    # Mean and std are the official training-set statistics, so they hold on the train split.
    assert abs(mnist.train.images.mean().item()) < 0.01
    assert abs(mnist.train.images.std().item() - 1.0) < 0.01
    background = (0.0 - 0.1307) / 0.3081
    assert mnist.test.images.min().item() == pytest.approx(background, abs=1e-6)


def test_mnist_train_and_validation_partition_the_official_training_set(mnist):
    labels = torch.cat([mnist.train.labels, mnist.validation.labels])
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TRAIN_CLASS_COUNTS


def test_mnist_splits_are_the_official_images_at_split_indices(data_root, mnist):
    import torchvision

    official = torchvision.datasets.MNIST(root=data_root, train=True, download=False)
    train_index, validation_index = split_indices(60000, 5000, seed=0)
    assert not set(train_index.tolist()) & set(validation_index.tolist())
    assert torch.equal(mnist.validation.labels, official.targets[validation_index])
    pixels = mnist.validation.images[:, 0] * 0.3081 + 0.1307
    assert torch.allclose(pixels * 255, official.data[validation_index].float(), atol=1e-3)
    assert torch.equal(mnist.train.labels[:100], official.targets[train_index[:100]])


def test_split_seed_changes_validation_set(data_root):
    other = load_dataset("mnist", data_root, validation_size=1000, split_seed=1)
    assert (len(other.train), len(other.validation), other.split_seed) == (59000, 1000, 1)
    _, default_validation = split_indices(60000, 1000, seed=0)
    _, seed_one_validation = split_indices(60000, 1000, seed=1)
    assert not torch.equal(default_validation, seed_one_validation)


# --- split_indices -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("num_examples, validation_size", [(10, 1), (100, 30), (60000, 5000)])
def test_split_indices_partition(num_examples, validation_size, seed):
    train, validation = split_indices(num_examples, validation_size, seed=seed)
    assert len(validation) == validation_size
    assert torch.equal(torch.cat([train, validation]).sort().values, torch.arange(num_examples))
    assert torch.equal(train, train.sort().values)


@pytest.mark.parametrize("validation_size", [0, 10, -1])
def test_split_indices_rejects_bad_size(validation_size):
    with pytest.raises(ValueError, match="validation_size"):
        split_indices(10, validation_size, seed=0)


# --- Split ---------------------------------------------------------------------------


def test_split_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        Split(torch.zeros(3, 1, 2, 2), torch.zeros(4, dtype=torch.int64))


def test_split_rejects_wrong_dtypes():
    with pytest.raises(TypeError, match="images"):
        Split(torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels"):
        Split(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int32))


def test_subset_is_seeded_and_drawn_from_the_split():
    split = small_split(50)
    first, again, other = split.subset(20, seed=3), split.subset(20, seed=3), split.subset(20, seed=4)
    assert len(first) == 20
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    source = first.images[:, 0, 0, 0].long()
    assert len(set(source.tolist())) == 20
    assert torch.equal(first.labels, split.labels[source])


@pytest.mark.parametrize("n", [0, 51])
def test_subset_rejects_bad_size(n):
    with pytest.raises(ValueError, match="n must"):
        small_split(50).subset(n, seed=0)


def test_split_to_keeps_contents():
    split = small_split().to("cpu")
    assert torch.equal(split.labels, small_split().labels)


# --- minibatches ---------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 10, 64])
def test_minibatches_cover_each_index_once(shuffle, batch_size):
    split = small_split(10)
    seen = []
    for indices, images, labels in minibatches(
        split, batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0)
    ):
        assert len(indices) <= batch_size
        assert torch.equal(images[:, 0, 0, 0].long(), indices)
        assert torch.equal(labels, split.labels[indices])
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(10))


def test_minibatches_on_real_mnist_match_indices(mnist):
    split = mnist.validation
    seen = torch.zeros(len(split), dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    for indices, images, labels in minibatches(split, 128, shuffle=True, generator=generator):
        assert torch.equal(images, split.images[indices])
        assert torch.equal(labels, split.labels[indices])
        seen[indices] += 1
    assert torch.all(seen == 1)


def test_minibatches_drop_last():
    sizes = [len(i) for i, _, _ in minibatches(small_split(10), 4, shuffle=True, drop_last=True)]
    assert sizes == [4, 4]


def test_minibatches_shuffle_follows_generator():
    def order(seed):
        generator = torch.Generator().manual_seed(seed)
        batches = minibatches(small_split(10), 3, shuffle=True, generator=generator)
        return torch.cat([indices for indices, _, _ in batches])

    assert torch.equal(order(5), order(5))
    assert not torch.equal(order(5), order(6))


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError)])
def test_minibatches_reject_bad_batch_size(batch_size, error):
    with pytest.raises(error, match="batch_size"):
        next(minibatches(small_split(), batch_size, shuffle=False))


# --- docstring examples ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["augment", "catalog", "cifar10", "errors", "loaders", "mnist", "root", "splits"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"pyro_dirichlet.data.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
