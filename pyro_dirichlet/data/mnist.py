"""MNIST: the four IDX files, checked and read into normalised train, validation and test splits."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor

from pyro_dirichlet.data.errors import DatasetError, DatasetMissingError
from pyro_dirichlet.data.root import resolve_data_root
from pyro_dirichlet.data.splits import VALIDATION_SIZE, DataSplits, Split, split_indices

__all__ = ["MNIST_FILES", "MNIST_MEAN", "MNIST_STD", "load_mnist", "read_idx"]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_IMAGE_SIZE = (28, 28)
MNIST_NUM_CLASSES = 10

# An IDX magic number is two zero bytes, a type code, and the number of dimensions.
_UNSIGNED_BYTE = 0x08


def read_idx(path: str | os.PathLike[str], *, dims: int) -> Tensor:
    """Read an IDX file of unsigned bytes (the MNIST format) into a uint8 tensor.

    The header is checked against the file before any data is trusted: the magic number
    must say unsigned bytes in ``dims`` dimensions, and the file must hold exactly the
    bytes its header announces, so a truncated file, a zero-length file, or a header that
    announces fewer items than the file holds (which would silently drop the rest) is an
    error rather than a smaller data set.

    Args:
        path: the IDX file.
        dims: number of dimensions the file must have: 1 for labels, 3 for images.

    Returns:
        uint8 tensor whose shape is the header's dimensions.

    Raises:
        DatasetError: the file is not such an IDX file; the message names it.

    Example:
        >>> labels = read_idx("MNIST/raw/t10k-labels-idx1-ubyte", dims=1)  # doctest: +SKIP
        >>> labels.shape  # doctest: +SKIP
        torch.Size([10000])
    """
    path = Path(path)
    header_size = 4 + 4 * dims
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        if file_size == 0:
            raise DatasetError(path, "is empty (zero bytes)")
        header = handle.read(header_size)
        if len(header) < header_size:
            raise DatasetError(
                path, f"is truncated: {file_size} bytes, shorter than the {header_size}-byte header "
                f"of a {dims}-dimensional IDX file"
            )
        expected_magic = (_UNSIGNED_BYTE << 8) | dims
        magic, *shape = struct.unpack(f">{1 + dims}I", header)
        if magic != expected_magic:
            raise DatasetError(
                path, f"starts with magic number 0x{magic:08x}, not 0x{expected_magic:08x} "
                f"(unsigned bytes in {dims} dimension{'s' if dims > 1 else ''})"
            )
        data_size = math.prod(shape)
        if file_size != header_size + data_size:
            announced = " x ".join(str(size) for size in shape)
            state = "truncated" if file_size < header_size + data_size else "longer than its header says"
            raise DatasetError(
                path, f"is {state}: its header announces {announced} bytes of data "
                f"({header_size + data_size} bytes in all) but the file has {file_size} bytes"
            )
        # A writable buffer read in one go: torch.frombuffer warns about read-only ones.
        buffer = bytearray(data_size)
        if handle.readinto(buffer) != data_size:
            raise DatasetError(path, "changed size while it was being read")
    if data_size == 0:  # torch.frombuffer refuses an empty buffer
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(*shape)


def _read_mnist_split(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    """One official split's images and labels, checked against each other."""
    images = read_idx(images_path, dims=3)
    labels = read_idx(labels_path, dims=1)
    if tuple(images.shape[1:]) != MNIST_IMAGE_SIZE:
        raise DatasetError(
            images_path, f"holds images of {images.shape[1]} x {images.shape[2]} pixels, not MNIST's 28 x 28"
        )
    if len(images) != len(labels):
        raise DatasetError(
            labels_path, f"holds {len(labels)} labels but {images_path.name} beside it holds {len(images)} images"
        )
    if len(labels) == 0:
        raise DatasetError(labels_path, "holds no labels")
    largest = int(labels.max())
    if largest >= MNIST_NUM_CLASSES:
        index = int(torch.argmax(labels))
        raise DatasetError(
            labels_path, f"holds label {largest} at index {index}, outside MNIST's labels 0 to {MNIST_NUM_CLASSES - 1}"
        )
    return images, labels.to(torch.int64)


def _normalise_mnist(images: Tensor) -> Tensor:
    pixels = images.to(torch.float32).div_(255.0)
    return pixels.sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    validation_size: int = VALIDATION_SIZE,
    split_seed: int = 0,
) -> DataSplits:
    """Load MNIST as normalised tensors: 55k train, 5k validation, 10k test by default.

    The validation split is drawn from the 60k official training images by a permutation
    seeded with ``split_seed``; the official test set is kept whole. Images are scaled to
    [0, 1] and normalised with mean 0.1307 and std 0.3081, shape ``(N, 1, 28, 28)``.

    Every file is checked before use (see :func:`read_idx`): magic numbers, header against
    file size, 28 x 28 images, as many labels as images, labels 0 to 9. A copy with fewer
    records than the official one is accepted when it is consistent.

    Args:
        data_dir: folder holding ``MNIST/raw``; see :func:`resolve_data_root` for the
            fallbacks when it is ``None``.
        validation_size: number of training images held out for validation.
        split_seed: seed of the train/validation permutation.

    Raises:
        DatasetMissingError: the IDX files are absent (and could not be downloaded).
        DatasetError: a file is corrupt or the files disagree; the message names the file.

    Example:
        >>> data = load_mnist("/work/shared/data")  # doctest: +SKIP
        >>> data.train.images.shape  # doctest: +SKIP
        torch.Size([55000, 1, 28, 28])
    """
    root, may_download = resolve_data_root(data_dir)
    raw = root / "MNIST" / "raw"
    expected = [raw / name for name in MNIST_FILES]
    missing = [path for path in expected if not path.is_file()]
    if missing and not may_download:
        raise DatasetMissingError("MNIST", root, expected, reason=f"{len(missing)} file(s) missing")
    if missing:
        import torchvision

        try:
            # Downloads all four files into root/MNIST/raw (checking their MD5 sums); they
            # are then read by read_idx like any other copy.
            torchvision.datasets.MNIST(root=root, train=True, download=True)
        except (RuntimeError, URLError, OSError) as error:
            raise DatasetMissingError(
                "MNIST", root, expected, reason=f"download failed ({error})"
            ) from error

    train_images, train_labels = _read_mnist_split(*expected[:2])
    test_images, test_labels = _read_mnist_split(*expected[2:])
    images = _normalise_mnist(train_images)
    if isinstance(validation_size, int) and len(train_labels) <= validation_size:
        raise DatasetError(
            expected[1], f"holds {len(train_labels)} training examples, too few to hold out "
            f"validation_size={validation_size} for validation"
        )
    train_index, validation_index = split_indices(len(train_labels), validation_size, seed=split_seed)
    return DataSplits(
        train=Split(images[train_index], train_labels[train_index]),
        validation=Split(images[validation_index], train_labels[validation_index]),
        test=Split(_normalise_mnist(test_images), test_labels),
        name="mnist",
        num_classes=MNIST_NUM_CLASSES,
        input_shape=(1, *MNIST_IMAGE_SIZE),
        split_seed=split_seed,
        source="mnist",
    )
