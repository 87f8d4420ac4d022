"""The two networks the suite measures, each with its data: LeNet-5 on MNIST and VGG-16 on a CIFAR-10 subset.

The networks are freshly initialised (seeded), not trained: a step costs the same whatever
the weights, so a timing needs no baseline. ``quick`` swaps the data for a few random images
of the right shape, for smoke runs and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pyro_dirichlet.baselines.registry import get_model_entry
from pyro_dirichlet.data import DataSplits, Split, load_dataset

__all__ = ["Workload", "lenet5_workload", "vgg16_workload", "synthetic_splits"]


@dataclass(frozen=True)
class Workload:
    """A network and the data it is timed on.

    Attributes:
        name: the model's registry name, e.g. ``"vgg16"``.
        data: the splits; ``train`` is what an epoch passes over.
        batch_size: examples per training and SVI step.
        default_keep: units each prunable layer keeps when pruned (the registry's widths).
        seed: seeds the network's initialisation.
        source: where the images came from, e.g. ``"mnist"`` or ``"synthetic"``.
    """

    name: str
    data: DataSplits
    batch_size: int
    default_keep: dict[str, int]
    seed: int = 0
    source: str = ""

    def build(self) -> nn.Module:
        """A freshly initialised full-width network, the same one for the same seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return get_model_entry(self.name).build()


def synthetic_splits(name: str, shape: tuple[int, ...], train: int, *, seed: int = 0) -> DataSplits:
    """Random normal images with random labels in place of a data set (timings only)."""
    generator = torch.Generator().manual_seed(seed)

    def split(size: int) -> Split:
        return Split(torch.randn(size, *shape, generator=generator), torch.randint(0, 10, (size,), generator=generator))

    return DataSplits(train=split(train), validation=split(32), test=split(32), name=name, num_classes=10,
                      input_shape=shape, source="synthetic")


def lenet5_workload(*, quick: bool = False, data_dir: str | None = None, batch_size: int = 128) -> Workload:
    """LeNet-5 on the full MNIST train split (55,000 images); ``quick``: 256 random images, batch 64."""
    entry = get_model_entry("lenet5")
    if quick:
        data, batch_size, source = synthetic_splits("mnist", (1, 28, 28), 256), 64, "synthetic"
    else:
        data, source = load_dataset("mnist", data_dir), "mnist"
    return Workload("lenet5", data, batch_size, dict(entry.default_keep), source=source)


def vgg16_workload(*, quick: bool = False, data_dir: str | None = None, train_size: int = 1024,
                   batch_size: int = 128) -> Workload:
    """VGG-16 on a seeded ``train_size`` subset of CIFAR-10 (the JPEG copy where that is what the
    data folder holds); ``quick``: 32 random images, batch 16."""
    entry = get_model_entry("vgg16")
    if quick:
        data, batch_size, source = synthetic_splits("cifar10", (3, 32, 32), 32), 16, "synthetic"
    else:
        # A small validation split: train_classifier measures it after the epoch (untimed).
        data = load_dataset("cifar10", data_dir).subset(train=train_size, validation=256, test=256, seed=0)
        source = data.source or "cifar10"
    return Workload("vgg16", data, batch_size, dict(entry.default_keep), source=source)
