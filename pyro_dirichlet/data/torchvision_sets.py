"""torchvision's built-in classification data sets (``torchvision:FashionMNIST``, ...) as preloaded splits.

The files are looked for under the resolved data root (:func:`resolve_data_root`); only
the ``./data`` fallback may download, as for MNIST. A validation split is carved from the
training set by a seeded permutation; the set's own test split is the test split.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_dirichlet.data.errors import DatasetError
from pyro_dirichlet.data.normalization import Normalization
from pyro_dirichlet.data.imagefolder import ImageFolderSplits
from pyro_dirichlet.data.root import resolve_data_root
from pyro_dirichlet.data.splits import VALIDATION_SIZE, Split, split_indices

__all__ = ["TorchvisionDatasetError", "load_torchvision_dataset", "VALIDATION_SIZE"]


class TorchvisionDatasetError(DatasetError):
    """A torchvision data set that does not exist, has no train/test split, or whose files are not found."""

    def __init__(self, name: str, problem: str) -> None:
        ValueError.__init__(self, f"data set torchvision:{name} {problem}.")
        self.name, self.path, self.problem = name, Path(f"torchvision:{name}"), problem

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # type: ignore[override]
        return type(self), (self.name, self.problem)


def load_torchvision_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    normalize: Normalization | None = None,
    split_seed: int = 0,
) -> ImageFolderSplits:
    """``torchvision.datasets.<name>`` (one taking ``train=True/False``) read into train, validation and test splits.

    Args:
        name: the class name in ``torchvision.datasets``, e.g. ``"FashionMNIST"``, ``"KMNIST"``, ``"CIFAR100"``.
        data_dir: the data folder, or ``None`` for ``$PYRO_DIRICHLET_DATA``, then ``./data`` (with download).
        image_size: resize to this many pixels square.
        normalize: per-channel mean and std; ``None`` measures them on the training split.
        split_seed: seed of the permutation that carves the validation split.

    Raises:
        TorchvisionDatasetError: no such data set, one without a ``train`` argument, or its files not found.

    Example:
        >>> data = load_torchvision_dataset("FashionMNIST", "/data")  # doctest: +SKIP
    """
    import torchvision.datasets as datasets

    kind = getattr(datasets, name, None) if name.isidentifier() else None
    if not isinstance(kind, type) or not issubclass(kind, datasets.VisionDataset):
        raise TorchvisionDatasetError(name, "is not a data set of torchvision.datasets (e.g. FashionMNIST, "
                                                  "KMNIST, CIFAR100); for your own images use imagefolder:DIR")
    if "train" not in inspect.signature(kind).parameters:
        raise TorchvisionDatasetError(name, "has no train/test split argument (train=True/False); "
                                                  "put its images in an ImageFolder and use imagefolder:DIR")
    root, may_download = resolve_data_root(data_dir)
    try:
        train_set, test_set = (kind(str(root), train=train, download=may_download) for train in (True, False))
    except Exception as error:  # noqa: BLE001 - torchvision says "not found" as RuntimeError, a failed download as URLError
        reason = " ".join(str(error).split()).rstrip(".")[:200] or type(error).__name__
        raise TorchvisionDatasetError(name, f"cannot be read under {root.absolute()} ({reason}); put its files "
                                                  "there, or use --data-dir DIR or $PYRO_DIRICHLET_DATA") from None
    train_images, train_labels = _tensors(name, train_set, image_size)
    test_images, test_labels = _tensors(name, test_set, image_size)
    label_count = len(train_labels) + len(test_labels)
    known = getattr(train_set, "classes", None)
    for split, images, labels in (("training", train_images, train_labels), ("test", test_images, test_labels)):
        _check_labels(name, split, images, labels, len(known) if known else None)
    size = min(VALIDATION_SIZE, len(train_labels) // 10)
    keep, held_out = split_indices(len(train_labels), size, seed=split_seed)
    train_images, validation_images = train_images[keep], train_images[held_out]
    train_labels, validation_labels = train_labels[keep], train_labels[held_out]
    channels = train_images.shape[1]
    normalize = Normalization.of(train_images) if normalize is None else normalize.for_channels(channels)
    classes = tuple(str(c) for c in getattr(train_set, "classes", range(int(train_labels.max()) + 1)))
    return ImageFolderSplits(
        train=Split(normalize.apply(train_images), train_labels),
        validation=Split(normalize.apply(validation_images), validation_labels),
        test=Split(normalize.apply(test_images), test_labels),
        name=f"torchvision:{name}", num_classes=len(classes), input_shape=tuple(train_images.shape[1:]),
        split_seed=split_seed, source=f"torchvision:{name}", classes=classes, normalization=normalize,
        label_count=label_count,
    )


def _integer_labels(name: str, labels: np.ndarray) -> Tensor:
    """The labels as int64, refusing any that is not an integer (a label 2.7 would otherwise be truncated to class 2)."""
    if labels.dtype.kind == "f":
        fractional = [float(value) for value in labels.ravel() if not float(value).is_integer()]
        if fractional:
            raise TorchvisionDatasetError(name, f"has labels that are not class indices, such as {fractional[0]!r}: "
                                                "its label file is damaged")
        labels = labels.astype(np.int64)  # 2.0 is class 2
    elif labels.dtype.kind not in "iu":
        raise TorchvisionDatasetError(name, f"has labels of type {labels.dtype}, not class indices: its label file "
                                            "is damaged")
    return torch.as_tensor(labels, dtype=torch.int64)


def _check_labels(name: str, split: str, images: Tensor, labels: Tensor, classes: int | None) -> None:
    """One label per image, each a class index (below ``classes`` when the set names its classes), as for raw MNIST."""
    if labels.dim() != 1 or len(labels) != len(images):
        raise TorchvisionDatasetError(name, f"has {len(images)} {split} images but {labels.numel()} labels: its files "
                                            "do not belong together")
    if len(labels) and (int(labels.min()) < 0 or (classes is not None and int(labels.max()) >= classes)):
        bound = f"[0, {classes - 1}]" if classes is not None else "non-negative"
        raise TorchvisionDatasetError(name, f"has {split} labels in [{int(labels.min())}, {int(labels.max())}], not "
                                            f"the class indices {bound}: its label file is damaged")


def _tensors(name: str, dataset, image_size: int | None) -> tuple[Tensor, Tensor]:
    """Images ``(N, C, H, W)`` in [0, 1] and int64 labels: from the ``data``/``targets`` arrays most sets hold, else one by one."""
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is not None and targets is not None and np.asarray(data).dtype == np.uint8 and np.asarray(data).ndim in (3, 4):
        images = torch.as_tensor(np.asarray(data))
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        images = images.float().div_(255.0)
        labels = _integer_labels(name, np.asarray(targets))
    else:
        from torchvision.transforms.functional import pil_to_tensor

        pairs = [(pil_to_tensor(image), label) for image, label in dataset]
        images = torch.stack([image for image, _ in pairs]).float().div_(255.0)
        labels = _integer_labels(name, np.asarray([label for _, label in pairs]))
    if image_size is not None and images.shape[-2:] != (image_size, image_size):
        images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                                 antialias=True, align_corners=False).clamp_(0, 1)
    return images.contiguous(), labels
