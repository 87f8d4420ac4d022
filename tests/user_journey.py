"""A new user's material for the journey tests (issue 32): their own module, their images, their training loop.

``MYNETS`` is the ``mynets.py`` of docs/your-network.md's walk-through, kept beside the user's data: a
small BatchNorm ResNet built by ``factory(num_classes=5, width=32)``. :func:`write_image_folder` makes a 5-class
ImageFolder whose classes differ in colour, so a few steps of :func:`train_own_loop` learn
something; the loop normalises per channel with CIFAR's statistics, as the user's own code does.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from torch import nn

#: The walk-through of docs/your-network.md and its blocks: the user's instructions, run as written.
PAGE = Path(__file__).resolve().parents[1] / "docs" / "your-network.md"
HEADING = "## From your training script to deployment"


def readme_section() -> str:
    text = PAGE.read_text()
    start = text.index(HEADING)
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", readme_section(), re.S)


#: The ``mynets.py`` of the walk-through.
MYNETS = readme_blocks("python")[0]

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
