"""Data sets held as preloaded, normalised tensors, and minibatches from them or from any iterable of batches.

One idea a module: ``splits`` (the containers and minibatching), ``mnist`` and ``cifar10``
(reading each data set's files), ``loaders`` (any iterable of batches, a ``Split``
its fast path), ``augment`` (vectorised augmentation), ``root`` (which
folder the data comes from), ``errors`` (what a loader raises) and ``catalog`` (data sets
by name).
"""

from pyro_dirichlet.data.augment import RandomCropFlip
# _LOADERS too: tests swap a loader out by name (monkeypatch.setitem(data._LOADERS, ...)).
from pyro_dirichlet.data.catalog import _LOADERS, DATASETS, load_dataset
from pyro_dirichlet.data.cifar10 import CIFAR10_CLASSES, load_cifar10, read_image_zip
from pyro_dirichlet.data.errors import DatasetError, DatasetMissingError
from pyro_dirichlet.data.loaders import Batch, BatchSource, count_batches, count_examples, iterate_batches
from pyro_dirichlet.data.mnist import load_mnist, read_idx
from pyro_dirichlet.data.root import DATA_ENV_VAR, resolve_data_root
from pyro_dirichlet.data.splits import DataSplits, Split, minibatches, split_indices

__all__ = [
    "Batch",
    "BatchSource",
    "CIFAR10_CLASSES",
    "DATA_ENV_VAR",
    "DATASETS",
    "DataSplits",
    "DatasetError",
    "DatasetMissingError",
    "RandomCropFlip",
    "Split",
    "count_batches",
    "count_examples",
    "iterate_batches",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
    "minibatches",
    "read_idx",
    "read_image_zip",
    "resolve_data_root",
    "split_indices",
]
