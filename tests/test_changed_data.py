"""Data that changed after ``train`` (issue 34): the run records the class list, a digest of an ImageFolder's file
list (names and sizes), a torchvision set's label count and the split sizes; a later step reading other data ends
with exit status 2, one sentence naming the difference, and an unchanged run directory.
"""

import os
import sys
from pathlib import Path

import pytest
import torch
from test_bad_inputs import invoke, snapshot
from test_bad_values import one_sentence, png

TINYNETS = '''
from torch import nn


def tiny(channels=3, classes=2):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))
'''
MODEL = ["--model", "tinynets:tiny"]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """tmp/tinynets.py, tmp/images (cat, dog: 12 PNGs each) and tmp/w.pt, as the current directory."""
    (tmp_path / "tinynets.py").write_text(TINYNETS)
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            (tmp_path / "images" / name / f"{i}.png").write_bytes(png((i * 20, 100 if name == "dog" else 0, 0)))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("tinynets", None)


def trained(folder: Path, capsys, *steps: str) -> Path:
    """A run on the user's images trained from saved weights, then taken through ``steps`` (one epoch each)."""
    sys.path.insert(0, str(folder))  # only to build the weights here; the CLI imports the factory itself
    try:
        from tinynets import tiny
    finally:
        sys.path.remove(str(folder))
    torch.manual_seed(0)
    torch.save(tiny().state_dict(), folder / "w.pt")
    commands = {"fit": ["fit", "--epochs", "1"], "prune": ["prune"], "finetune": ["finetune", "--finetune-epochs", "1"]}
    code, error = invoke(["train", "--out", "run", *MODEL, "--dataset", f"imagefolder:{folder / 'images'}",
                          "--weights", "w.pt", "--quiet"], capsys)
    assert code == 0, error
    for step in steps:
        code, error = invoke([commands[step][0], "--run", "run", *MODEL, *commands[step][1:], "--quiet"], capsys)
        assert code == 0, error
    return folder / "run"


def rename_class(images: Path) -> None:
    (images / "dog").rename(images / "wolf")


def add_class(images: Path) -> None:
    (images / "bird").mkdir()
    for i in range(3):
        (images / "bird" / f"{i}.png").write_bytes(png((0, 0, 200)))


def delete_image(images: Path) -> None:
    (images / "cat" / "3.png").unlink()


def add_image(images: Path) -> None:
    (images / "dog" / "12.png").write_bytes(png((5, 5, 5)))


def rename_image(images: Path) -> None:
    (images / "cat" / "3.png").rename(images / "cat" / "3b.png")


def resize_image(images: Path) -> None:
    (images / "cat" / "3.png").write_bytes(png((1, 2, 3), size=(8, 8)) + b"\0" * 7)


def move_image(images: Path) -> None:
    (images / "cat" / "3.png").rename(images / "dog" / "cat-3.png")


CASES = [
    ("class-renamed", rename_class, "fit", [], "class list differs: class 'dog' gone, class 'wolf' new"),
    ("class-added", add_class, "prune", ["fit"], "class list differs: class 'bird' new"),
    ("image-deleted", delete_image, "fit", [], "file list differs: 23 images now, 24 when `train` read it"),
    ("image-added", add_image, "finetune", ["fit", "prune"], "file list differs: 25 images now, 24 when `train` read it"),
    ("image-renamed", rename_image, "fit", [], "the same 24 images in number, but an image was renamed"),
    ("image-grew", resize_image, "report", ["fit", "prune", "finetune"], "changed size"),
    ("image-moved-to-another-class", move_image, "fit", [], "the same 24 images in number"),
]


@pytest.mark.parametrize(("change", "step", "before", "expected"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_a_step_on_changed_images_exits_2_naming_the_difference(user_folder, capsys, change, step, before, expected):
    run = trained(user_folder, capsys, *before)
    change(user_folder / "images")
    kept = snapshot(run)
    extra = {"finetune": ["--finetune-epochs", "1"], "report": ["--latency-batch", "4"]}.get(step, [])
    code, error = invoke([step, "--run", "run", *MODEL, *extra, "--quiet"], capsys)
    assert code == 2, error
    sentence = one_sentence(error)
    assert f"the ImageFolder at {user_folder / 'images'} has changed since `train`" in sentence, sentence
    assert expected in sentence, sentence
    assert snapshot(run) == kept


def test_unchanged_images_are_read_again_and_the_record_names_them(user_folder, capsys):
    import json

    run = trained(user_folder, capsys, "fit")
    data = json.loads((run / "run.json").read_text())["data"]
    assert data["classes"] == ["cat", "dog"] and data["file_count"] == 24 and len(data["files_sha256"]) == 64
    os.utime(user_folder / "images" / "cat" / "3.png", (0, 0))  # a new time, the same name and size: the same data
    code, error = invoke(["prune", "--run", "run", *MODEL, "--quiet"], capsys)
    assert code == 0, error


# --- torchvision data sets and the record itself ---------------------------------------------------

MNIST_RAW = Path(os.environ.get("PYRO_DIRICHLET_DATA", "/nonexistent")) / "MNIST" / "raw"


@pytest.mark.skipif(not (MNIST_RAW / "train-images-idx3-ubyte").is_file(), reason="needs the raw MNIST files")
def test_a_torchvision_set_whose_files_were_swapped_is_refused_by_its_label_count(tmp_path):
    from pyro_dirichlet.app.data_identity import check_same_data, data_identity
    from pyro_dirichlet.app.rundir import RunDirectoryError
    from pyro_dirichlet.data.torchvision_sets import load_torchvision_dataset

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(MNIST_RAW / name)
    recorded = data_identity(load_torchvision_dataset("MNIST", tmp_path))
    assert recorded["label_count"] == 70_000
    for name in ("images-idx3-ubyte", "labels-idx1-ubyte"):  # the training files replaced by the test files
        (raw / f"train-{name}").unlink()
        (raw / f"train-{name}").symlink_to(MNIST_RAW / f"t10k-{name}")
    with pytest.raises(RunDirectoryError, match="the data set torchvision:MNIST has changed since `train`: its files "
                                                "hold 20,000 labels, `train` read 70,000"):
        check_same_data("torchvision:MNIST", recorded, load_torchvision_dataset("MNIST", tmp_path))


def test_a_torchvision_set_with_fractional_labels_is_refused_not_truncated(monkeypatch, tmp_path):
    import numpy as np
    from torchvision import datasets

    from pyro_dirichlet.data.torchvision_sets import (
        TorchvisionDatasetError,
        load_torchvision_dataset,
    )

    class Fractional(datasets.VisionDataset):
        def __init__(self, root, train=True, download=False):
            super().__init__(root)
            self.data = np.zeros((20, 4, 4), dtype=np.uint8)
            self.targets = np.array([0.0, 1.0] * 9 + [2.7, 1.0])

    monkeypatch.setattr(datasets, "Fractional", Fractional, raising=False)
    with pytest.raises(TorchvisionDatasetError, match="has labels that are not class indices, such as 2.7"):
        load_torchvision_dataset("Fractional", tmp_path)


def test_split_sizes_are_compared_for_every_data_set():
    from pyro_dirichlet.app.data_identity import check_same_data, data_identity
    from pyro_dirichlet.app.rundir import RunDirectoryError
    from pyro_dirichlet.data import DataSplits, Split

    def splits(train: int) -> DataSplits:
        split = Split(torch.zeros(train, 1, 2, 2), torch.zeros(train, dtype=torch.int64))
        return DataSplits(split, split, split, "mnist", 10, (1, 2, 2))

    recorded = data_identity(splits(8))
    check_same_data("mnist", recorded, splits(8))
    check_same_data("mnist", {}, splits(9))  # a run recorded before the sizes were: nothing to compare
    with pytest.raises(RunDirectoryError, match="the data set mnist has changed since `train`: its train split holds 9 "
                                                "images, `train` read 8"):
        check_same_data("mnist", recorded, splits(9))
