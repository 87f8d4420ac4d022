"""Trained baselines, cached on disk as safetensors files so each is trained only once.

No pretrained weights exist for these models, so the project trains its own; the cache key
covers everything that changes the result (model, data split, training recipe, seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize
from torch import Tensor, nn

from pyro_dirichlet.baselines.registry import get_model_entry
from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.io.atomic import atomic_write
from pyro_dirichlet.io.cache import CACHE_ENV_VAR
from pyro_dirichlet.io.cache import resolve_cache_dir as resolve_cache_dir_of_kind
from pyro_dirichlet.measure import accuracy, count_flops, count_parameters
from pyro_dirichlet.repair.train import TrainConfig, TrainResult, train_classifier

__all__ = [
    "CACHE_ENV_VAR",
    "Baseline",
    "load_checkpoint",
    "load_or_train_baseline",
    "resolve_cache_dir",
    "save_checkpoint",
]

METADATA_KEY = "pyro_dirichlet"
"""The safetensors metadata key under which a checkpoint's JSON metadata is stored."""

# Bumped whenever the meaning of a cached file changes, so old files are not reused.
_CACHE_FORMAT = 1


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The baseline cache folder: ``cache_dir``, else ``$PYRO_DIRICHLET_CACHE``, else
    ``~/.cache/pyro-dirichlet/baselines`` (see :func:`pyro_dirichlet.io.cache.resolve_cache_dir`).

    Example:
        >>> resolve_cache_dir("/tmp/baselines")
        PosixPath('/tmp/baselines')
    """
    return resolve_cache_dir_of_kind("baselines", cache_dir)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, metadata: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``metadata`` to a safetensors file, atomically.

    The metadata is stored as one JSON string under the safetensors metadata key
    ``"pyro_dirichlet"``. The file is first written next to ``path`` and then renamed over
    it, so a crash never leaves a half-written checkpoint behind.

    Args:
        path: destination file; its folder is created if needed.
        model: the network whose ``state_dict()`` is saved (copied to the CPU).
        metadata: JSON-serialisable description of the checkpoint.

    Example:
        >>> save_checkpoint("lenet5.safetensors", model, {"model": "lenet5"})  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        metadata_json = json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from error
    # Copies, so tensors that share storage (tied weights, views) can be saved separately.
    tensors = {
        name: value.detach().to("cpu", copy=True).contiguous()
        for name, value in model.state_dict().items()
    }
    # Serialised in memory first, so a failure leaves no file at all, then written in one go.
    payload = serialize(tensors, metadata={METADATA_KEY: metadata_json})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        handle.write(payload)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Returns:
        ``(state_dict, metadata)`` with the tensors on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a pyro-dirichlet checkpoint (no or unreadable metadata).

    Example:
        >>> state, metadata = load_checkpoint("lenet5.safetensors")  # doctest: +SKIP
        >>> model.load_state_dict(state)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt", device="cpu") as checkpoint:
        raw = (checkpoint.metadata() or {}).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: not a pyro-dirichlet checkpoint")
        state = {name: checkpoint.get_tensor(name) for name in checkpoint.keys()}
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} has unreadable {METADATA_KEY!r} metadata: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} metadata must be a JSON object, got {type(metadata).__name__}")
    return state, metadata


@dataclass
class Baseline:
    """A trained full-width network and where it came from.

    Args:
        model: the network, in eval mode.
        metadata: what :func:`save_checkpoint` stored (accuracies, config, versions, ...).
        trained_now: ``True`` if this call trained it, ``False`` if it came from the cache.
        train_result: the training record when ``trained_now``, else ``None``.
    """

    model: nn.Module
    metadata: dict[str, Any]
    trained_now: bool
    train_result: TrainResult | None


def _read_init(path: str | os.PathLike[str], build: Callable[[], nn.Module]) -> tuple[dict[str, Tensor], str]:
    # Checked here, before any training, so a wrong file fails in a second, not an hour in.
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no checkpoint file at {path}")
    state, _ = load_checkpoint(path)
    try:
        build().load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"init_from: {path} does not hold this model's weights ({error})") from None
    return state, hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_key(name: str, data: DataSplits, config: TrainConfig, init_sha256: str | None = None) -> str:
    # Labels pin down which examples each split holds (and in what order) without hashing
    # every pixel; float sums of the images would vary in the last bits between machines.
    labels = hashlib.sha256()
    for split in (data.train, data.validation):
        labels.update(split.labels.cpu().numpy().tobytes())
        labels.update(b"|")
    description = {
        "format": _CACHE_FORMAT,
        "model": name,
        "dataset": data.name,
        "split_seed": data.split_seed,
        "sizes": [len(data.train), len(data.validation), len(data.test)],
        "input_shape": list(data.input_shape),
        "labels_sha256": labels.hexdigest(),
        "train": config.to_dict(),
    }
    # Added only when they say something the name does not, so the keys of baselines cached
    # before these fields existed (MNIST, no augmentation) stay valid.
    if data.source and data.source != data.name:
        description["source"] = data.source
    if data.augment is not None:
        description["augment"] = repr(data.augment)
    if init_sha256 is not None:
        description["init_from_sha256"] = init_sha256
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _load_cached(
    path: Path, key: str, build: Callable[[], nn.Module]
) -> tuple[nn.Module, dict[str, Any]]:
    state, metadata = load_checkpoint(path)
    if metadata.get("cache_key") != key:
        raise ValueError(f"{path} was written for a different cache key")
    # A baseline with NaN or infinite weights is worth a retrain, never a reuse.
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:
        raise ValueError(f"{path} holds non-finite values in {broken[0]!r}")
    model = build()
    model.load_state_dict(state)
    return model, metadata


def load_or_train_baseline(
    name: str,
    data: DataSplits,
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    train_config: TrainConfig | None = None,
    channels_last: bool = False,
    init_from: str | os.PathLike[str] | None = None,
) -> Baseline:
    """The trained baseline of model ``name``: from the cache if present, else trained now.

    On a cache miss the model is initialised and trained with its registry recipe (seeded
    with ``seed``), its test accuracy is measured, and the checkpoint is saved. A cache file
    that cannot be read is retrained with a ``RuntimeWarning`` instead of failing.

    Args:
        name: a key of ``MODELS``, e.g. ``"lenet5"``.
        data: the splits of the model's data set.
        device: where to train and where the returned model lives.
        cache_dir: cache folder; see :func:`resolve_cache_dir` for the fallbacks.
        seed: seeds initialisation and training; replaces the recipe's own ``seed``.
        progress: show progress bars while training.
        train_config: a recipe to use instead of the registry's (tests use a tiny one);
            it is part of the cache key.
        channels_last: train in the channels-last memory format (about 15% faster on a
            CPU for convolutional networks; same recipe, so the same cache entry).
        init_from: a checkpoint (:func:`save_checkpoint` format) of the same model to start
            from instead of a seeded initialisation: a second one-cycle run over a trained
            baseline (a warm restart) when one run of a CPU-sized recipe falls short. Its
            SHA-256 is part of the cache key and recorded in the metadata.

    Returns:
        A :class:`Baseline` whose model is in eval mode on ``device``.

    Example:
        >>> baseline = load_or_train_baseline("lenet5", load_mnist())  # doctest: +SKIP
        >>> baseline.metadata["test_accuracy"]  # doctest: +SKIP
        0.991
    """
    entry = get_model_entry(name)
    _check_arguments(name, entry.dataset, data, train_config)
    config = dataclasses.replace(entry.train if train_config is None else train_config, seed=seed)
    init_state, init_sha256 = (None, None) if init_from is None else _read_init(init_from, entry.build)
    key = _cache_key(name, data, config, init_sha256)
    path = resolve_cache_dir(cache_dir) / f"{name}-{data.name}-{key[:16]}.safetensors"

    if path.exists():
        try:
            model, metadata = _load_cached(path, key, entry.build)
        except Exception as error:  # any unreadable file is worth a retrain, not a crash
            warnings.warn(
                f"cached baseline {path} could not be loaded ({error}); retraining it",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            return Baseline(model.to(device).eval(), metadata, trained_now=False, train_result=None)

    # A long CPU training (CIFAR ResNets) is killed and rerun: it continues from here.
    resume_from = path.with_name(f"{path.stem}.resume.pt")
    model, result = _train_baseline(entry.build, data, config, init_state=init_state, channels_last=channels_last,
                                    device=device, progress=progress, seed=seed, resume_from=resume_from)
    metadata = _trained_metadata(name, data, config, model, result, key=key, init_sha256=init_sha256, seed=seed,
                                 device=device)
    save_checkpoint(path, model, metadata)
    return Baseline(model, metadata, trained_now=True, train_result=result)


def _check_arguments(name: str, dataset: str, data: DataSplits, train_config: TrainConfig | None) -> None:
    if not isinstance(data, DataSplits):
        raise TypeError(f"data must be a DataSplits, got {type(data).__name__}")
    if data.name != dataset:
        raise ValueError(f"data is {data.name!r} but model {name!r} is trained on {dataset!r}")
    if train_config is not None and not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig or None, got {type(train_config).__name__}")


def _train_baseline(
    build: Callable[[], nn.Module],
    data: DataSplits,
    config: TrainConfig,
    *,
    init_state: dict[str, Tensor] | None,
    channels_last: bool,
    device: torch.device | str,
    progress: bool,
    seed: int,
    resume_from: Path,
) -> tuple[nn.Module, TrainResult]:
    """A model built (seeded, or from ``init_state``) and trained, in eval mode; its training record."""
    # Seeding before building makes the initial weights, not only the training, reproducible.
    torch.manual_seed(seed)
    model = build()
    if init_state is not None:
        model.load_state_dict(init_state)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    resume_from.parent.mkdir(parents=True, exist_ok=True)
    result = train_classifier(
        model, data, config, device=device, progress=progress, resume_from=resume_from
    )
    model.eval()
    return model, result


def _trained_metadata(
    name: str,
    data: DataSplits,
    config: TrainConfig,
    model: nn.Module,
    result: TrainResult,
    *,
    key: str,
    init_sha256: str | None,
    seed: int,
    device: torch.device | str,
) -> dict[str, Any]:
    """What the cached checkpoint of a baseline trained now records: recipe, data, accuracies and costs."""
    return {
        "cache_key": key,
        "model": name,
        "dataset": data.name,
        "data_source": data.source or data.name,
        "augment": None if data.augment is None else repr(data.augment),
        "train": config.to_dict(),
        "init_from_sha256": init_sha256,
        "seed": seed,
        "split_seed": data.split_seed,
        "validation_accuracy": result.best_validation_accuracy,
        "test_accuracy": accuracy(model, data.test, device=device),
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": result.seconds_per_epoch,
        "params": count_parameters(model),
        "flops": count_flops(model, data.test.images),
        "torch_version": str(torch.__version__),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
