"""Data sets held as preloaded, normalised tensors, and minibatches sliced from them.

A per-sample ``DataLoader`` is the bottleneck on a small CPU; MNIST and CIFAR-10 fit in
memory, so every split here is two tensors and a minibatch is one indexing operation.
Augmentation, where a data set has one, is a vectorised function applied per minibatch.
"""

from __future__ import annotations

import dataclasses

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import Tensor

__all__ = [
    "CIFAR10_CLASSES",
    "DATA_ENV_VAR",
    "DATASETS",
    "DataSplits",
    "DatasetMissingError",
    "RandomCropFlip",
    "Split",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
    "read_image_zip",
    "minibatches",
    "resolve_data_root",
    "split_indices",
]

DATA_ENV_VAR = "PYRO_DIRICHLET_DATA"
"""Environment variable naming the folder that holds the data sets (e.g. ``MNIST/raw``)."""

_DEFAULT_DATA_DIR = Path("data")

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def resolve_data_root(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Decide which folder to read data sets from.

    The order is: the ``--data-dir`` command-line flag (passed here as ``data_dir``), then
    the ``PYRO_DIRICHLET_DATA`` environment variable, then ``./data``. Only the ``./data``
    fallback may download: a folder the user named explicitly is never written to.

    Args:
        data_dir: folder given on the command line, or ``None``.

    Returns:
        ``(root, may_download)``.

    Example:
        >>> root, may_download = resolve_data_root("/srv/data")
        >>> str(root), may_download
        ('/srv/data', False)
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path or None, got {type(data_dir).__name__}")
        return Path(data_dir).expanduser(), False
    from_env = os.environ.get(DATA_ENV_VAR)
    # An empty variable (``PYRO_DIRICHLET_DATA= cmd``) means "unset", not "the cwd".
    if from_env:
        return Path(from_env).expanduser(), False
    return _DEFAULT_DATA_DIR, True


class DatasetMissingError(FileNotFoundError):
    """A data set's files are not where the project looked for them.

    The message names the data set, the folder searched, every file expected, and the
    three ways to point the project at the data.

    Args:
        dataset: display name, e.g. ``"MNIST"``.
        root: the data folder that was searched.
        expected: every file the loader needs.
        reason: what went wrong (files missing, download failed), or ``""``.

    Example:
        >>> try:
        ...     load_mnist("/nowhere")
        ... except DatasetMissingError as error:
        ...     print(error.expected[0])
        /nowhere/MNIST/raw/train-images-idx3-ubyte
    """

    def __init__(self, dataset: str, root: Path, expected: list[Path], reason: str = "") -> None:
        # Absolute paths, so the message is unambiguous whatever the working directory.
        files = "\n".join(f"  {path.absolute()}" for path in expected)
        message = (
            f"{dataset} not found in {root.absolute()}{': ' + reason if reason else ''}.\n"
            f"Expected these files:\n{files}\n"
            "Point the project at the data in one of three ways:\n"
            "  --data-dir DIR on the command line,\n"
            f"  the {DATA_ENV_VAR}=DIR environment variable,\n"
            "  or neither, to use ./data, where torchvision downloads it when there is "
            "internet access."
        )
        super().__init__(message)
        self.dataset = dataset
        self.root = root
        self.expected = expected
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, Path, list[Path], str]]:
        # The default reduction re-calls __init__ with the message alone, which would fail
        # when the error crosses a process boundary (multiprocessing, pytest-xdist).
        return type(self), (self.dataset, self.root, self.expected, self.reason)


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set: normalised images and their labels, as whole tensors.

    ``eq=False`` because comparing tensors element-wise has no single truth value.

    Args:
        images: float32 tensor of shape ``(N, C, H, W)``, already normalised.
        labels: int64 tensor of shape ``(N,)``.

    Example:
        >>> split = Split(torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
        >>> len(split.subset(2, seed=0))
        2
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.float32:
            raise TypeError("images must be a float32 tensor")
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64:
            raise TypeError("labels must be an int64 tensor")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},) to match images, "
                f"got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, n: int, *, seed: int) -> Split:
        """A seeded random subset of ``n`` examples, kept in their original order.

        Args:
            n: number of examples, ``1 <= n <= len(self)``.
            seed: seed of the random choice; the same seed picks the same examples.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if not 1 <= n <= len(self):
            raise ValueError(f"n must be between 1 and the split's size {len(self)}, got {n}")
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(self), generator=generator)[:n].sort().values
        chosen = chosen.to(self.labels.device)
        return Split(self.images[chosen], self.labels[chosen])

    def to(self, device: torch.device | str) -> Split:
        """The same split with both tensors on ``device``."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A data set divided into train, validation and test splits.

    Every model selection (best epoch, hyper-parameters) uses ``validation``; ``test`` is
    only ever reported.

    Args:
        train: the split that gradients are computed on.
        validation: held out from the training set, for model selection.
        test: the data set's official test set.
        name: data set name as ``load_dataset`` knows it, e.g. ``"mnist"``.
        num_classes: number of labels.
        input_shape: shape of one example, e.g. ``(1, 28, 28)``.
        split_seed: seed of the permutation that carved ``validation`` out of the
            training set; recorded so a trained baseline can say which split it saw.
        source: which copy of the data set the pixels came from, e.g. ``"cifar10-jpeg"``
            (the JPEG re-encoding, whose accuracies differ slightly from published ones) or
            ``"cifar10"`` (the official batches); ``""`` when not recorded.
        augment: ``(images, generator) -> images``, applied by the training loop to each
            training minibatch only (never to validation or test, nor while fitting
            switches); ``None`` for no augmentation.

    Example:
        >>> data = load_mnist()  # doctest: +SKIP
        >>> len(data.train), len(data.validation), len(data.test)  # doctest: +SKIP
        (55000, 5000, 10000)
    """

    train: Split
    validation: Split
    test: Split
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    split_seed: int = 0
    source: str = ""
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None

    def subset(self, *, train: int | None = None, validation: int | None = None, test: int | None = None,
               seed: int = 0) -> DataSplits:
        """The same data set with seeded random subsets of the splits given a size (capped at the split's size).

        For smoke runs and fast tests; a split given no size is kept whole.

        Example:
            >>> small = data.subset(train=2000, validation=500, test=500)  # doctest: +SKIP
        """
        def cut(split: Split, size: int | None) -> Split:
            return split if size is None else split.subset(min(size, len(split)), seed=seed)

        return dataclasses.replace(
            self, train=cut(self.train, train), validation=cut(self.validation, validation), test=cut(self.test, test)
        )


def split_indices(num_examples: int, validation_size: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """Divide ``range(num_examples)`` into train and validation indices by a seeded permutation.

    Both index tensors are sorted, so the splits keep the source's order.

    Args:
        num_examples: size of the set being divided.
        validation_size: how many indices go to validation, ``0 < validation_size < num_examples``.
        seed: seed of the permutation.

    Returns:
        ``(train_indices, validation_indices)``, disjoint and together covering every index.

    Example:
        >>> train, validation = split_indices(10, 3, seed=0)
        >>> len(train), len(validation)
        (7, 3)
    """
    if isinstance(validation_size, bool) or not isinstance(validation_size, int):
        raise TypeError(f"validation_size must be an int, got {type(validation_size).__name__}")
    if not 0 < validation_size < num_examples:
        raise ValueError(
            f"validation_size must be between 1 and {num_examples - 1}, got {validation_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_examples, generator=generator)
    validation = permutation[:validation_size].sort().values
    train = permutation[validation_size:].sort().values
    return train, validation


def _normalise_mnist(images: Tensor) -> Tensor:
    pixels = images.to(torch.float32).div_(255.0)
    return pixels.sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    validation_size: int = 5000,
    split_seed: int = 0,
) -> DataSplits:
    """Load MNIST as normalised tensors: 55k train, 5k validation, 10k test by default.

    The validation split is drawn from the 60k official training images by a permutation
    seeded with ``split_seed``; the official test set is kept whole. Images are scaled to
    [0, 1] and normalised with mean 0.1307 and std 0.3081, shape ``(N, 1, 28, 28)``.

    Args:
        data_dir: folder holding ``MNIST/raw``; see :func:`resolve_data_root` for the
            fallbacks when it is ``None``.
        validation_size: number of training images held out for validation.
        split_seed: seed of the train/validation permutation.

    Raises:
        DatasetMissingError: the IDX files are absent (and could not be downloaded).

    Example:
        >>> data = load_mnist("/work/shared/data")  # doctest: +SKIP
        >>> data.train.images.shape  # doctest: +SKIP
        torch.Size([55000, 1, 28, 28])
    """
    import torchvision

    root, may_download = resolve_data_root(data_dir)
    expected = [root / "MNIST" / "raw" / name for name in MNIST_FILES]
    missing = [path for path in expected if not path.is_file()]
    if missing and not may_download:
        raise DatasetMissingError("MNIST", root, expected, reason=f"{len(missing)} file(s) missing")
    try:
        # Only the raw tensors are used: a per-item transform would cost a Python call per
        # image, and the normalisation below does the same work in one vectorised pass.
        official_train = torchvision.datasets.MNIST(root=root, train=True, download=may_download)
        official_test = torchvision.datasets.MNIST(root=root, train=False, download=may_download)
    except (RuntimeError, URLError, OSError) as error:
        if not missing:
            raise
        raise DatasetMissingError(
            "MNIST", root, expected, reason=f"download failed ({error})"
        ) from error

    images = _normalise_mnist(official_train.data)
    labels = official_train.targets.to(torch.int64)
    train_index, validation_index = split_indices(len(labels), validation_size, seed=split_seed)
    return DataSplits(
        train=Split(images[train_index], labels[train_index]),
        validation=Split(images[validation_index], labels[validation_index]),
        test=Split(_normalise_mnist(official_test.data), official_test.targets.to(torch.int64)),
        name="mnist",
        num_classes=10,
        input_shape=(1, 28, 28),
        split_seed=split_seed,
        source="mnist",
    )


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
"""Class names in label order (alphabetical, which is also the official label order)."""

_CIFAR10_JPEG_DIR = "cifar10-jpeg"
_CIFAR10_JPEG_ZIPS = ("train.zip", "test.zip")
_CIFAR10_BATCHES_DIR = "cifar-10-batches-py"
_CIFAR10_BATCHES = (
    "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
    "test_batch", "batches.meta",
)
# Bumped whenever the decoded cache's content changes meaning, so old files are not reused.
_JPEG_CACHE_FORMAT = 2  # 2: decoded with Pillow


@dataclass(frozen=True)
class RandomCropFlip:
    """The standard CIFAR augmentation, vectorised: pad, random crop back, random flip.

    Each image of the batch is padded by ``padding`` pixels on every side with ``fill``,
    cropped at a uniformly random offset back to its own size, and mirrored left-right with
    probability 1/2. All random numbers come from ``generator`` (a CPU generator), so the
    same generator state gives the same batch on any device.

    Args:
        padding: pixels added on each side before cropping.
        fill: value of the padding, one per channel (or one for all) in the images' own
            scale; for normalised images, ``-mean / std`` pads with black as torchvision's
            ``RandomCrop(32, padding=4)`` before ``Normalize`` does.

    Example:
        >>> augment = RandomCropFlip(padding=4)
        >>> augment(torch.zeros(8, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """

    padding: int = 4
    fill: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {self.padding!r}")
        if not isinstance(self.fill, tuple) or not self.fill:
            raise TypeError(f"fill must be a non-empty tuple of floats, got {self.fill!r}")

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError("images must be a tensor of shape (N, C, H, W)")
        if len(self.fill) not in (1, images.shape[1]):
            raise ValueError(
                f"fill has {len(self.fill)} values but the images have {images.shape[1]} channels"
            )
        n, channels, height, width = images.shape
        p = self.padding
        # Random numbers on the CPU generator first, then moved: reproducible on any device.
        rows = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        cols = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        device = images.device
        fill = torch.tensor(self.fill, dtype=images.dtype, device=device).view(-1, 1, 1)
        padded = fill.expand(channels, height + 2 * p, width + 2 * p).repeat(n, 1, 1, 1)
        padded[:, :, p : p + height, p : p + width] = images
        row_index = (rows.to(device)[:, None] + torch.arange(height, device=device))  # (N, H)
        col_index = cols.to(device)[:, None] + torch.arange(width, device=device)  # (N, W)
        # A flipped image reads its columns right to left.
        col_index = torch.where(flip.to(device)[:, None], col_index.flip(1), col_index)
        batch_index = torch.arange(n, device=device)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[batch_index, row_index[:, :, None], col_index[:, None, :]]
        return crops.permute(0, 3, 1, 2).contiguous()


def read_image_zip(
    path: str | os.PathLike[str],
    classes: Sequence[str] = CIFAR10_CLASSES,
    *,
    max_per_class: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Decode a zip of ``<split>/<class name>/<file>.jpg`` members into uint8 tensors.

    Members are read in the order (class, file name), so the result does not depend on the
    order inside the archive; the label of an image is its class's index in ``classes``.
    Folders and non-JPEG members are skipped. Decoding uses Pillow (torchvision's own JPEG
    decoder is deprecated from torchvision 0.29 on).

    Args:
        path: the zip archive.
        classes: class names in label order.
        max_per_class: decode only the first this many files of each class (tests use it).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, H, W)`` and int64 ``(N,)``.

    Raises:
        ValueError: a member lies in a folder not named in ``classes``, or the images do not
            all have one shape; the message names the member.

    Example:
        >>> images, labels = read_image_zip("cifar10-jpeg/test.zip")  # doctest: +SKIP
        >>> images.shape, labels[:3].tolist()  # doctest: +SKIP
        (torch.Size([10000, 3, 32, 32]), [0, 0, 0])
    """
    import numpy as np
    from PIL import Image

    label_of = {name: index for index, name in enumerate(classes)}
    with zipfile.ZipFile(path) as archive:
        members: list[tuple[int, str]] = []
        for name in archive.namelist():
            if name.endswith("/") or not name.lower().endswith((".jpg", ".jpeg")):
                continue
            parts = name.split("/")
            if len(parts) < 2 or parts[-2] not in label_of:
                raise ValueError(
                    f"{path}: member {name!r} is not in a folder named after one of the classes "
                    f"{', '.join(classes)}"
                )
            members.append((label_of[parts[-2]], name))
        members.sort()
        if max_per_class is not None:
            taken: dict[int, int] = {}
            kept = []
            for label, name in members:
                taken[label] = taken.get(label, 0) + 1
                if taken[label] <= max_per_class:
                    kept.append((label, name))
            members = kept
        if not members:
            raise ValueError(f"{path} holds no JPEG images")
        images = []
        for _, name in members:
            with Image.open(io.BytesIO(archive.read(name))) as decoded:
                pixels = np.asarray(decoded.convert("RGB"))
            image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
            if images and image.shape != images[0].shape:
                raise ValueError(
                    f"{path}: member {name!r} has shape {tuple(image.shape)}, the first image "
                    f"{tuple(images[0].shape)}"
                )
            images.append(image)
    labels = torch.tensor([label for label, _ in members], dtype=torch.int64)
    return torch.stack(images), labels


def _jpeg_cache_path(zips: Sequence[Path], cache_dir: str | os.PathLike[str] | None) -> Path:
    from pyro_dirichlet.cache import resolve_cache_dir

    # Size and modification time identify a changed archive without hashing 60 MB each load.
    described = []
    for path in zips:
        stat = path.stat()
        described.append([path.name, stat.st_size, stat.st_mtime_ns])
    description = {"format": _JPEG_CACHE_FORMAT, "classes": CIFAR10_CLASSES, "zips": described}
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return resolve_cache_dir("datasets", cache_dir) / f"cifar10-jpeg-{key[:16]}.safetensors"


def _load_cifar10_jpeg(
    folder: Path, cache_dir: str | os.PathLike[str] | None
) -> dict[str, Tensor]:
    from safetensors.torch import load_file
    from safetensors.torch import save as serialize

    from pyro_dirichlet.atomic import atomic_write

    zips = [folder / name for name in _CIFAR10_JPEG_ZIPS]
    cache_path = _jpeg_cache_path(zips, cache_dir)
    if cache_path.is_file():
        try:
            return load_file(str(cache_path))
        except Exception:  # an unreadable cache is decoded again, not a failure
            pass
    train_images, train_labels = read_image_zip(zips[0])
    test_images, test_labels = read_image_zip(zips[1])
    tensors = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache_path, "wb") as handle:
            handle.write(serialize(tensors))
    except OSError:
        pass  # a read-only cache folder costs a decode per load, not the load itself
    return tensors


def _load_cifar10_batches(root: Path, may_download: bool) -> dict[str, Tensor]:
    import torchvision

    tensors = {}
    for split, train in (("train", True), ("test", False)):
        official = torchvision.datasets.CIFAR10(root=root, train=train, download=may_download)
        # (N, H, W, C) uint8 -> (N, C, H, W), the layout of the JPEG copy's cache.
        tensors[f"{split}_images"] = torch.from_numpy(official.data).permute(0, 3, 1, 2).contiguous()
        tensors[f"{split}_labels"] = torch.tensor(official.targets, dtype=torch.int64)
    return tensors


def _normalise_cifar(images: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    validation_size: int = 5000,
    split_seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DataSplits:
    """Load CIFAR-10 as normalised tensors: 45k train, 5k validation, 10k test by default.

    Two copies are recognised, in this order:

    1. ``<root>/cifar10-jpeg/train.zip`` and ``test.zip``: the JPEG re-encoding (zip
       members ``<split>/<class name>/<NNNN>.jpg``). Decoded once into uint8 tensors and
       cached as a safetensors file in the ``datasets`` cache (see
       :func:`pyro_dirichlet.cache.resolve_cache_dir`); the cache key covers each zip's size
       and modification time, so a changed archive is decoded again. ``source`` is
       ``"cifar10-jpeg"``: accuracies on it are close to, not equal to, published ones.
    2. ``<root>/cifar-10-batches-py/``: the official python batches, through
       ``torchvision.datasets.CIFAR10`` (downloaded there when the root is ``./data``).
       ``source`` is ``"cifar10"``.

    The validation split is drawn from the 50k training images by a permutation seeded with
    ``split_seed``. Images are scaled to [0, 1] and normalised per channel with mean
    (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616), shape ``(N, 3, 32, 32)``.
    ``augment`` is :class:`RandomCropFlip` (4 pixels of black padding, random crop 32,
    horizontal flip), which the training loop applies to training minibatches only.

    Args:
        data_dir: folder holding ``cifar10-jpeg/`` or ``cifar-10-batches-py/``; see
            :func:`resolve_data_root` for the fallbacks when it is ``None``.
        validation_size: number of training images held out for validation.
        split_seed: seed of the train/validation permutation.
        cache_dir: folder for the decoded JPEG copy, or ``None`` for the fallbacks.

    Raises:
        DatasetMissingError: neither copy is present (and none could be downloaded).

    Example:
        >>> data = load_cifar10("/work/shared/data")  # doctest: +SKIP
        >>> data.train.images.shape, data.source  # doctest: +SKIP
        (torch.Size([45000, 3, 32, 32]), 'cifar10-jpeg')
    """
    root, may_download = resolve_data_root(data_dir)
    jpeg_folder = root / _CIFAR10_JPEG_DIR
    jpeg_files = [jpeg_folder / name for name in _CIFAR10_JPEG_ZIPS]
    batch_files = [root / _CIFAR10_BATCHES_DIR / name for name in _CIFAR10_BATCHES]
    if all(path.is_file() for path in jpeg_files):
        tensors = _load_cifar10_jpeg(jpeg_folder, cache_dir)
        source = "cifar10-jpeg"
    else:
        missing = [path for path in batch_files if not path.is_file()]
        reason = (
            "neither the JPEG copy (cifar10-jpeg/train.zip and test.zip) nor the official "
            "python batches (cifar-10-batches-py/) are there; either layout will do"
        )
        if missing and not may_download:
            raise DatasetMissingError("CIFAR-10", root, jpeg_files + batch_files, reason=reason)
        try:
            tensors = _load_cifar10_batches(root, may_download)
        except (RuntimeError, URLError, OSError) as error:
            if not missing:
                raise
            raise DatasetMissingError(
                "CIFAR-10", root, jpeg_files + batch_files, reason=f"{reason}; download failed ({error})"
            ) from error
        source = "cifar10"

    labels = tensors["train_labels"].to(torch.int64)
    train_index, validation_index = split_indices(len(labels), validation_size, seed=split_seed)
    train_images = tensors["train_images"]
    # Normalised split by split, so the full float32 training set never exists twice.
    return DataSplits(
        train=Split(_normalise_cifar(train_images[train_index]), labels[train_index]),
        validation=Split(
            _normalise_cifar(train_images[validation_index]), labels[validation_index]
        ),
        test=Split(_normalise_cifar(tensors["test_images"]), tensors["test_labels"].to(torch.int64)),
        name="cifar10",
        num_classes=10,
        input_shape=(3, 32, 32),
        split_seed=split_seed,
        source=source,
        augment=RandomCropFlip(
            padding=4, fill=tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD))
        ),
    )


_LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}
#: The data set names :func:`load_dataset` knows.
DATASETS = tuple(sorted(_LOADERS))


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> DataSplits:
    """Load a data set by name.

    Args:
        name: one of ``"mnist"``, ``"cifar10"``.
        data_dir: folder holding the data sets, or ``None`` for the fallbacks.
        **kwargs: passed to the data set's loader (e.g. ``validation_size``, ``split_seed``).

    Example:
        >>> data = load_dataset("mnist", "/work/shared/data")  # doctest: +SKIP
    """
    try:
        loader = _LOADERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown data set name {name!r}; valid choices: {', '.join(sorted(_LOADERS))}"
        ) from None
    return loader(data_dir, **kwargs)


def minibatches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(indices, images, labels)`` minibatches sliced from a preloaded split.

    ``indices`` index into ``split`` (so ``split.images[indices]`` is ``images``) and live on
    the split's device; Pyro's ``pyro.plate(..., subsample=indices)`` needs them. One epoch
    visits every example once. Only the permutation and each batch are materialised.

    Args:
        split: the data to iterate over.
        batch_size: examples per minibatch; the last one may be smaller.
        shuffle: visit examples in a random order (drawn from ``generator``).
        generator: CPU random generator for the order; ``None`` uses torch's global one.
        drop_last: skip a final minibatch smaller than ``batch_size``.

    Example:
        >>> split = Split(torch.zeros(5, 1, 2, 2), torch.arange(5))
        >>> [idx.tolist() for idx, _, _ in minibatches(split, 2, shuffle=False)]
        [[0, 1], [2, 3], [4]]
    """
    if not isinstance(split, Split):
        raise TypeError(f"split must be a Split, got {type(split).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(split)
    device = split.labels.device
    if shuffle:
        # randperm with a CPU generator must run on the CPU; one copy per epoch to the
        # split's device is cheap next to the batches themselves.
        order = torch.randperm(n, generator=generator).to(device)
    else:
        order = torch.arange(n, device=device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if shuffle:
            indices = order[start:end]
            yield indices, split.images[indices], split.labels[indices]
        else:
            # Contiguous slices are views: no copy at all when reading in order.
            yield order[start:end], split.images[start:end], split.labels[start:end]
