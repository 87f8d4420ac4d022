"""A user's images in torchvision's ImageFolder layout (``DIR/<class>/<image>``), read into preloaded splits.

``DIR`` holds either ``train/`` (and optionally ``val/`` or ``validation/``, and ``test/``)
each in the ImageFolder layout, or the class folders themselves; a split that is not there
is carved from the training images by a seeded permutation. Only the images a run uses are
decoded: with ``sizes``, a seeded subset of each split is chosen from the file list first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_dirichlet.data.errors import DatasetError
from pyro_dirichlet.data.normalization import Normalization
from pyro_dirichlet.data.splits import DataSplits, Split, split_indices

__all__ = ["ImageFolderError", "load_image_folder", "VALIDATION_NAMES", "HELD_OUT_FRACTION"]

#: Folder names taken as the validation split, in this order.
VALIDATION_NAMES = ("val", "validation", "valid")
#: Share of the training images carved out for a missing validation or test split (each).
HELD_OUT_FRACTION = 0.1
#: Larger images are refused unread (decompression bombs).
MAX_PIXELS = 64_000_000


class ImageFolderError(DatasetError):
    """An image folder is missing, has fewer than two classes, or holds an image that cannot be decoded."""

    def __init__(self, path: str | Path, problem: str) -> None:
        ValueError.__init__(self, f"image folder {path} {problem}.")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        return type(self), (self.path, self.problem)


@dataclass(frozen=True)
class _Files:
    paths: list[str]
    labels: Tensor
    sizes: list[int]

    def take(self, indices: Tensor) -> _Files:
        chosen = indices.tolist()
        return _Files([self.paths[i] for i in chosen], self.labels[indices], [self.sizes[i] for i in chosen])


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    normalize: Normalization | None = None,
    split_seed: int = 0,
    sizes: tuple[int, int, int] | None = None,
    subset_seed: int = 0,
    validation: str | os.PathLike[str] | None = None,
) -> DataSplits:
    """Read an ImageFolder tree into train, validation and test splits.

    Args:
        root: the folder (see the module docstring for the layouts).
        image_size: resize every image to this many pixels square; ``None`` requires all
            images to have one size.
        normalize: per-channel mean and std; ``None`` measures them on the training split
            (after ``sizes`` cut it). The result's ``normalization`` records which.
        split_seed: seed of the permutation that carves a missing validation or test split.
        sizes: decode only seeded subsets of this many train, validation and test images.
        subset_seed: seed of those subsets.
        validation: a folder of validation images in the ImageFolder layout (the same
            classes), instead of ``DIR/val`` or a split carved from the training images.

    Raises:
        ImageFolderError: a missing folder, fewer than 2 classes, no images in a split, an
            image that cannot be decoded, or images of different sizes without ``image_size``.

    Example:
        >>> data = load_image_folder("cifar10-images", image_size=32)  # doctest: +SKIP
        >>> data.num_classes, data.input_shape  # doctest: +SKIP
        (10, (3, 32, 32))
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise ImageFolderError(root, "does not exist or is not a folder")
    train_dir = root / "train"
    base = train_dir if train_dir.is_dir() else root
    classes = _classes(base)
    train = _index(base, classes, every_class=True)
    found = [root / name for name in VALIDATION_NAMES if (root / name).is_dir()] if base is train_dir else []
    if validation is not None:
        folder = Path(validation).expanduser().absolute()
        if not folder.is_dir():
            raise ImageFolderError(folder, "given as the validation folder does not exist or is not a folder")
        found = [folder]
    validation = _index(found[0], classes) if found else None
    test = _index(root / "test", classes) if base is train_dir and (root / "test").is_dir() else None
    listing = _listing_sha256([("train", base, train), ("validation", found[0] if found else None, validation),
                               ("test", root / "test", test)])
    count = sum(len(files.paths) for files in (train, validation, test) if files is not None)
    missing = tuple(name for name, held_out in (("test", test), ("validation", validation)) if held_out is None)
    for name, held_out in (("test", test), ("validation", validation)):
        if held_out is None:
            size = max(1, round(HELD_OUT_FRACTION * len(train.paths)))
            if size >= len(train.paths):
                raise ImageFolderError(base, f"has {len(train.paths)} images, too few to carve a {name} split from")
            keep, carved = split_indices(len(train.paths), size, seed=split_seed)
            train, carved_files = train.take(keep), train.take(carved)
            test, validation = (carved_files, validation) if name == "test" else (test, carved_files)
    assert validation is not None and test is not None
    splits = [train, validation, test]
    if sizes is not None:
        splits = [files if size >= len(files.paths) else files.take(
            torch.randperm(len(files.paths), generator=torch.Generator().manual_seed(subset_seed))[:size].sort().values)
            for files, size in zip(splits, sizes)]
    # One decode for every split: one colour mode (the first training image's) and one size for all.
    decoded = _decode([path for files in splits for path in files.paths], image_size)
    images = list(decoded.split([len(files.paths) for files in splits]))
    normalize = Normalization.of(images[0]) if normalize is None else normalize.for_channels(decoded.shape[1])
    train_split, validation_split, test_split = (Split(normalize.apply(x), files.labels) for x, files in zip(images, splits))
    return ImageFolderSplits(
        train=train_split, validation=validation_split, test=test_split, name=f"imagefolder:{root}",
        num_classes=len(classes), input_shape=tuple(images[0].shape[1:]), split_seed=split_seed,
        source="imagefolder", classes=tuple(classes), normalization=normalize, carved=missing,
        files_sha256=listing, file_count=count,
    )


@dataclass(frozen=True, eq=False)
class ImageFolderSplits(DataSplits):
    """:class:`DataSplits` that also say which class each label is and how the images were normalised."""

    classes: tuple[str, ...] = ()
    normalization: Normalization | None = None
    #: The splits carved from the training images (``"validation"``, ``"test"``) for want of a folder of their own.
    carved: tuple[str, ...] = ()
    #: SHA-256 of the image folder's file list (each image's split, path in its folder and size; not its
    #: content), and how many images it lists: a later step reading other images is told so. ``""``, 0 elsewhere.
    files_sha256: str = ""
    file_count: int = 0
    #: Labels a torchvision data set's files hold (training and test), 0 elsewhere.
    label_count: int = 0


def _classes(folder: Path) -> list[str]:
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise ImageFolderError(folder, f"has {len(classes)} class folder{'s' if len(classes) != 1 else ''} ({found}); "
                                       "an ImageFolder needs at least 2 classes, one subfolder of images each")
    return classes


def _index(folder: Path, classes: list[str], *, every_class: bool = False) -> _Files:
    """The image files under each class folder, walked without following links to folders (a loop would repeat them).

    ``every_class``: each class folder must hold an image (the training images: a class
    without any is no class the network can learn).
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    unknown = sorted(set(_classes(folder)) - set(classes))
    if unknown:
        raise ImageFolderError(folder, f"has class folders {unknown} that the training images do not have")
    paths: list[str] = []
    labels: list[int] = []
    sizes: list[int] = []
    seen: dict[tuple[int, int], str] = {}
    for label, name in enumerate(classes):
        found = _class_images(folder / name, IMG_EXTENSIONS, seen)
        if not found and every_class:
            raise ImageFolderError(folder / name, "holds no images: remove the class folder or add its images")
        paths += [path for path, _ in found]
        sizes += [size for _, size in found]
        labels += [label] * len(found)
    if not paths:
        raise ImageFolderError(folder, f"holds no images (files ending in {', '.join(IMG_EXTENSIONS)})")
    return _Files(paths, torch.tensor(labels, dtype=torch.int64), sizes)


def _listing_sha256(parts: list[tuple[str, Path | None, _Files | None]]) -> str:
    """SHA-256 of each image's split, path within its split's folder and size in bytes, in reading order."""
    digest = hashlib.sha256()
    for split, folder, files in parts:
        if files is None or folder is None:
            continue
        for path, size in zip(files.paths, files.sizes):
            digest.update(f"{split}\0{os.path.relpath(path, folder)}\0{size}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _class_images(folder: Path, extensions: tuple[str, ...], seen: dict[tuple[int, int], str]) -> list[tuple[str, int]]:
    """Sorted ``(path, size)`` of the images under ``folder``; a link to a folder, an unreadable folder or one image
    under two names is refused."""
    if not folder.is_dir():
        return []

    def refuse(error: OSError) -> None:
        raise ImageFolderError(error.filename or folder, f"cannot be read ({error.strerror or error})")

    found: list[tuple[str, list[tuple[str, int]]]] = []  # (folder, its images): torchvision's order, folder by folder
    for directory, subfolders, files in os.walk(folder, onerror=refuse):
        found.append((directory, []))
        for name in sorted(subfolders):
            if os.path.islink(os.path.join(directory, name)):
                raise ImageFolderError(os.path.join(directory, name), "is a link to a folder: an ImageFolder's "
                                       "images are read from its own folders only (a link could repeat them)")
        for name in sorted(files):
            path = os.path.join(directory, name)
            if not name.lower().endswith(extensions):
                continue
            try:
                status = os.stat(path)
            except OSError as error:
                raise ImageFolderError(path, f"cannot be read ({error.strerror})") from None
            if not stat.S_ISREG(status.st_mode):
                raise ImageFolderError(path, "is not a regular file (a FIFO or a device is never read)")
            other = seen.setdefault((status.st_dev, status.st_ino), path)
            if other != path:
                raise ImageFolderError(path, f"is the same file as {other}: one image under two names would "
                                             "leak between the splits")
            found[-1][1].append((path, status.st_size))
    return [image for _, images in sorted(found) for image in images]


#: Pillow's modes of 16-bit and 32-bit integer grayscale images, scaled from 0..65535 rather than clipped at 255.
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_GRAY = ("1", "L", "LA", *_WIDE_GRAY)


def _decode(paths: list[str], image_size: int | None) -> Tensor:
    """``(N, C, H, W)`` float32 in [0, 1]: grayscale when every image is, else RGB; 16-bit images keep their range."""
    from PIL import Image

    arrays, wide, mode = [], False, "L"
    for path in paths:  # headers only: the mode of every image decides the channels of all
        with contextlib.suppress(Exception), Image.open(path) as image:
            if image.mode not in _GRAY:
                mode = "RGB"
                break
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    if image.size[0] * image.size[1] > MAX_PIXELS:
                        raise ValueError(f"{image.size[0]}x{image.size[1]} pixels is more than {MAX_PIXELS:,}")
                    if image.mode in _WIDE_GRAY:
                        array = _wide_gray(image, mode, image_size)
                        wide = True
                    else:
                        image = image.convert(mode)
                        if image_size is not None and image.size != (image_size, image_size):
                            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
                        array = np.asarray(image, dtype=np.uint8)
        except Exception as error:  # noqa: BLE001 - Pillow fails on bad files with many error types
            reason = " ".join(str(error).split()).rstrip(".")[:200] or type(error).__name__
            raise DatasetError(path, f"cannot be decoded as an image ({type(error).__name__}: {reason})") from None
        if arrays and array.shape != arrays[0].shape:
            raise DatasetError(path, f"is {array.shape[1]}x{array.shape[0]} pixels, but {paths[0]} is "
                                     f"{arrays[0].shape[1]}x{arrays[0].shape[0]}: pass --image-size N to resize them all")
        arrays.append(array)
    if wide:  # 8-bit images scaled by 255, 16-bit ones by 65535: one float scale for all
        stacked = torch.from_numpy(np.stack([a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 65535.0)
                                             for a in arrays]))
    else:
        stacked = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    stacked = stacked.unsqueeze(1) if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2)
    return stacked.contiguous()


def _wide_gray(image, mode: str, image_size: int | None) -> np.ndarray:
    """A 16-bit grayscale image as uint16 (``mode`` ``"RGB"``: the gray value in all three channels)."""
    from PIL import Image

    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
    if image_size is not None and values.shape != (image_size, image_size):
        resized = Image.fromarray(values.astype(np.float32), mode="F").resize((image_size, image_size),
                                                                              Image.Resampling.BILINEAR)
        values = np.clip(np.asarray(resized), 0, 65535).round().astype(np.uint16)
    return np.repeat(values[..., None], 3, axis=-1) if mode == "RGB" else values
