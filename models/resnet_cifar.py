"""The CIFAR ResNets of He et al. 2016 (ResNet-20, ResNet-56), inner widths as arguments.

Each residual block's inner convolution (``conv1``) has a configurable width, which is what
pruning changes; the block outputs are tied together by the residual additions and keep
their widths. Forward passes are ``torch.fx``-traceable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_dirichlet.io.serialization import register_architecture
from pyro_dirichlet.models.widths import block_widths, check_width

__all__ = ["BasicBlock", "CifarResNet", "ResNet20", "ResNet56", "resnet20", "resnet56"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection, the option-A shortcut of He et al.

    ``conv1`` (``in_channels`` -> ``inner``, stride ``stride``) -> ``bn1`` -> ReLU ->
    ``conv2`` (``inner`` -> ``out_channels``) -> ``bn2``, plus the shortcut, then ReLU.
    Where the shape changes the shortcut has no parameters: it keeps every other pixel
    (``x[:, :, ::2, ::2]``) and pads the channels with zeros on both sides. Stride and
    padding are read off ``conv1`` and ``conv2`` in ``forward``, so a block whose leaf
    modules were replaced (pruning, loading) stays consistent.

    Args:
        in_channels: channels entering the block.
        inner: output channels of ``conv1``, the prunable width.
        out_channels: channels leaving the block.
        stride: stride of ``conv1`` (1 or 2).
    """

    def __init__(self, in_channels: int, inner: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Module attributes, not tensor shapes, so tracing sees plain Python ints.
        shortcut = x
        if self.conv1.stride[0] != 1:
            shortcut = shortcut[:, :, :: self.conv1.stride[0], :: self.conv1.stride[0]]
        extra = self.conv2.out_channels - self.conv1.in_channels
        if extra != 0:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A CIFAR ResNet of He et al. 2016: a 3x3 stem, three stages of BasicBlocks, a linear head.

    Layers: ``conv1`` = Conv2d(3, widths[0], 3) -> ``bn1`` -> ReLU; stages ``layer1``,
    ``layer2``, ``layer3`` of ``blocks_per_stage`` blocks each (the first block of stages 2
    and 3 has stride 2); global average pooling; ``fc`` = Linear(widths[2], num_classes).
    Block ``j`` of stage ``s`` is ``layer{s}.{j}`` with prunable ``layer{s}.{j}.conv1``.
    Depth is ``6 * blocks_per_stage + 2``.

    Args:
        blocks_per_stage: residual blocks in each of the three stages.
        widths: channels of the three stages.
        inner_widths: output channels of every block's ``conv1``, stage by stage
            (``3 * blocks_per_stage`` numbers); ``None`` uses the stage widths.
        num_classes: number of outputs.
    """

    def __init__(
        self,
        *,
        blocks_per_stage: int = 9,
        widths: Sequence[int] = (16, 32, 64),
        inner_widths: Sequence[int] | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        check_width("blocks_per_stage", blocks_per_stage)
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError(f"widths must give 3 stage widths, got {len(widths)}")
        for index, width in enumerate(widths):
            check_width(f"widths[{index}]", width)
        check_width("num_classes", num_classes)
        stage_of_block = [stage for stage in range(3) for _ in range(blocks_per_stage)]
        inner_widths = block_widths(inner_widths, [widths[stage] for stage in stage_of_block])

        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_channels = widths[0]
        inner = iter(inner_widths)
        for stage, width in enumerate(widths):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, next(inner), width, stride))
                in_channels = width
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


@register_architecture
class ResNet56(CifarResNet):
    """ResNet-56 for CIFAR-10: 3 stages x 9 BasicBlocks, widths 16/32/64, option-A shortcuts.

    With the default widths: 853,018 parameters and 250,971,392 FLOPs per example as
    ``pyro_dirichlet.measure.count_flops`` counts them (2 per multiply-accumulate).

    Args:
        inner_widths: output channels of the 27 blocks' ``conv1``; ``None`` for 16/32/64.
        num_classes: number of outputs.

    Example:
        >>> ResNet56()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, inner_widths: Sequence[int] | None = None, num_classes: int = 10) -> None:
        super().__init__(blocks_per_stage=9, inner_widths=inner_widths, num_classes=num_classes)


@register_architecture
class ResNet20(CifarResNet):
    """ResNet-20 for CIFAR-10: 3 stages x 3 BasicBlocks, widths 16/32/64, option-A shortcuts.

    With the default widths: 269,722 parameters and 81,102,080 FLOPs per example as
    ``pyro_dirichlet.measure.count_flops`` counts them. Small enough for fast tests.

    Args:
        inner_widths: output channels of the 9 blocks' ``conv1``; ``None`` for 16/32/64.
        num_classes: number of outputs.
    """

    def __init__(self, *, inner_widths: Sequence[int] | None = None, num_classes: int = 10) -> None:
        super().__init__(blocks_per_stage=3, inner_widths=inner_widths, num_classes=num_classes)


def resnet56(**kwargs: object) -> ResNet56:
    """ResNet-56 (He et al. 2016) for CIFAR-10; keyword arguments go to :class:`ResNet56`."""
    return ResNet56(**kwargs)  # type: ignore[arg-type]


def resnet20(**kwargs: object) -> ResNet20:
    """ResNet-20 (He et al. 2016) for CIFAR-10; keyword arguments go to :class:`ResNet20`."""
    return ResNet20(**kwargs)  # type: ignore[arg-type]
