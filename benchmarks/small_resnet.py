"""A new user's network for the Torch-Pruning head to head: a small BatchNorm ResNet with 1x1
shortcut convolutions and a ReLU MLP head, trained on a 5-class ImageFolder cut from the
CIFAR-10 JPEG copy.

The folder is written once (JPEG members copied out of ``cifar10-jpeg/train.zip`` and
``test.zip``, never re-encoded) and the trained weights are cached beside it, keyed by the
recipe, so later runs of :mod:`benchmarks.versus_torch_pruning` only read them.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.io.cache import resolve_cache_dir
from pyro_dirichlet.data import DataSplits, load_dataset
from pyro_dirichlet.data.root import resolve_data_root
from pyro_dirichlet.repair.train import TrainConfig, train_classifier

__all__ = ["CLASSES", "SmallResNet", "SmallResNetRecipe", "image_folder", "load_or_train_small_resnet"]

#: The five CIFAR-10 classes of the folder (two vehicles, three animals).
CLASSES = ("airplane", "automobile", "bird", "cat", "deer")


class _Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (a 1x1 conv and BN where the width or stride changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem (16) -> blocks 16, 32 (stride 2), 64 (stride 2) -> pool -> Linear 64-64 ReLU -> Linear 64-classes."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = _Block(16, 16, 1)
        self.layer2 = _Block(16, 32, 2)
        self.layer3 = _Block(32, 64, 2)
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


@dataclass(frozen=True)
class SmallResNetRecipe:
    """The folder's size and the baseline's training recipe (the cache key)."""

    train_per_class: int = 600
    test_per_class: int = 200
    epochs: int = 8
    lr: float = 0.05
    batch_size: int = 128
    seed: int = 0


def image_folder(recipe: SmallResNetRecipe, data_dir: str | None = None, cache_dir: str | None = None) -> Path:
    """``<cache>/imagefolder-<train>-<test>/{train,test}/<class>/*.jpg``, written once from the CIFAR-10 JPEG zips."""
    root = resolve_cache_dir("versus-torch-pruning", cache_dir) / f"imagefolder-{recipe.train_per_class}-{recipe.test_per_class}"
    done = root / "complete"
    if done.exists():
        return root
    source = resolve_data_root(data_dir)[0] / "cifar10-jpeg"
    for split, per_class in (("train", recipe.train_per_class), ("test", recipe.test_per_class)):
        with zipfile.ZipFile(source / f"{split}.zip") as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
            for cls in CLASSES:
                members = [n for n in names if n.split("/")[-2] == cls][:per_class]
                folder = root / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                for member in members:
                    (folder / Path(member).name).write_bytes(archive.read(member))
    done.write_text("ok\n")
    return root


def load_or_train_small_resnet(
    recipe: SmallResNetRecipe = SmallResNetRecipe(),
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    log=print,
) -> tuple[SmallResNet, DataSplits, dict]:
    """The trained network (eval mode), its data (validation carved from train) and how it was trained."""
    folder = image_folder(recipe, data_dir, cache_dir)
    data = load_dataset(f"imagefolder:{folder}")
    key = "-".join(f"{v}" for v in asdict(recipe).values())
    weights = folder.parent / f"small-resnet-{key}.pt"
    network = SmallResNet(len(CLASSES))
    if weights.exists():
        network.load_state_dict(torch.load(weights, weights_only=True))
        record = json.loads(weights.with_suffix(".json").read_text())
    else:
        log(f"training the small BN ResNet on {folder} ({recipe.epochs} epochs)")
        config = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, optimizer="sgd",
                             momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine", seed=recipe.seed)
        torch.manual_seed(recipe.seed)
        network = SmallResNet(len(CLASSES))
        train_classifier(network, data, config, progress=False)
        torch.save(network.state_dict(), weights)
        record = {"recipe": asdict(recipe), "folder": str(folder)}
        weights.with_suffix(".json").write_text(json.dumps(record))
    return network.eval(), data, record
