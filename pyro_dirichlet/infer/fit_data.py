"""The training data of a fit as its SVI loop reads it: preloaded on the device, or streamed, and checked first."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pyro_dirichlet.data import BatchSource, Split, count_examples
from pyro_dirichlet.infer.fit_config import FitConfig
from pyro_dirichlet.infer.stream import StreamedBatches

if TYPE_CHECKING:
    from pyro_dirichlet.infer.distributed import DataParallel
    from pyro_dirichlet.infer.switches import DirichletSwitches


@dataclass
class FitData:
    """The training data as the SVI loop reads it: preloaded on the device (``split``) or streamed (``stream``)."""

    size: int
    first_images: torch.Tensor
    first_labels: torch.Tensor
    # The labels checked against the network's classes before the loop: the whole split's,
    # or the first streamed batch's (the later batches are checked as they come).
    labels: torch.Tensor
    steps_per_epoch: int | None
    generator: torch.Generator
    split: Split | None = None
    stream: StreamedBatches | None = None


def check_split(train: Split, config: FitConfig) -> None:
    if len(train) == 0:
        raise ValueError("train is empty: the switches need data to fit.")
    if config.data_size is not None and config.data_size != len(train):
        raise ValueError(f"FitConfig.data_size is {config.data_size}, but the train Split holds {len(train)} examples; leave it None for a Split.")


def preload(train: Split, config: FitConfig, device: torch.device) -> FitData:
    """The whole split on the device once, so a step only slices (the data is small next to the network)."""
    data = train.to(device)
    if config.channels_last and data.images.dim() == 4:
        data = Split(data.images.contiguous(memory_format=torch.channels_last), data.labels)
    return FitData(
        size=len(train),
        first_images=data.images[:2],
        first_labels=data.labels[:2],
        labels=data.labels,
        steps_per_epoch=math.ceil(len(train) / config.batch_size),
        generator=torch.Generator().manual_seed(config.seed),
        split=data,
    )


def stream_data(
    train: BatchSource,
    config: FitConfig,
    device: torch.device,
    parallel: DataParallel | None,
    checkpoint: str | os.PathLike[str] | None,
) -> FitData:
    """Streamed training data, of which only the first batch is read here."""
    if config.data_size is None and not hasattr(getattr(train, "dataset", None), "__len__"):
        raise ValueError(
            f"the number of examples of train ({type(train).__name__}) is unknown: give it as FitConfig(data_size=...) "
            "(a DataLoader over a data set with len() says it itself)."
        )
    dataset = getattr(train, "dataset", None)
    if config.data_size is not None and hasattr(dataset, "__len__") and config.data_size != len(dataset):
        raise ValueError(f"FitConfig.data_size is {config.data_size}, but the loader's data set holds {len(dataset)} "
                         "examples; leave it None for a loader whose data set has len().")
    train_size = count_examples(train, config.data_size)
    stream = StreamedBatches(train, device=device, seed=config.seed, parallel=parallel)
    first = stream.first()
    if checkpoint is not None and stream.steps_per_epoch is None:
        raise ValueError(
            f"a checkpoint needs the number of batches per epoch, but train ({type(train).__name__}) has no len(); "
            "fit without checkpoint= or give a loader with a length."
        )
    return FitData(
        size=train_size,
        first_images=first.inputs[:2].to(device),
        first_labels=first.targets[:2].to(device),
        labels=first.targets,
        steps_per_epoch=stream.steps_per_epoch,
        generator=stream.generator,
        stream=stream,
    )


def data_identity(train: BatchSource) -> str:
    """A preloaded split by the SHA-256 of its images and labels; streamed data only by its size (in the settings)."""
    if not isinstance(train, Split):
        return "streamed"
    import hashlib

    digest = hashlib.sha256()
    for tensor in (train.labels, train.images):
        # The array's own buffer: tobytes() would first copy it (0.1 s of MNIST's 0.25 s).
        digest.update(memoryview(tensor.detach().cpu().contiguous().numpy()).cast("B"))
    return f"split sha256:{digest.hexdigest()[:16]}"


def check_labels(switches: DirichletSwitches, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Labels must index the network's classes (checked before the loop, since validation is off in it; streamed
    data batch by batch, this the first). Returns the number of classes."""
    with torch.no_grad():
        classes = switches.network(images[:1]).shape[-1]
    check_label_values(labels, classes)
    return classes


def check_label_values(labels: torch.Tensor, classes: int) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"train labels must be integer class indices, got {str(labels.dtype).removeprefix('torch.')} "
                         f"values such as {labels.flatten()[0].item()!r}: a float label would be truncated to a class.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ValueError(f"train labels must lie in [0, {classes - 1}] for this {classes}-class network, got [{low}, {high}].")
