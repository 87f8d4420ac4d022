"""Wide residual networks (Zagoruyko & Komodakis 2016) for CIFAR, inner widths as arguments.

Pre-activation blocks (BN -> ReLU -> conv), dropout between a block's two convolutions, a
1x1 convolution on the shortcut where the shape changes. Each block's inner convolution
(``conv1``) has a configurable width, which is what pruning changes. Forward passes are
``torch.fx``-traceable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_dirichlet.io.serialization import register_architecture
from pyro_dirichlet.models.widths import block_widths, check_width

__all__ = ["WideBlock", "WideResNet", "WideResNet10x1", "wrn_28_10"]


class WideBlock(nn.Module):
    """A pre-activation wide block.

    ``bn1`` -> ReLU -> ``conv1`` (3x3, ``in_channels`` -> ``inner``, stride ``stride``) ->
    ``bn2`` -> ReLU -> ``dropout`` -> ``conv2`` (3x3, ``inner`` -> ``out_channels``), plus
    the shortcut: the input itself, or where the shape changes ``shortcut`` = 1x1 conv
    (stride ``stride``) applied to the pre-activated input, as in the authors' code.

    Args:
        in_channels: channels entering the block.
        inner: output channels of ``conv1``, the prunable width.
        out_channels: channels leaving the block.
        stride: stride of ``conv1`` and of the shortcut convolution.
        dropout: dropout probability between the two convolutions.
    """

    def __init__(
        self, in_channels: int, inner: int, out_channels: int, stride: int, dropout: float
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(inner, out_channels, 3, padding=1, bias=False)
        # None (not an Identity) where the shapes agree: the graph then has no extra node.
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        if self.shortcut is not None:
            return out + self.shortcut(activated)
        return out + x


@register_architecture
class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 3x32x32 inputs; the defaults give WRN-28-10.

    Layers: ``conv1`` = Conv2d(3, 16, 3); stages ``block1``, ``block2``, ``block3`` of
    ``(depth - 4) / 6`` :class:`WideBlock` s with ``16k``, ``32k``, ``64k`` channels
    (``k`` = ``widen_factor``; the first block of stages 2 and 3 has stride 2); ``bn`` ->
    ReLU -> global average pooling; ``fc`` = Linear(64k, num_classes). Block ``j`` of stage
    ``s`` is ``block{s}.{j}`` with prunable ``block{s}.{j}.conv1``.

    WRN-28-10 has 36,479,194 parameters and costs 10,486,657,536 FLOPs per example as
    ``pyro_dirichlet.measure.count_flops`` counts them (2 per multiply-accumulate).

    Args:
        depth: ``6 n + 4`` for ``n`` blocks per stage (28 gives 4).
        widen_factor: ``k``, the channel multiplier.
        dropout: dropout probability inside each block (0.3 in the paper's CIFAR runs).
        inner_widths: output channels of every block's ``conv1``, stage by stage; ``None``
            uses the stage widths.
        num_classes: number of outputs.

    Example:
        >>> WideResNet(depth=10, widen_factor=1)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.3,
        inner_widths: Sequence[int] | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        check_width("depth", depth)
        check_width("widen_factor", widen_factor)
        check_width("num_classes", num_classes)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        inner_widths = block_widths(inner_widths, [width for width in widths for _ in range(blocks_per_stage)])

        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        in_channels = 16
        inner = iter(inner_widths)
        for stage, width in enumerate(widths):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(WideBlock(in_channels, next(inner), width, stride, float(dropout)))
                in_channels = width
            self.add_module(f"block{stage + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_channels)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = F.relu(self.bn(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


@register_architecture
class WideResNet10x1(WideResNet):
    """WRN-10-1 (one block per stage, widths 16/32/64): a small wide ResNet whose pruned
    copies save and load, for tests and smoke runs. 77,850 parameters, 25,003,264 FLOPs.

    Args:
        dropout: dropout probability inside each block.
        inner_widths: output channels of the 3 blocks' ``conv1``.
        num_classes: number of outputs.
    """

    def __init__(
        self,
        *,
        dropout: float = 0.3,
        inner_widths: Sequence[int] | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__(
            depth=10, widen_factor=1, dropout=dropout, inner_widths=inner_widths,
            num_classes=num_classes,
        )


def wrn_28_10(**kwargs: object) -> WideResNet:
    """WideResNet-28-10 with dropout 0.3 (Zagoruyko & Komodakis 2016) for CIFAR-10.

    Keyword arguments (``dropout``, ``inner_widths``, ``num_classes``) go to
    :class:`WideResNet`.
    """
    return WideResNet(depth=28, widen_factor=10, **kwargs)  # type: ignore[arg-type]
