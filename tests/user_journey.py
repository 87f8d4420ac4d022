"""A new user's material for the journey tests (issue 32): their own module, their images, their training loop.

``MYNETS`` is the ``mynets.py`` a user keeps beside their data: a small BatchNorm ResNet
built by ``factory(num_classes=5, width=32)``. :func:`write_image_folder` makes a 5-class
ImageFolder whose classes differ in colour, so a few steps of :func:`train_own_loop` learn
something; the loop normalises per channel with CIFAR's statistics, as the user's own code does.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

MYNETS = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class SmallResNet(nn.Module):
    def __init__(self, num_classes=5, width=32):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = Block(width)
        self.head = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn_head = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn(self.stem(x))))
        x = torch.relu(self.bn_head(self.head(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def factory(num_classes=5, width=32):
    return SmallResNet(num_classes=num_classes, width=width)
'''

#: CIFAR-10's per-channel mean and std, as a user's training script normalises with them.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("apple", "bird", "cat", "dog", "eel")


def write_image_folder(root: Path, *, per_class: int = 12, size: int = 12, seed: int = 0) -> None:
    """``root/CLASS/NNN.png``: noisy images whose mean colour tells the class."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = torch.tensor([(index * 50) % 256, (255 - index * 40) % 256, (index * 90) % 256], dtype=torch.float32)
        for i in range(per_class):
            noise = torch.randint(-40, 41, (size, size, 3), generator=generator).float()
            pixels = (colour + noise).clamp(0, 255).to(torch.uint8).numpy()
            buffer = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
            (root / name / f"{i:03d}.png").write_bytes(buffer.getvalue())


def read_images(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's own loader: every image in [0, 1], then CIFAR-normalised per channel, with its label."""
    import numpy as np
    from PIL import Image

    images, labels = [], []
    for index, name in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        for path in sorted((root / name).glob("*.png")):
            with Image.open(path) as image:
                images.append(torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1))
            labels.append(index)
    x = torch.stack(images).float() / 255
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels)


def train_own_loop(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 30) -> nn.Module:
    """A plain Adam loop, as a user writes it."""
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(network(images), labels).backward()
        optimiser.step()
    return network.eval()
