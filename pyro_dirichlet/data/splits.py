"""Data held as preloaded, normalised tensors, and minibatches sliced from them.

A per-sample ``DataLoader`` is the bottleneck on a small CPU; MNIST and CIFAR-10 fit in
memory, so every split here is two tensors and a minibatch is one indexing operation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DataSplits", "Split", "VALIDATION_SIZE", "minibatches", "split_indices"]

#: Validation images carved from the training set of MNIST, CIFAR-10 and a torchvision data set
#: (of the latter at most a tenth of it), unless told otherwise.
VALIDATION_SIZE = 5000


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
