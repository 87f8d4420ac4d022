"""CIFAR-10: the JPEG copy (zips decoded once and cached) or the official python batches, as normalised splits."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor

from pyro_dirichlet.data.augment import RandomCropFlip
from pyro_dirichlet.data.errors import DatasetError, DatasetMissingError
from pyro_dirichlet.data.root import resolve_data_root
from pyro_dirichlet.data.splits import VALIDATION_SIZE, DataSplits, Split, split_indices

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "load_cifar10", "read_image_zip"]

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
_CIFAR10_IMAGE_SHAPE = (3, 32, 32)
# Bumped whenever the decoded cache's content changes meaning, so old files are not reused.
_JPEG_CACHE_FORMAT = 3  # 2: decoded with Pillow; 3: carries a SHA-256 of its tensors
_MAX_MEMBER_BYTES = 1 << 24  # 16 MiB; one JPEG of the CIFAR-10 copy is about 1.5 KB
_CACHE_KEYS = ("test_images", "test_labels", "train_images", "train_labels")


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
        DatasetError: the file is not a readable zip, a member is corrupt or not a decodable
            image, a member lies in a folder not named in ``classes``, or the images do not
            all have one shape; the message names the archive and the member.

    Example:
        >>> images, labels = read_image_zip("cifar10-jpeg/test.zip")  # doctest: +SKIP
        >>> images.shape, labels[:3].tolist()  # doctest: +SKIP
        (torch.Size([10000, 3, 32, 32]), [0, 0, 0])
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise DatasetError(path, f"is not a readable zip archive ({error})") from error
    with archive:
        members = _image_members(archive, path, classes, max_per_class)
        images = []
        for _, name in members:
            images.append(_decode_member(archive, path, name, images[0] if images else None))
    labels = torch.tensor([label for label, _ in members], dtype=torch.int64)
    return torch.stack(images), labels


def _image_members(
    archive: zipfile.ZipFile, path: str | os.PathLike[str], classes: Sequence[str], max_per_class: int | None
) -> list[tuple[int, str]]:
    """The archive's JPEG members as ``(label, name)``, sorted, at most ``max_per_class`` of each class."""
    label_of = {name: index for index, name in enumerate(classes)}
    members: list[tuple[int, str]] = []
    for name in archive.namelist():
        if name.endswith("/") or not name.lower().endswith((".jpg", ".jpeg")):
            continue
        parts = name.split("/")
        if len(parts) < 2 or parts[-2] not in label_of:
            raise DatasetError(
                path, f"has member {name!r}, which is not in a folder named after one of the "
                f"classes {', '.join(classes)}"
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
        raise DatasetError(path, "holds no JPEG images")
    return members


def _decode_member(
    archive: zipfile.ZipFile, path: str | os.PathLike[str], name: str, first: Tensor | None
) -> Tensor:
    """Member ``name`` decoded as a uint8 ``(3, H, W)`` image of the same size as ``first``, the first image decoded."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    size = archive.getinfo(name).file_size
    if size > _MAX_MEMBER_BYTES:
        # Checked before reading: a zip bomb would otherwise be inflated into memory.
        raise DatasetError(
            path, f"has member {name!r} of {size} bytes uncompressed, more than the "
            f"{_MAX_MEMBER_BYTES} bytes allowed for one image"
        )
    try:
        content = archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        # A bad CRC, a cut-off or garbled compressed stream, an unknown compression.
        raise DatasetError(path, f"has a corrupt member {name!r} ({error})") from error
    try:
        with warnings.catch_warnings():
            # Beyond Pillow's pixel limit is refused, not merely warned about: decoding
            # would allocate whatever the header claims.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as decoded:
                width, height = decoded.size
                # Checked before decoding, so an odd image costs no allocation.
                if first is not None and (height, width) != tuple(first.shape[1:]):
                    raise DatasetError(
                        path, f"has member {name!r} of {height} x {width} pixels, unlike the "
                        f"first image's {first.shape[1]} x {first.shape[2]}"
                    )
                pixels = np.asarray(decoded.convert("RGB"))
    except DatasetError:
        raise
    except UnidentifiedImageError as error:
        raise DatasetError(path, f"has member {name!r}, which is not an image file") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's ways of saying "corrupt" or "too large".
        raise DatasetError(path, f"has member {name!r}, which cannot be decoded ({error})") from error
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)


def _jpeg_cache_path(folder: Path, zips: Sequence[Path], cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cifar10-jpeg-<root>-<files>.safetensors``: one name per data root, one per state of its zips.

    ``<root>`` hashes the folder's resolved path, so two roots never share a cache file and
    an older cache of the same root can be found and removed; ``<files>`` hashes each zip's
    name, size and modification time (a changed archive is decoded again without hashing
    62 MB on every load) and the cache format.
    """
    from pyro_dirichlet.io.cache import resolve_cache_dir

    described = []
    for path in zips:
        status = path.stat()
        described.append([path.name, status.st_size, status.st_mtime_ns])
    description = {"format": _JPEG_CACHE_FORMAT, "classes": CIFAR10_CLASSES, "zips": described}
    files = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    root = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return resolve_cache_dir("datasets", cache_dir) / f"cifar10-jpeg-{root}-{files}.safetensors"


def _remove_older_caches(current: Path) -> None:
    """Remove this root's caches of earlier states of its zips: each holds 185 MB nobody reads again.

    Only regular files named like ``current`` (same root, other zips) go; links and anything
    else are left where they are, and a file that cannot be removed is left too.
    """
    prefix = current.name[: len("cifar10-jpeg-") + 17]  # "cifar10-jpeg-<root>-"
    for older in current.parent.glob(f"{prefix}*.safetensors"):
        try:
            if older != current and stat.S_ISREG(older.lstat().st_mode):
                older.unlink()
        except OSError:
            pass


def _check_split(images: Tensor, labels: Tensor, source: Path, split: str) -> None:
    """Refuse a decoded split that CIFAR-10's models and the splitting cannot use."""
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != _CIFAR10_IMAGE_SHAPE:
        raise DatasetError(
            source, f"holds {split} images of shape {tuple(images.shape[1:])} and type {images.dtype}, "
            f"not uint8 {_CIFAR10_IMAGE_SHAPE}"
        )
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise DatasetError(
            source, f"holds {images.shape[0]} {split} images but {split} labels of shape {tuple(labels.shape)}"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(CIFAR10_CLASSES):
        raise DatasetError(
            source, f"holds {split} labels from {int(labels.min())} to {int(labels.max())}, outside "
            f"CIFAR-10's labels 0 to {len(CIFAR10_CLASSES) - 1}"
        )
    # A class with no images at all trains a silently smaller problem.
    counts = torch.bincount(labels, minlength=len(CIFAR10_CLASSES))
    absent = [CIFAR10_CLASSES[label] for label in range(len(CIFAR10_CLASSES)) if counts[label] == 0]
    if absent:
        raise DatasetError(source, f"holds no {split} images of class {', '.join(absent)}")


def _digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of the tensors' names, shapes, types and bytes (about 0.1 s for CIFAR-10)."""
    hasher = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        hasher.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        hasher.update(tensor.numpy().data)
    return hasher.hexdigest()


def _read_cache(path: Path) -> dict[str, Tensor]:
    """The decoded tensors cached at ``path``, verified against the digest stored with them.

    Raises:
        DatasetError: the file is unreadable, or its content is not what was written.
    """
    from safetensors import SafetensorError, safe_open

    from pyro_dirichlet.io.regular_files import SpecialFileError, check_regular

    try:
        # Not through a link, and not a FIFO or a device that would block or never end.
        check_regular(path, what="decoded CIFAR-10 cache", follow_links=False)
    except (SpecialFileError, OSError) as error:
        raise DatasetError(path, f"is not a regular file ({error})") from error
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DatasetError(path, f"is not a readable safetensors file ({error})") from error
    if tuple(sorted(tensors)) != _CACHE_KEYS:
        raise DatasetError(path, f"holds tensors {', '.join(sorted(tensors))}, not {', '.join(_CACHE_KEYS)}")
    if metadata.get("sha256") != _digest(tensors):
        raise DatasetError(path, "does not match the SHA-256 recorded when it was written")
    for split in ("train", "test"):
        _check_split(tensors[f"{split}_images"], tensors[f"{split}_labels"], path, split)
    return tensors


def _load_cifar10_jpeg(
    folder: Path, cache_dir: str | os.PathLike[str] | None
) -> dict[str, Tensor]:
    from safetensors.torch import save as serialize

    from pyro_dirichlet.io.atomic import atomic_write

    zips = [folder / name for name in _CIFAR10_JPEG_ZIPS]
    cache_path = _jpeg_cache_path(folder, zips, cache_dir)
    if os.path.lexists(cache_path):  # a link or a FIFO too: refused by _read_cache, then replaced
        try:
            return _read_cache(cache_path)
        except DatasetError as error:
            # The cache is derived data: decode again and replace it, but say so, since a
            # cache that keeps going bad points at a failing disk.
            warnings.warn(f"{error} Decoding the zips again and replacing it.", stacklevel=3)
    tensors = {}
    for split, path in zip(("train", "test"), zips):
        images, labels = read_image_zip(path)
        _check_split(images, labels, path, split)
        tensors[f"{split}_images"], tensors[f"{split}_labels"] = images, labels
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache_path, "wb") as handle:
            handle.write(serialize(tensors, metadata={"sha256": _digest(tensors)}))
        _remove_older_caches(cache_path)
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
    folder = root / _CIFAR10_BATCHES_DIR
    for split in ("train", "test"):
        _check_split(tensors[f"{split}_images"], tensors[f"{split}_labels"], folder, split)
    return tensors


def _normalise_cifar(images: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    validation_size: int = VALIDATION_SIZE,
    split_seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DataSplits:
    """Load CIFAR-10 as normalised tensors: 45k train, 5k validation, 10k test by default.

    Two copies are recognised, in this order:

    1. ``<root>/cifar10-jpeg/train.zip`` and ``test.zip``: the JPEG re-encoding (zip
       members ``<split>/<class name>/<NNNN>.jpg``). Decoded once into uint8 tensors and
       cached as a safetensors file in the ``datasets`` cache (see
       :func:`pyro_dirichlet.io.cache.resolve_cache_dir`), one file per data root: the cache
       key covers the root's resolved path and each zip's name, size and modification
       time, so a changed archive is decoded again and the root's older cache removed
       (decoding costs about 10 CPU seconds, reading the cache about 1). ``source`` is
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

    Every split is checked before use: images of shape (3, 32, 32), one label per image,
    labels 0 to 9, every class present. The decoded cache carries a SHA-256 of its tensors;
    a cache that fails it (or any check) is decoded again and replaced, with a warning.

    Raises:
        DatasetMissingError: neither copy is present (and none could be downloaded).
        DatasetError: a zip, a JPEG or a batch is corrupt or inconsistent; the message
            names the file.

    Example:
        >>> data = load_cifar10("/work/shared/data")  # doctest: +SKIP
        >>> data.train.images.shape, data.source  # doctest: +SKIP
        (torch.Size([45000, 3, 32, 32]), 'cifar10-jpeg')
    """
    root, may_download = resolve_data_root(data_dir)
    jpeg_folder = root / _CIFAR10_JPEG_DIR
    jpeg_files = [jpeg_folder / name for name in _CIFAR10_JPEG_ZIPS]
    if all(path.is_file() for path in jpeg_files):
        # Called from here, not from a helper: its warning about a bad cache (stacklevel 3)
        # names the caller's line.
        tensors = _load_cifar10_jpeg(jpeg_folder, cache_dir)
        source, origin = "cifar10-jpeg", jpeg_files[0]
    else:
        tensors = _load_cifar10_official(root, may_download, jpeg_files)
        source, origin = "cifar10", root / _CIFAR10_BATCHES_DIR
    return _cifar10_splits(tensors, source, origin, validation_size=validation_size, split_seed=split_seed)


def _load_cifar10_official(root: Path, may_download: bool, jpeg_files: list[Path]) -> dict[str, Tensor]:
    """The official python batches, downloaded where the root allows it; missing or failing ones say which."""
    batch_files = [root / _CIFAR10_BATCHES_DIR / name for name in _CIFAR10_BATCHES]
    missing = [path for path in batch_files if not path.is_file()]
    reason = (
        "neither the JPEG copy (cifar10-jpeg/train.zip and test.zip) nor the official "
        "python batches (cifar-10-batches-py/) are there; either layout will do"
    )
    if missing and not may_download:
        raise DatasetMissingError("CIFAR-10", root, jpeg_files + batch_files, reason=reason)
    try:
        return _load_cifar10_batches(root, may_download)
    except (RuntimeError, URLError, OSError) as error:
        if not missing:
            # torchvision checks every batch's MD5 sum before reading it.
            raise DatasetError(
                root / _CIFAR10_BATCHES_DIR, f"holds batches that fail torchvision's check ({error})"
            ) from error
        raise DatasetMissingError(
            "CIFAR-10", root, jpeg_files + batch_files, reason=f"{reason}; download failed ({error})"
        ) from error


def _cifar10_splits(
    tensors: dict[str, Tensor], source: str, origin: Path, *, validation_size: int, split_seed: int
) -> DataSplits:
    """The decoded copy (read from ``origin``) as normalised train, validation and test splits."""
    labels = tensors["train_labels"].to(torch.int64)
    if isinstance(validation_size, int) and len(labels) <= validation_size:
        raise DatasetError(
            origin,
            f"holds {len(labels)} training images, too few to hold out validation_size={validation_size} "
            "for validation"
        )
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

