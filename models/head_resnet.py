"""A small BatchNorm ResNet with a ReLU MLP head: the kind of network users bring of their own.

A 3x3 stem, three residual blocks (each two 3x3 convolutions with BatchNorm, a 1x1
convolution + BatchNorm shortcut, the second and third at stride 2), global average
pooling, then a hidden ReLU layer and the classifier. Trained briefly on a few thousand
images, its hidden layer grows units that never fire, which makes it the test bench of
the ranking study (``analysis/ranking_quality.py``): a ranking must put those units last.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["HeadResNet", "head_resnet"]


class _Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut_bn(self.shortcut(x)))


class HeadResNet(nn.Module):
    """Stem + three residual blocks of ``width``, ``2 * width``, ``4 * width`` channels + an MLP head.

    Args:
        num_classes: outputs of the classifier.
        width: channels of the stem and the first block.
        hidden: units of the head's hidden ReLU layer (``fc1``).
        in_channels: channels of the input images.
    """

    def __init__(self, num_classes: int = 5, width: int = 32, hidden: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.block1 = _Block(width, width, 1)
        self.block2 = _Block(width, 2 * width, 2)
        self.block3 = _Block(2 * width, 4 * width, 2)
        self.fc1 = nn.Linear(4 * width, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.block3(self.block2(self.block1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def head_resnet(num_classes: int = 5, width: int = 32, hidden: int = 64) -> HeadResNet:
    """A fresh :class:`HeadResNet` (the factory the CLI's ``--model models.head_resnet:head_resnet`` form reads)."""
    return HeadResNet(num_classes=num_classes, width=width, hidden=hidden)
