"""The data sets known by name, for the command line and the configuration files."""

from __future__ import annotations

import os
from typing import Any

from pyro_dirichlet.data.cifar10 import load_cifar10
from pyro_dirichlet.data.mnist import load_mnist
from pyro_dirichlet.data.splits import DataSplits

__all__ = ["DATASETS", "load_dataset"]

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

