"""Where a run's network and data come from: a registered model or a user's factory, a named data set or a user's images.

The train step records the choice in the manifest (model name or factory path with its
arguments, data set, cut, image size, normalisation); every later step rebuilds the same
network and data from that record, except that a factory is imported only when the command
names it again (``Runtime.factory``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pyro_dirichlet.app.options import MIN_SUBSET
from pyro_dirichlet.app.rundir import RunDirectory, RunDirectoryError
from pyro_dirichlet.data import DataSplits, load_dataset
from pyro_dirichlet.data.catalog import is_user_source
from pyro_dirichlet.data.normalization import Normalization
from pyro_dirichlet.io.factories import FactoryError, ModelFactory, is_factory_path

if TYPE_CHECKING:
    from pyro_dirichlet.app.options import Runtime, TrainOptions

__all__ = ["FactoryBaseline", "check_recorded_dataset", "train_model", "check_outputs", "load_data", "run_model", "subset_sizes", "cut"]


@dataclass
class FactoryBaseline:
    """A factory's model trained in this run (never cached: the cache is keyed by registered names)."""

    train_result: Any
    trained_now: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


def train_model(options: TrainOptions) -> tuple[ModelFactory | None, Any]:
    """``(factory, None)`` for a user's factory path, ``(None, registry entry)`` for a registered model.

    Raises:
        ValueError: a factory without a data set, or a registered model on another data set than its own.
    """
    from pyro_dirichlet.baselines import get_model_entry

    if is_factory_path(options.model):
        if options.dataset is None:
            raise ValueError(f"--model {options.model} needs --dataset: imagefolder:DIR, torchvision:NAME, "
                             "mnist or cifar10.")
        return ModelFactory(options.model, options.model_args or {}), None
    entry = get_model_entry(options.model)
    if options.dataset != entry.dataset:
        raise ValueError(f"model {options.model!r} is trained on {entry.dataset!r}, not dataset {options.dataset!r}.")
    return None, entry


def check_outputs(network: nn.Module, example: torch.Tensor, options: TrainOptions, data: DataSplits) -> None:
    """A classifier for this data set returns one logit per class: found now, not as a crash in the middle of training."""
    try:
        with torch.no_grad():
            outputs = network.eval()(example)
    except Exception as error:  # noqa: BLE001 - the user's network may fail any way
        reason = " ".join(str(error).split()).rstrip(".")[:200] or type(error).__name__
        raise ValueError(f"model {options.model} cannot run on the images of {options.dataset} (shape "
                         f"{tuple(example.shape[1:])}): {type(error).__name__} ({reason}).") from None
    if not isinstance(outputs, torch.Tensor) or outputs.shape != (len(example), data.num_classes):
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"model {options.model} returns {shape} for {len(example)} images, but {options.dataset} "
                         f"has {data.num_classes} classes: build it with {data.num_classes} outputs "
                         f"(e.g. --model-arg num_classes={data.num_classes}).")


def load_data(name: str, data_dir: Path | None, record: dict[str, Any]) -> DataSplits:
    """A data set by name, cut as ``record`` says; a user's images resized and normalised as it says."""
    if not is_user_source(name):
        return cut(load_dataset(name, data_dir), record)
    normalize, image_size = record.get("normalize"), record.get("image_size")
    try:
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size {image_size!r} is not a positive integer")
        normalization = None if normalize is None else Normalization(
            tuple(map(float, normalize["mean"])), tuple(map(float, normalize["std"])))
    except (KeyError, TypeError, ValueError) as error:
        raise RunDirectoryError(f"the run manifest's data record is malformed: {error}; start a new run with "
                                "`pyro-dirichlet train`.") from None
    kwargs: dict[str, Any] = {"image_size": image_size, "normalize": normalization}
    if record.get("validation_dir") is not None:
        kwargs["validation"] = record["validation_dir"]
    if name.startswith("imagefolder:") and record.get("subset") is not None:
        # Only the images the run uses are decoded; cut() below then keeps them all.
        kwargs.update(sizes=subset_sizes(record["subset"]), subset_seed=record["subset_seed"])
    return cut(load_dataset(name, data_dir, **kwargs), record)


def run_model(run: RunDirectory, runtime: Runtime | None) -> tuple[Callable[[], nn.Module], ModelFactory | None]:
    """How to build the run's (unpruned) network: the registry entry, or the user's factory as named on this command.

    A factory path the run directory records is never imported: ``runtime.factory`` must name it.

    Raises:
        RunDirectoryError: a factory-built run without ``--model`` naming the factory, or with another one.
    """
    from pyro_dirichlet.baselines import get_model_entry

    manifest = run.manifest()
    if not is_factory_path(manifest["model"]):
        return get_model_entry(manifest["model"]).build, None
    try:
        recorded = ModelFactory(manifest["model"], manifest.get("model_args") or {})
        factory = recorded.named_again(runtime.factory if runtime is not None else None,
                                       where=f"run directory {str(run.path)!r}")
    except (FactoryError, TypeError) as error:
        raise RunDirectoryError(str(error)) from None
    return factory.build, factory


def check_recorded_dataset(run: RunDirectory) -> dict[str, Any]:
    """The run's manifest, once its data set is one its registered model trains on (``train`` checked that; an edit may not have).

    Raises:
        RunDirectoryError: the manifest names another data set than the registered model's.
    """
    from pyro_dirichlet.baselines import get_model_entry

    manifest = run.manifest()
    if not is_factory_path(manifest["model"]) and manifest["dataset"] != get_model_entry(manifest["model"]).dataset:
        raise RunDirectoryError(f"{run.manifest_path} records dataset {manifest['dataset']!r}, but model "
                                f"{manifest['model']!r} is trained on {get_model_entry(manifest['model']).dataset!r}: "
                                "the manifest was edited; start a new run with `pyro-dirichlet train`.")
    return manifest


def subset_sizes(size: int) -> tuple[int, int, int]:
    """Training, validation and test sizes of a ``--subset`` smoke run."""
    return size, max(2, size // 4), max(2, size // 4)


def cut(data: DataSplits, record: dict[str, Any]) -> DataSplits:
    """Seeded subsets for smoke runs: ``subset`` training examples, a quarter of that for validation and test."""
    size = record.get("subset")
    if size is None:
        return data
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SUBSET:
        raise ValueError(f"subset must be an integer of at least {MIN_SUBSET} training examples, got {size!r}.")
    train, validation, test = subset_sizes(size)
    return data.subset(train=train, validation=validation, test=test, seed=record["subset_seed"])


