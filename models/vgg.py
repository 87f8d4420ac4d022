"""VGG-16 for CIFAR-10 as the channel-pruning literature uses it, every width an argument.

Widths are arguments so a pruned VGG-16 can be built directly, e.g. with the 13 conv widths
and FC width of a pruned model. The forward pass is ``torch.fx``-traceable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_dirichlet.io.serialization import register_architecture
from pyro_dirichlet.models.widths import check_width

__all__ = ["VGG16", "VGG16_CONV_NAMES", "VGG16_WIDTHS", "DIRICHLET_PAPER_WIDTHS", "DIRICHLET_PAPER_FC"]

VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
"""Output channels of the 13 convolutions of the full network."""

_BLOCK_SIZES = (2, 2, 3, 3, 3)
VGG16_CONV_NAMES = tuple(
    f"conv{block + 1}_{index + 1}" for block, size in enumerate(_BLOCK_SIZES) for index in range(size)
)
"""``("conv1_1", "conv1_2", "conv2_1", ..., "conv5_3")``: the convolutions in order."""

DIRICHLET_PAPER_WIDTHS = (34, 34, 68, 68, 75, 106, 101, 92, 102, 92, 67, 67, 62)
"""Conv widths of the Dirichlet pruning paper's pruned VGG-16 (with ``fc1`` at :data:`DIRICHLET_PAPER_FC`)."""
DIRICHLET_PAPER_FC = 62


@register_architecture
class VGG16(nn.Module):
    """VGG-16 with BatchNorm for 3x32x32 inputs (the variant of Li et al. 2017, "Pruning
    Filters for Efficient ConvNets", and of the Dirichlet pruning paper).

    Layers: 13 blocks ``convB_I`` = Conv2d(3x3, padding 1, no bias) -> ``bnB_I`` =
    BatchNorm2d -> ReLU, with 2x2 max-pooling after the last convolution of each of the five
    groups (``conv1_2``, ``conv2_2``, ``conv3_3``, ``conv4_3``, ``conv5_3``), so the
    feature map is 1x1; flatten (512); ``fc1`` = Linear(512, 512) -> ``bn_fc1`` =
    BatchNorm1d -> ReLU; ``fc2`` = Linear(512, 10). Module names follow the original
    VGG naming (group, index): ``conv1_1`` ... ``conv5_3``.

    The BatchNorm1d after ``fc1`` and the bias-free convolutions are those of Li et al.'s
    code; with them the pruned widths of the Dirichlet paper (convs 34, 34, 68, 68, 75, 106,
    101, 92, 102, 92, 67, 67, 62; ``fc1`` 62) give 679,949 parameters, the paper's 0.68M
    (without the BatchNorm1d: 679,825; with conv biases: 680,917).

    With the default widths the network has 14,987,722 parameters and costs 626,927,616
    FLOPs per example as ``pyro_dirichlet.measure.count_flops`` counts them (2 per
    multiply-accumulate of convolutions and matrix products). The pruned widths above cost
    91,671,768 FLOPs (6.8x fewer).

    Args:
        widths: output channels of the 13 convolutions, in order.
        fc: width of the hidden fully connected layer ``fc1``.
        num_classes: number of outputs.

    Example:
        >>> VGG16()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> pruned = VGG16(widths=(34, 34, 68, 68, 75, 106, 101, 92, 102, 92, 67, 67, 62), fc=62)
    """

    def __init__(
        self, *, widths: Sequence[int] = VGG16_WIDTHS, fc: int = 512, num_classes: int = 10
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != len(VGG16_CONV_NAMES):
            raise ValueError(f"widths must list {len(VGG16_CONV_NAMES)} conv widths, got {len(widths)}")
        for name, width in zip(VGG16_CONV_NAMES, widths):
            check_width(f"widths[{name}]", width)
        check_width("fc", fc)
        check_width("num_classes", num_classes)
        in_channels = 3
        for name, width in zip(VGG16_CONV_NAMES, widths):
            setattr(self, name, nn.Conv2d(in_channels, width, 3, padding=1, bias=False))
            setattr(self, name.replace("conv", "bn"), nn.BatchNorm2d(width))
            in_channels = width
        # 32 -> 16 -> 8 -> 4 -> 2 -> 1 after five poolings: one pixel per channel.
        self.fc1 = nn.Linear(in_channels, fc)
        self.bn_fc1 = nn.BatchNorm1d(fc)
        self.fc2 = nn.Linear(fc, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        # A loop over fixed names unrolls into a static graph when traced.
        for name in VGG16_CONV_NAMES:
            conv = getattr(self, name)
            bn = getattr(self, name.replace("conv", "bn"))
            x = F.relu(bn(conv(x)))
            if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
                x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.bn_fc1(self.fc1(x)))
        return self.fc2(x)
