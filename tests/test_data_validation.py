"""Corrupt data files: each is refused with one sentence naming the file (issue 13, item 4).

The MNIST cases corrupt a copy of the first few hundred real records; the CIFAR-10 cases
corrupt a small zip of real JPEG members. Every case asserts the error type, that the
message is one sentence naming the offending file, and what it says was wrong.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import mnist_root
from pyro_dirichlet.app.cli import main
from pyro_dirichlet.data import (
    CIFAR10_CLASSES,
    DatasetError,
    DatasetMissingError,
    load_cifar10,
    load_mnist,
    read_idx,
    read_image_zip,
)
from pyro_dirichlet.data import cifar10 as cifar10_module

TRAIN_RECORDS, TEST_RECORDS = 300, 100
IMAGE_BYTES = 28 * 28


def one_sentence(message: str, path: Path) -> None:
    assert str(path) in message
    assert "\n" not in message
    assert message.endswith(".")


# --- MNIST -----------------------------------------------------------------------------


def idx_bytes(shape: tuple[int, ...], data: bytes, magic: int | None = None) -> bytes:
    magic = (0x08 << 8) | len(shape) if magic is None else magic
    return struct.pack(f">{1 + len(shape)}I", magic, *shape) + data


@pytest.fixture(scope="module")
def real_records() -> dict[str, tuple[tuple[int, ...], bytes]]:
    """The first records of each real MNIST file: shape and data bytes (no header)."""
    root = mnist_root()
    if root is None:
        pytest.skip("MNIST not found: set PYRO_DIRICHLET_DATA to a folder holding MNIST/raw")
    raw = root / "MNIST" / "raw"
    records = {}
    for name, count in (("train", TRAIN_RECORDS), ("t10k", TEST_RECORDS)):
        with open(raw / f"{name}-images-idx3-ubyte", "rb") as handle:
            handle.seek(16)
            records[f"{name}-images-idx3-ubyte"] = ((count, 28, 28), handle.read(count * IMAGE_BYTES))
        with open(raw / f"{name}-labels-idx1-ubyte", "rb") as handle:
            handle.seek(8)
            records[f"{name}-labels-idx1-ubyte"] = ((count,), handle.read(count))
    return records


@pytest.fixture
def small_mnist(tmp_path, real_records) -> Path:
    """A consistent MNIST copy of 300 training and 100 test records, in tmp_path/MNIST/raw."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, (shape, data) in real_records.items():
        (raw / name).write_bytes(idx_bytes(shape, data))
    return tmp_path


def test_a_consistent_small_copy_loads_the_real_records(small_mnist, real_records):
    data = load_mnist(small_mnist, validation_size=50)
    assert (len(data.train), len(data.validation), len(data.test)) == (250, 50, 100)
    expected_labels = torch.tensor(list(real_records["t10k-labels-idx1-ubyte"][1]))
    assert torch.equal(data.test.labels, expected_labels)
    pixels = torch.tensor(list(real_records["t10k-images-idx3-ubyte"][1][:IMAGE_BYTES]), dtype=torch.float32)
    torch.testing.assert_close(data.test.images[0, 0].flatten(), (pixels / 255 - 0.1307) / 0.3081)


def test_read_idx_matches_torchvision_on_the_real_file():
    import torchvision

    root = mnist_root()
    if root is None:
        pytest.skip("MNIST not found")
    official = torchvision.datasets.MNIST(root=root, train=False, download=False)
    assert torch.equal(read_idx(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", dims=3), official.data)
    assert torch.equal(read_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", dims=1), official.targets.to(torch.uint8))


def truncate(cut: int) -> Callable[[bytes], bytes]:
    return lambda content: content[: len(content) - cut]


def set_count(count: int) -> Callable[[bytes], bytes]:
    """Rewrite the item count in the header, leaving the data as it was."""
    return lambda content: content[:4] + struct.pack(">I", count) + content[8:]


def set_byte(offset: int, value: int) -> Callable[[bytes], bytes]:
    return lambda content: content[:offset] + bytes([value]) + content[offset + 1 :]


# (file to corrupt, how, the file the message names, what it says)
MNIST_CASES = {
    "zero-length images": ("train-images-idx3-ubyte", lambda c: b"", "train-images-idx3-ubyte", "is empty"),
    "zero-length labels": ("t10k-labels-idx1-ubyte", lambda c: b"", "t10k-labels-idx1-ubyte", "is empty"),
    "header cut short": ("train-images-idx3-ubyte", lambda c: c[:10], "train-images-idx3-ubyte", "shorter than the 16-byte header"),
    "images truncated": ("train-images-idx3-ubyte", truncate(1000), "train-images-idx3-ubyte", "is truncated"),
    "labels truncated": ("t10k-labels-idx1-ubyte", truncate(1), "t10k-labels-idx1-ubyte", "is truncated"),
    "trailing bytes": ("t10k-images-idx3-ubyte", lambda c: c + b"\0" * 7, "t10k-images-idx3-ubyte", "longer than its header says"),
    # A consistent smaller header on one file: the records it does not announce would be dropped.
    "header announces fewer images": ("train-images-idx3-ubyte", set_count(250), "train-images-idx3-ubyte", "longer than its header says"),
    "labels given for images": ("train-images-idx3-ubyte", None, "train-images-idx3-ubyte", "magic number 0x00000801, not 0x00000803"),
    "images given for labels": ("train-labels-idx1-ubyte", None, "train-labels-idx1-ubyte", "magic number 0x00000803, not 0x00000801"),
    "float type code": ("t10k-images-idx3-ubyte", set_byte(2, 0x0D), "t10k-images-idx3-ubyte", "magic number 0x00000d03"),
    "nonzero magic prefix": ("t10k-labels-idx1-ubyte", set_byte(0, 0x1F), "t10k-labels-idx1-ubyte", "magic number 0x1f000801"),
    "label out of range": ("train-labels-idx1-ubyte", set_byte(8 + 17, 12), "train-labels-idx1-ubyte", "label 12 at index 17"),
    "label 255": ("t10k-labels-idx1-ubyte", set_byte(8 + 99, 255), "t10k-labels-idx1-ubyte", "label 255 at index 99"),
    # The case: the test labels copied over the training labels.
    "test labels as training labels": ("train-labels-idx1-ubyte", None, "train-labels-idx1-ubyte", "holds 100 labels but train-images-idx3-ubyte beside it holds 300 images"),
    "images of another size": ("t10k-images-idx3-ubyte", None, "t10k-images-idx3-ubyte", "images of 14 x 56 pixels"),
}


def corrupt_mnist(raw: Path, case: str, real_records) -> None:
    name, how, _, _ = MNIST_CASES[case]
    path = raw / name
    if case == "labels given for images":
        path.write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())
    elif case == "images given for labels":
        path.write_bytes((raw / "train-images-idx3-ubyte").read_bytes())
    elif case == "test labels as training labels":
        path.write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
    elif case == "images of another size":
        path.write_bytes(idx_bytes((TEST_RECORDS, 14, 56), real_records[name][1]))
    else:
        path.write_bytes(how(path.read_bytes()))


@pytest.mark.parametrize("case", list(MNIST_CASES))
def test_corrupt_mnist_is_refused_naming_the_file(small_mnist, real_records, case):
    raw = small_mnist / "MNIST" / "raw"
    corrupt_mnist(raw, case, real_records)
    _, _, named, says = MNIST_CASES[case]
    with pytest.raises(DatasetError) as caught:
        load_mnist(small_mnist, validation_size=50)
    message = str(caught.value)
    one_sentence(message, raw / named)
    assert says in message
    assert caught.value.path == raw / named
    assert not isinstance(caught.value, FileNotFoundError)
    assert str(pickle.loads(pickle.dumps(caught.value))) == message


def test_too_few_records_for_the_validation_split_names_the_labels_file(small_mnist):
    with pytest.raises(DatasetError, match="holds 300 training examples, too few") as caught:
        load_mnist(small_mnist)  # the default validation split is 5,000
    one_sentence(str(caught.value), small_mnist / "MNIST" / "raw" / "train-labels-idx1-ubyte")


def test_a_missing_data_set_is_also_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_mnist(tmp_path)
    assert isinstance(caught.value, DatasetMissingError) and isinstance(caught.value, FileNotFoundError)


@pytest.mark.parametrize("case", ["test labels as training labels", "images truncated", "label out of range"])
def test_the_command_line_exits_2_with_one_sentence(small_mnist, real_records, tmp_path, capsys, case):
    raw = small_mnist / "MNIST" / "raw"
    corrupt_mnist(raw, case, real_records)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--dataset", "mnist", "--model", "lenet5", "--data-dir", str(small_mnist),
            "--subset", "100", "--train-epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("pyro-dirichlet: error: data file ")
    one_sentence(error, raw / MNIST_CASES[case][2])
    assert not (out / "baseline.safetensors").exists()


# --- CIFAR-10 --------------------------------------------------------------------------

REAL_TEST_ZIP = (mnist_root() or Path("/nonexistent")) / "cifar10-jpeg" / "test.zip"
PER_CLASS = 3


@pytest.fixture(scope="module")
def real_jpegs() -> list[tuple[str, bytes]]:
    """(member name, JPEG bytes) for the first few real test images of every class."""
    if not REAL_TEST_ZIP.is_file():
        pytest.skip("CIFAR-10 JPEG copy not present")
    taken: dict[str, int] = {}
    chosen = []
    with zipfile.ZipFile(REAL_TEST_ZIP) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if name.endswith(".jpg") and len(parts) >= 2 and taken.get(parts[-2], 0) < PER_CLASS:
                taken[parts[-2]] = taken.get(parts[-2], 0) + 1
                chosen.append((name, archive.read(name)))
    assert sorted(taken) == sorted(CIFAR10_CLASSES)
    return chosen


def write_members(path: Path, members: list[tuple[str, bytes]], split: str,
                  compression: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in members:
            archive.writestr(f"{split}/" + "/".join(name.split("/")[-2:]), content)


@pytest.fixture
def small_cifar(tmp_path, monkeypatch, real_jpegs) -> Path:
    """tmp_path/data/cifar10-jpeg/{train,test}.zip of real JPEGs (30 each); cache under tmp_path."""
    folder = tmp_path / "data" / "cifar10-jpeg"
    folder.mkdir(parents=True)
    write_members(folder / "train.zip", real_jpegs, "train")
    write_members(folder / "test.zip", real_jpegs, "test")
    monkeypatch.setenv("PYRO_DIRICHLET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


def flip_byte_in_member(path: Path, member_index: int) -> None:
    """Flip one byte inside a stored member's data, so its CRC no longer matches."""
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[member_index]
    content = bytearray(path.read_bytes())
    # Local header: 30 bytes, then the name and the extra field, then the data.
    name_length, extra_length = struct.unpack("<HH", content[info.header_offset + 26 : info.header_offset + 30])
    data_start = info.header_offset + 30 + name_length + extra_length
    content[data_start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def rewrite_zip(path: Path, change: Callable[[str, bytes], tuple[str, bytes] | None]) -> None:
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            changed = change(name, content)
            if changed is not None:
                archive.writestr(*changed)


def jpeg_of_width(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, 32), (10, 20, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


FIRST_CAT = "test/cat/"

# (zip to corrupt, how, what the message says)
CIFAR_CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "zero-length zip": ("train.zip", lambda p: p.write_bytes(b""), "is not a readable zip archive"),
    "truncated zip": ("test.zip", lambda p: p.write_bytes(p.read_bytes()[:5000]), "is not a readable zip archive"),
    "not a zip": ("test.zip", lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 100), "is not a readable zip archive"),
    "bad CRC": ("train.zip", lambda p: flip_byte_in_member(p, 4), "has a corrupt member 'train/"),
    "truncated JPEG": ("test.zip", lambda p: rewrite_zip(p, lambda n, c: (n, c[: len(c) // 3])), "cannot be decoded"),
    "not an image": ("test.zip", lambda p: rewrite_zip(p, lambda n, c: (n, b"hello" * 50) if n.startswith(FIRST_CAT) else (n, c)), "which is not an image file"),
    "a class folder missing": ("train.zip", lambda p: rewrite_zip(p, lambda n, c: None if "/frog/" in n else (n, c)), "holds no train images of class frog"),
    "a folder outside the classes": ("test.zip", lambda p: rewrite_zip(p, lambda n, c: (n.replace("/cat/", "/lion/"), c)), "'test/lion/"),
    "an image of another size": ("test.zip", lambda p: rewrite_zip(p, lambda n, c: (n, jpeg_of_width(40)) if n.startswith(FIRST_CAT) else (n, c)), "of 32 x 40 pixels, unlike the first image's 32 x 32"),
    "a zip bomb": ("test.zip", lambda p: rewrite_zip(p, lambda n, c: (n, bytes(17 << 20)) if n.startswith(FIRST_CAT) else (n, c)), "of 17825792 bytes uncompressed, more than the 16777216 bytes allowed"),
    "no images": ("train.zip", lambda p: rewrite_zip(p, lambda n, c: (n + ".txt", c)), "holds no JPEG images"),
}


@pytest.mark.parametrize("case", list(CIFAR_CASES))
def test_corrupt_cifar_zip_is_refused_naming_the_file(small_cifar, tmp_path, case):
    name, corrupt, says = CIFAR_CASES[case]
    path = small_cifar / "cifar10-jpeg" / name
    corrupt(path)
    with pytest.raises(DatasetError) as caught:
        load_cifar10(small_cifar, validation_size=5)
    message = str(caught.value)
    one_sentence(message, path)
    assert says in message
    assert not list((tmp_path / "cache").glob("*.safetensors"))  # nothing bad was cached


def test_the_small_real_copy_loads(small_cifar):
    data = load_cifar10(small_cifar, validation_size=5)
    assert (len(data.train), len(data.validation), len(data.test)) == (25, 5, 30)
    assert data.test.labels.bincount().tolist() == [PER_CLASS] * 10


def test_too_few_images_for_the_validation_split_names_the_zip(small_cifar):
    with pytest.raises(DatasetError, match="holds 30 training images, too few") as caught:
        load_cifar10(small_cifar)
    one_sentence(str(caught.value), small_cifar / "cifar10-jpeg" / "train.zip")


def test_an_image_over_pillows_pixel_limit_is_refused(tmp_path, real_jpegs, monkeypatch):
    write_members(tmp_path / "one.zip", real_jpegs[:1], "test")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 32 x 32 = 1024 pixels: over it, under twice it
    with pytest.raises(DatasetError, match=r"one\.zip has member 'test/airplane/.*cannot be decoded \(Image size"):
        read_image_zip(tmp_path / "one.zip")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit: Pillow's error
    with pytest.raises(DatasetError, match="cannot be decoded"):
        read_image_zip(tmp_path / "one.zip")


def test_read_image_zip_wraps_a_corrupt_jpeg(tmp_path, real_jpegs):
    name, content = real_jpegs[0]
    write_members(tmp_path / "one.zip", [(name, content[:200])], "test")
    with pytest.raises(DatasetError, match=r"one\.zip has member 'test/airplane/.*cannot be decoded"):
        read_image_zip(tmp_path / "one.zip")


# --- the decoded cache -----------------------------------------------------------------


def cache_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "cache").glob("cifar10-jpeg-*.safetensors")
    return path


def flip_last_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF  # inside the last tensor's data: the file still parses
    path.write_bytes(bytes(content))


def rewrite_cache(path: Path, change: Callable[[dict[str, torch.Tensor]], None], keep_digest: bool = False) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    change(tensors)
    if not keep_digest:
        metadata = {"sha256": cifar10_module._digest(tensors)}  # a cache that is self-consistent but wrong
    save_file(tensors, str(path), metadata=metadata)


def set_label(tensors):
    tensors["train_labels"][3] = 11


def drop_label(tensors):
    tensors["test_labels"] = tensors["test_labels"][:-1].clone()


def drop_key(tensors):
    del tensors["test_labels"]


CACHE_CASES = {
    "a flipped byte": (flip_last_byte, "does not match the SHA-256"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "is not a readable safetensors file"),
    "zero-length": (lambda p: p.write_bytes(b""), "is not a readable safetensors file"),
    "changed without its digest": (lambda p: rewrite_cache(p, set_label, keep_digest=True), "does not match the SHA-256"),
    "label out of range": (lambda p: rewrite_cache(p, set_label), "train labels from 0 to 11"),
    "one label fewer": (lambda p: rewrite_cache(p, drop_label), "holds 30 test images but test labels of shape (29,)"),
    "a tensor missing": (lambda p: rewrite_cache(p, drop_key), "holds tensors test_images, train_images, train_labels"),
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_a_corrupt_cache_is_detected_decoded_again_and_replaced(small_cifar, tmp_path, case):
    first = load_cifar10(small_cifar, validation_size=5)
    path = cache_file(tmp_path)
    good = path.read_bytes()
    corrupt, says = CACHE_CASES[case]
    corrupt(path)
    with pytest.warns(UserWarning, match="Decoding the zips again") as caught:
        again = load_cifar10(small_cifar, validation_size=5)
    message = str(caught[0].message)
    assert str(path) in message and says in message
    torch.testing.assert_close(again.train.images, first.train.images)
    assert torch.equal(again.train.labels, first.train.labels)
    assert path.read_bytes() == good  # replaced by a fresh decode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10(small_cifar, validation_size=5)  # and the replacement is trusted


def test_a_good_cache_is_read_without_decoding(small_cifar, tmp_path, monkeypatch):
    load_cifar10(small_cifar, validation_size=5)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again despite a good cache")

    monkeypatch.setattr(cifar10_module, "read_image_zip", no_decode)
    assert len(load_cifar10(small_cifar, validation_size=5).test) == 30


def test_each_data_root_has_its_own_cache(small_cifar, tmp_path, monkeypatch):
    load_cifar10(small_cifar, validation_size=5)
    other = tmp_path / "other"
    other.mkdir()
    (other / "cifar10-jpeg").mkdir()
    for name in ("train.zip", "test.zip"):  # the same files, same sizes and times, another root
        source = small_cifar / "cifar10-jpeg" / name
        (other / "cifar10-jpeg" / name).write_bytes(source.read_bytes())
        status = source.stat()
        os.utime(other / "cifar10-jpeg" / name, ns=(status.st_atime_ns, status.st_mtime_ns))
    decoded = []
    real_decode = cifar10_module.read_image_zip
    monkeypatch.setattr(cifar10_module, "read_image_zip", lambda *a, **k: decoded.append(a) or real_decode(*a, **k))
    load_cifar10(other, validation_size=5)
    assert len(decoded) == 2  # not the first root's cache
    caches = sorted((tmp_path / "cache").glob("cifar10-jpeg-*.safetensors"))
    assert len(caches) == 2 and caches[0].name[:30] != caches[1].name[:30]
    load_cifar10(small_cifar, validation_size=5)
    load_cifar10(other, validation_size=5)
    assert len(decoded) == 2  # and each root reads its own


def _link_elsewhere(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "elsewhere.safetensors")


@pytest.mark.parametrize("kind", ["symbolic link", "directory", "FIFO"])
def test_a_cache_that_is_not_a_regular_file_is_decoded_again_and_replaced(small_cifar, tmp_path, kind):
    first = load_cifar10(small_cifar, validation_size=5)
    path = cache_file(tmp_path)
    good = path.read_bytes()
    if kind == "symbolic link":
        (tmp_path / "cache" / "elsewhere.safetensors").write_bytes(good)
        _link_elsewhere(path)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
        os.mkfifo(path)  # a reader that opened it would block forever
    with pytest.warns(UserWarning, match="not a regular file"):
        again = load_cifar10(small_cifar, validation_size=5)
    torch.testing.assert_close(again.train.images, first.train.images)
    if kind == "directory":
        assert path.is_dir()  # not replaceable: decoded each time, with the warning
    else:
        assert not path.is_symlink() and path.is_file() and path.read_bytes() == good
    if kind == "symbolic link":  # the link was replaced, its target left as it was
        assert (tmp_path / "cache" / "elsewhere.safetensors").read_bytes() == good
