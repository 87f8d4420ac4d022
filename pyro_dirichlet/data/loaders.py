"""Data as any iterable of ``(inputs, targets)`` batches, with the preloaded :class:`Split` as its fast path.

A data set too large for memory, or a user's own, arrives as a ``torch.utils.data.DataLoader``
(or a list of batches, or any re-iterable of pairs). The training loop, the accuracy
measure and SVI read both kinds through :func:`iterate_batches`, so a ``Split`` keeps its
one-indexing-operation minibatches and a loader streams, holding only a few batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import NamedTuple, TypeAlias

import torch
from torch import Tensor

from pyro_dirichlet.data.splits import Split, minibatches

__all__ = ["Batch", "BatchSource", "count_batches", "count_examples", "iterate_batches"]

BatchSource: TypeAlias = "Split | Iterable[tuple[Tensor, Tensor]]"
"""What the loops accept as data: a preloaded :class:`Split`, or any re-iterable of
``(inputs, targets)`` tensor pairs such as a ``DataLoader``."""


class Batch(NamedTuple):
    """One minibatch: model inputs, targets, and (from a ``Split``) their positions in it.

    Args:
        inputs: the batch of model inputs, first dimension the batch.
        targets: one target per input, first dimension the batch.
        indices: int64 positions of the batch in the ``Split`` it was sliced from (what
            ``pyro.plate(..., subsample=...)`` takes), or ``None`` for a batch from a loader,
            whose positions are not known; its size is ``len(targets)``.
    """

    inputs: Tensor
    targets: Tensor
    indices: Tensor | None


def iterate_batches(
    data: BatchSource,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    name: str = "data",
) -> Iterator[Batch]:
    """Yield :class:`Batch` es from a ``Split`` or from any iterable of ``(inputs, targets)``.

    A ``Split`` is sliced by :func:`minibatches` with ``batch_size``, ``shuffle``,
    ``generator`` and ``drop_last``. Any other iterable is read as it is: its batches
    are its own, and the order is its own (a ``DataLoader``'s ``shuffle``/``sampler``), so
    those four arguments do not apply to it. Nothing is moved to a device here.

    Args:
        data: a ``Split``, a ``DataLoader``, a list of batches, or any iterable of pairs.
        batch_size: examples per minibatch sliced from a ``Split``.
        shuffle: visit a ``Split``'s examples in a random order drawn from ``generator``.
        generator: CPU generator of a ``Split``'s order; ``None`` uses torch's global one.
        drop_last: skip a ``Split``'s final minibatch smaller than ``batch_size``.
        name: what the caller calls ``data``, for error messages.

    Raises:
        TypeError: ``data`` is not iterable, or yields something other than a pair of
            tensors of one batch size; the message says which batch.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(5, 1, 2, 2), torch.arange(5)), batch_size=2)
        >>> [len(batch.targets) for batch in iterate_batches(loader, 2, shuffle=False)]
        [2, 2, 1]
    """
    if isinstance(data, Split):
        for indices, images, labels in minibatches(
            data, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
        ):
            yield Batch(images, labels, indices)
        return
    if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{name} must be a Split or an iterable of (inputs, targets) batches such as a DataLoader, "
            f"got {type(data).__name__}"
        )
    for position, item in enumerate(data):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"{name} must yield (inputs, targets) pairs, but batch {position} is a "
                f"{type(item).__name__}{f' of length {len(item)}' if isinstance(item, (tuple, list)) else ''}"
            )
        inputs, targets = item
        if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
            raise TypeError(
                f"{name} must yield pairs of tensors, but batch {position} holds "
                f"({type(inputs).__name__}, {type(targets).__name__})"
            )
        if inputs.dim() == 0 or targets.dim() == 0 or len(inputs) != len(targets):
            raise TypeError(
                f"{name}'s batch {position} has inputs of shape {tuple(inputs.shape)} and targets of "
                f"shape {tuple(targets.shape)}: both need the batch size as first dimension"
            )
        yield Batch(inputs, targets, None)


def count_examples(data: BatchSource, size: int | None = None) -> int:
    """How many examples ``data`` holds: the scale of a minibatch in the likelihood.

    A ``Split``'s length; else ``size`` when given; else ``len(data.dataset)`` for a
    ``DataLoader`` over a sized data set (the whole data set, also under a
    ``DistributedSampler``, which is what the likelihood's scale needs).

    Args:
        data: a ``Split`` or an iterable of batches.
        size: the number of examples, for iterables that cannot say it themselves.

    Raises:
        ValueError: ``size`` is not a positive int, or is missing where ``data`` cannot
            tell its own size.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> count_examples(DataLoader(TensorDataset(torch.zeros(7, 3), torch.zeros(7)), batch_size=2))
        7
    """
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        return size
    if isinstance(data, Split):
        return len(data)
    dataset = getattr(data, "dataset", None)
    if isinstance(dataset, Sized):
        return len(dataset)
    raise ValueError(
        f"the number of examples of a {type(data).__name__} is unknown: pass it as the data size "
        "(a DataLoader over a data set with len() says it itself)"
    )


def count_batches(data: BatchSource, batch_size: int, *, drop_last: bool = False) -> int | None:
    """Batches in one pass over ``data``, or ``None`` when an iterable has no ``len()``.

    Example:
        >>> count_batches(Split(torch.zeros(5, 1, 2, 2), torch.arange(5)), 2)
        3
    """
    if isinstance(data, Split):
        return len(data) // batch_size if drop_last else -(-len(data) // batch_size)
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:  # no len(), or a DataLoader over an IterableDataset without one
        return None
