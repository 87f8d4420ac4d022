"""The data sets known by name, and a user's own, for the command line and the configuration files.

A data set is named ``mnist`` or ``cifar10`` (the project's own loaders), ``imagefolder:DIR``
(a user's images, :mod:`pyro_dirichlet.data.imagefolder`) or ``torchvision:NAME``
(torchvision's built-in sets, :mod:`pyro_dirichlet.data.torchvision_sets`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pyro_dirichlet.data.cifar10 import load_cifar10
from pyro_dirichlet.data.mnist import load_mnist
from pyro_dirichlet.data.splits import DataSplits

__all__ = ["DATASETS", "SOURCES", "is_user_source", "check_dataset_name", "load_dataset"]

_LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}
#: The data set names :func:`load_dataset` knows.
DATASETS = tuple(sorted(_LOADERS))
#: The prefixes of a user's data sources: ``imagefolder:DIR``, ``torchvision:NAME``.
SOURCES = ("imagefolder", "torchvision")
_SOURCE = re.compile(r"(imagefolder|torchvision):(.+)", re.DOTALL)


def is_user_source(name: Any) -> bool:
    """Whether ``name`` is ``imagefolder:DIR`` or ``torchvision:NAME`` rather than a data set the project knows.

    Example:
        >>> is_user_source("imagefolder:/data/flowers"), is_user_source("mnist")
        (True, False)
    """
    return isinstance(name, str) and _SOURCE.fullmatch(name) is not None


def check_dataset_name(name: str) -> str:
    """``name`` if :func:`load_dataset` can read it, else a ``ValueError`` listing what it reads."""
    if name in _LOADERS or is_user_source(name):
        return name
    raise ValueError(f"unknown data set name {name!r}; valid choices: {', '.join(sorted(_LOADERS))}, "
                     "imagefolder:DIR or torchvision:NAME")


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> DataSplits:
    """Load a data set by name.

    Args:
        name: ``"mnist"``, ``"cifar10"``, ``"imagefolder:DIR"`` or ``"torchvision:NAME"``.
        data_dir: folder holding the data sets, or ``None`` for the fallbacks (not used by
            ``imagefolder:``, whose folder is named).
        **kwargs: passed to the data set's loader (e.g. ``validation_size``, ``split_seed``;
            ``image_size`` and ``normalize`` for a user's data).

    Example:
        >>> data = load_dataset("mnist", "/work/shared/data")  # doctest: +SKIP
        >>> flowers = load_dataset("imagefolder:/data/flowers", image_size=64)  # doctest: +SKIP
    """
    source = _SOURCE.fullmatch(name) if isinstance(name, str) else None
    if source is not None and source.group(1) == "imagefolder":
        from pyro_dirichlet.data.imagefolder import load_image_folder

        return load_image_folder(source.group(2), **kwargs)
    if source is not None:
        from pyro_dirichlet.data.torchvision_sets import load_torchvision_dataset

        return load_torchvision_dataset(source.group(2), data_dir, **kwargs)
    try:
        loader = _LOADERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown data set name {name!r}; valid choices: {', '.join(sorted(_LOADERS))}"
        ) from None
    return loader(data_dir, **kwargs)
