"""Data sets held as preloaded, normalised tensors, and minibatches sliced from them.

A per-sample ``DataLoader`` is the bottleneck on a small CPU; MNIST fits in memory many
times over, so every split here is two tensors and a minibatch is one indexing operation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor

__all__ = [
    "DATA_ENV_VAR",
    "DataSplits",
    "DatasetMissingError",
    "Split",
    "load_dataset",
    "load_mnist",
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
    )


_LOADERS = {"mnist": load_mnist}


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, **kwargs: int
) -> DataSplits:
    """Load a data set by name.

    Args:
        name: one of ``"mnist"``.
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
