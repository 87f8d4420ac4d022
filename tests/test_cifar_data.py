"""CIFAR-10: the zip decoder, the decoded cache, the splits, augmentation, and its use in training."""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pyro_dirichlet.data import cifar10 as cifar10_module
from pyro_dirichlet.io.cache import resolve_cache_dir
from pyro_dirichlet.data import (
    CIFAR10_CLASSES,
    DatasetMissingError,
    DataSplits,
    RandomCropFlip,
    Split,
    load_cifar10,
    load_dataset,
    read_image_zip,
    split_indices,
)
from pyro_dirichlet.repair.train import TrainConfig, train_classifier

SHARED = Path(os.environ.get("PYRO_DIRICHLET_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_ZIPS = SHARED / "cifar10-jpeg"


def colour(label: int, index: int) -> tuple[int, int, int]:
    return (20 * label + 10, 100 + 50 * index, 200 - 15 * label)


def write_zip(path: Path, split: str, per_class: int, classes=CIFAR10_CLASSES) -> None:
    """A zip in the JPEG copy's layout; members written in a scrambled order."""
    members = [(label, index) for index in range(per_class) for label in range(len(classes))][::-1]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{split}/", b"")
        for label, index in members:
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), colour(label, index)).save(buffer, "JPEG", quality=95)
            archive.writestr(f"{split}/{classes[label]}/{index:04d}.jpg", buffer.getvalue())


@pytest.fixture
def synthetic_root(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "data" / "cifar10-jpeg"
    folder.mkdir(parents=True)
    write_zip(folder / "train.zip", "train", per_class=3)
    write_zip(folder / "test.zip", "test", per_class=1)
    monkeypatch.setenv("PYRO_DIRICHLET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


def test_read_image_zip_orders_by_class_and_decodes_pixels(tmp_path):
    write_zip(tmp_path / "train.zip", "train", per_class=2)
    images, labels = read_image_zip(tmp_path / "train.zip")
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    assert labels.tolist() == [label for label in range(10) for _ in range(2)]
    for position, (label, index) in enumerate((l, i) for l in range(10) for i in range(2)):
        mean = images[position].float().mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(colour(label, index), dtype=torch.float32), atol=3)


def test_read_image_zip_names_a_member_outside_the_classes(tmp_path):
    write_zip(tmp_path / "bad.zip", "train", per_class=1, classes=("airplane", "unicorn"))
    with pytest.raises(ValueError, match="unicorn"):
        read_image_zip(tmp_path / "bad.zip")


@pytest.mark.skipif(not (REAL_ZIPS / "test.zip").is_file(), reason="CIFAR-10 JPEG copy not present")
def test_read_image_zip_on_members_of_the_real_archive():
    images, labels = read_image_zip(REAL_ZIPS / "test.zip", max_per_class=2)
    assert images.shape == (20, 3, 32, 32)
    assert labels.tolist() == [label for label in range(10) for _ in range(2)]
    assert 30 < images.float().mean() < 220  # real photographs, not blank decodes


def test_load_cifar10_from_the_jpeg_layout_caches_the_decode(synthetic_root, tmp_path, monkeypatch):
    data = load_cifar10(synthetic_root, validation_size=6)
    assert (len(data.train), len(data.validation), len(data.test)) == (24, 6, 10)
    assert (data.name, data.source, data.num_classes, data.input_shape) == ("cifar10", "cifar10-jpeg", 10, (3, 32, 32))
    assert data.train.images.dtype == torch.float32
    assert data.test.labels.tolist() == list(range(10))
    assert isinstance(data.augment, RandomCropFlip)
    cached = list((tmp_path / "cache").glob("cifar10-jpeg-*.safetensors"))
    assert len(cached) == 1

    # A second load reads the cache: the decoder is never called.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar10_module, "read_image_zip", no_decode)
    again = load_cifar10(synthetic_root, validation_size=6)
    torch.testing.assert_close(again.train.images, data.train.images)

    # A changed archive (new size and time) is decoded again, under a new key.
    monkeypatch.undo()
    monkeypatch.setenv("PYRO_DIRICHLET_CACHE", str(tmp_path / "cache"))
    write_zip(synthetic_root / "cifar10-jpeg" / "test.zip", "test", per_class=2)
    os.utime(synthetic_root / "cifar10-jpeg" / "test.zip", ns=(1, 1))
    changed = load_dataset("cifar10", synthetic_root, validation_size=6)
    assert len(changed.test) == 20
    # One cache per data root: the earlier state's file is gone, the new one is there.
    (rebuilt,) = (tmp_path / "cache").glob("cifar10-jpeg-*.safetensors")
    assert rebuilt != cached[0] and rebuilt.name[:30] == cached[0].name[:30]


def test_load_cifar10_normalises_with_the_cifar_statistics(synthetic_root):
    data = load_cifar10(synthetic_root, validation_size=6)
    raw, _ = read_image_zip(synthetic_root / "cifar10-jpeg" / "test.zip")
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    torch.testing.assert_close(data.test.images, (raw.float() / 255 - mean) / std)


def test_missing_cifar10_names_both_layouts_and_the_three_options(tmp_path):
    with pytest.raises(DatasetMissingError) as caught:
        load_cifar10(tmp_path)
    message = str(caught.value)
    for expected in (
        "cifar10-jpeg/train.zip",
        "cifar10-jpeg/test.zip",
        "cifar-10-batches-py/data_batch_1",
        "--data-dir",
        "PYRO_DIRICHLET_DATA",
        "./data",
    ):
        assert expected in message


def test_resolve_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_DIRICHLET_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir("datasets", tmp_path / "flag") == tmp_path / "flag"
    assert resolve_cache_dir("datasets") == tmp_path / "env"
    monkeypatch.delenv("PYRO_DIRICHLET_CACHE")
    assert resolve_cache_dir("datasets").parts[-3:] == (".cache", "pyro-dirichlet", "datasets")
    with pytest.raises(ValueError, match="kind"):
        resolve_cache_dir("../x")


# --- augmentation ----------------------------------------------------------------------------


def batch(n=32) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_augmentation_keeps_the_shape_and_is_determined_by_the_generator():
    augment = RandomCropFlip(padding=4, fill=(-1.0, -2.0, -3.0))
    images = batch()
    first = augment(images, torch.Generator().manual_seed(0))
    assert first.shape == images.shape and first.dtype == images.dtype
    torch.testing.assert_close(augment(images, torch.Generator().manual_seed(0)), first)
    assert not torch.equal(augment(images, torch.Generator().manual_seed(1)), first)


def test_augmentation_without_padding_only_flips_left_right():
    images = batch(64)
    out = RandomCropFlip(padding=0)(images, torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # about half


def test_augmentation_is_a_crop_of_the_padded_image_or_its_mirror():
    fill = (-1.0, -2.0, -3.0)
    images = batch(16)
    out = RandomCropFlip(padding=4, fill=fill)(images, torch.Generator().manual_seed(5))
    padded = torch.tensor(fill).view(1, 3, 1, 1).repeat(16, 1, 40, 40)
    padded[:, :, 4:36, 4:36] = images
    for index in range(16):
        crops = [
            padded[index, :, row : row + 32, col : col + 32] for row in range(9) for col in range(9)
        ]
        assert any(torch.equal(out[index], c) or torch.equal(out[index], c.flip(2)) for c in crops)


def test_augmentation_runs_on_the_images_device_and_rejects_wrong_fill():
    with pytest.raises(ValueError, match="fill"):
        RandomCropFlip(fill=(0.0, 0.0))(batch(2), torch.Generator())
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)


class Recorder:
    """An augmentation that records the batches it sees and adds a constant."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, images, generator):
        assert isinstance(generator, torch.Generator)
        self.sizes.append(len(images))
        return images + 1.0


def tiny_splits(augment) -> DataSplits:
    generator = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randn(n, 3, 4, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator))

    return DataSplits(split(40), split(12), split(12), "tiny", 3, (3, 4, 4), augment=augment)


def test_training_augments_training_batches_only():
    recorder = Recorder()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    train_classifier(model, tiny_splits(recorder), TrainConfig(epochs=2, batch_size=16), progress=False)
    assert recorder.sizes == [16, 16, 8] * 2  # the training split twice, never validation


def test_augmentation_does_not_change_the_shuffling_order():
    # With augmentation off, the same seed gives the same model as before augmentation existed.
    results = []
    for augment in (None, lambda images, generator: images):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        train_classifier(model, tiny_splits(augment), TrainConfig(epochs=1, batch_size=16), progress=False)
        results.append(model[1].weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


# --- the real data set, once ---------------------------------------------------------------------


@pytest.mark.skipif(not (REAL_ZIPS / "train.zip").is_file(), reason="CIFAR-10 JPEG copy not present")
def test_full_jpeg_copy_splits_45k_5k_10k_with_official_label_order():
    # Decoding takes about 8 s on 2 cores the first time, about 2 s from the cache after.
    data = load_cifar10(SHARED)
    assert data.source == "cifar10-jpeg"
    assert (len(data.train), len(data.validation), len(data.test)) == (45000, 5000, 10000)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert data.test.labels.bincount().tolist() == [1000] * 10
    together = torch.cat([data.train.labels, data.validation.labels]).bincount()
    assert together.tolist() == [5000] * 10
    train_index, validation_index = split_indices(50000, 5000, seed=0)
    assert not set(train_index.tolist()) & set(validation_index.tolist())
    # Normalised: each channel of the training set has mean about 0 and std about 1.
    means = data.train.images.mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros(3), atol=0.05)
    assert np.allclose(data.train.images[:2000].std(dim=(0, 2, 3)).numpy(), 1.0, atol=0.05)
