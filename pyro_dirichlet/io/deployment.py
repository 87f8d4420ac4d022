"""What a deployment needs beside a pruned network's weights: its preprocessing, class names and source network.

``pyro-dirichlet prune`` and ``finetune`` write these into ``pruned.json``'s metadata
(:func:`deployment_metadata`); :func:`pyro_dirichlet.load_pruned` hands them back as the
loaded model's ``deployment`` attribute (:class:`Deployment`), so the code that serves the
network feeds it images prepared exactly as in training. This module imports only torch and
the standard library, so pruned models load without Pyro installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["Deployment", "deployment_metadata", "read_deployment"]


@dataclass(frozen=True)
class Deployment:
    """A pruned network's preprocessing, class names and the network it was pruned from.

    Attributes:
        classes: the class name of each output logit, in order (``None``: not recorded,
            e.g. a built-in data set).
        image_size: images were resized to this many pixels square (``None``: not resized).
        channel_order: ``"RGB"`` or ``"L"`` (grayscale): how images were decoded.
        mean: per-channel mean subtracted from pixels scaled to [0, 1].
        std: per-channel std they were divided by.
        input_shape: ``(C, H, W)`` of one image as the network takes it.
        source_sha256: SHA-256 of the unpruned network's weights as the run stored them
            (``baseline.safetensors``).
        weights_sha256: SHA-256 of the user's own weights file (``--weights``), if one was given.
        metadata: everything the spec's metadata holds.

    Example:
        >>> model = load_pruned("runs/mine/pruned", factory="mynets:factory")  # doctest: +SKIP
        >>> logits = model(model.deployment.preprocess(images))  # doctest: +SKIP
    """

    classes: tuple[str, ...] | None = None
    image_size: int | None = None
    channel_order: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    source_sha256: str | None = None
    weights_sha256: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Deployment:
        """Read what :func:`deployment_metadata` wrote; a field that is absent (an older file) stays ``None``."""
        pre = metadata.get("preprocessing") if isinstance(metadata.get("preprocessing"), Mapping) else {}
        norm = pre.get("normalize") if isinstance(pre.get("normalize"), Mapping) else {}
        source = metadata.get("source") if isinstance(metadata.get("source"), Mapping) else {}

        def numbers(values: Any, kind: type) -> tuple[Any, ...] | None:
            return tuple(kind(v) for v in values) if isinstance(values, list) else None

        classes = metadata.get("classes")
        return cls(
            classes=tuple(str(c) for c in classes) if isinstance(classes, list) else None,
            image_size=pre.get("image_size") if isinstance(pre.get("image_size"), int) else None,
            channel_order=pre.get("channel_order") if isinstance(pre.get("channel_order"), str) else None,
            mean=numbers(norm.get("mean"), float),
            std=numbers(norm.get("std"), float),
            input_shape=numbers(pre.get("input_shape"), int),
            source_sha256=source.get("baseline_sha256"),
            weights_sha256=source.get("weights_sha256"),
            metadata=dict(metadata),
        )

    def preprocess(self, images: Tensor) -> Tensor:
        """Normalise ``images`` ``(N, C, H, W)``, already decoded in :attr:`channel_order`, resized and scaled to [0, 1].

        Raises:
            ValueError: no normalisation is recorded.
        """
        if self.mean is None or self.std is None:
            raise ValueError("this pruned model records no normalisation: feed it images as its training run did.")
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std


def deployment_metadata(manifest: Mapping[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The ``preprocessing``, ``classes`` and ``source`` entries of a pruned network's metadata, from the run's manifest.

    Args:
        manifest: the run directory's manifest (the train step's data record and files).
        input_shape: ``(C, H, W)`` of one image the network takes.
    """
    data = manifest.get("data", {})
    train = manifest.get("steps", {}).get("train", {})
    channels = input_shape[0] if input_shape else None
    preprocessing = {
        "input_shape": list(input_shape),
        "channel_order": {1: "L", 3: "RGB"}.get(channels) if data.get("classes") else None,
        "image_size": data.get("image_size"),
        "scale": "pixel values / 255, in [0, 1]",
        "normalize": data.get("normalize"),
    }
    weights = manifest.get("weights") or {}
    source = {"baseline_sha256": train.get("sha256", {}).get("baseline.safetensors"),
              "weights_file": weights.get("file"), "weights_sha256": weights.get("sha256")}
    return {"preprocessing": preprocessing, "classes": data.get("classes"), "source": source}


def read_deployment(path_prefix: str | os.PathLike[str]) -> Deployment:
    """The :class:`Deployment` a saved pruned model's spec (``<prefix>.json``) records, without loading the model.

    Raises:
        ValueError: the spec is not JSON or holds no metadata mapping.

    Example:
        >>> read_deployment("runs/mine/pruned").classes  # doctest: +SKIP
        ('apple', 'bird', 'cat', 'dog', 'eel')
    """
    path = Path(f"{os.fspath(path_prefix)}.json")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"spec file {str(path)!r} is not a pruned model's JSON spec ({error}).") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"spec file {str(path)!r} holds no metadata.")
    return Deployment.from_metadata(metadata)
