"""LeNet networks for MNIST, with every layer width a constructor argument.

Widths are arguments so that a pruned architecture can be built directly, e.g.
``LeNet5Caffe(conv1=5, conv2=12, fc1=40)``. Forward passes use only ``torch.fx``-traceable
operations, because the graph analysis traces these models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_dirichlet.io.serialization import register_architecture
from pyro_dirichlet.models.widths import check_width

__all__ = ["LeNet300100", "LeNet5Caffe"]


# Registered so a pruned copy saved with save_pruned can be rebuilt without pickle.
@register_architecture
class LeNet5Caffe(nn.Module):
    """The Caffe variant of LeNet-5 for 1x28x28 inputs, used throughout the pruning literature.

    Layers: ``conv1`` = Conv2d(1, 20, 5) -> ReLU -> max-pool 2; ``conv2`` = Conv2d(20, 50, 5)
    -> ReLU -> max-pool 2; flatten (50 * 4 * 4 = 800); ``fc1`` = Linear(800, 500) -> ReLU;
    ``fc2`` = Linear(500, 10). The activation order is conv -> ReLU -> pool, fixed here
    (ReLU and max-pooling commute, so the outputs equal the pool-first order's).

    With the default widths the network has 431,080 parameters and costs 4,586,000 FLOPs
    per example as ``torch.utils.flop_counter.FlopCounterMode`` counts them (2 per
    multiply-accumulate of the convolutions and matrix products; biases, ReLU and pooling
    are not counted): conv1 576,000 + conv2 3,200,000 + fc1 800,000 + fc2 10,000.

    Args:
        conv1: output channels of the first convolution.
        conv2: output channels of the second convolution.
        fc1: width of the hidden fully connected layer.
        num_classes: number of outputs.

    Example:
        >>> model = LeNet5Caffe()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> pruned = LeNet5Caffe(conv1=5, conv2=12, fc1=40)
    """

    def __init__(
        self, *, conv1: int = 20, conv2: int = 50, fc1: int = 500, num_classes: int = 10
    ) -> None:
        super().__init__()
        for name, width in dict(conv1=conv1, conv2=conv2, fc1=fc1, num_classes=num_classes).items():
            check_width(name, width)
        self.conv1 = nn.Conv2d(1, conv1, kernel_size=5)
        self.conv2 = nn.Conv2d(conv1, conv2, kernel_size=5)
        # 28 -> conv 24 -> pool 12 -> conv 8 -> pool 4, so each conv2 channel gives 4*4 inputs.
        self.fc1 = nn.Linear(conv2 * 4 * 4, fc1)
        self.fc2 = nn.Linear(fc1, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


@register_architecture
class LeNet300100(nn.Module):
    """The fully connected LeNet-300-100 for 28x28 inputs.

    Layers: flatten (784) -> ``fc1`` = Linear(784, 300) -> ReLU -> ``fc2`` = Linear(300, 100)
    -> ReLU -> ``fc3`` = Linear(100, 10).

    With the default widths the network has 266,610 parameters and costs 532,400 FLOPs per
    example as ``FlopCounterMode`` counts them (2 per multiply-accumulate; biases and ReLU
    not counted).

    Args:
        fc1: width of the first hidden layer.
        fc2: width of the second hidden layer.
        num_classes: number of outputs.
        in_features: inputs after flattening (28 * 28 for MNIST).

    Example:
        >>> LeNet300100(fc1=30, fc2=30)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, *, fc1: int = 300, fc2: int = 100, num_classes: int = 10, in_features: int = 784
    ) -> None:
        super().__init__()
        for name, width in dict(fc1=fc1, fc2=fc2, num_classes=num_classes, in_features=in_features).items():
            check_width(name, width)
        self.fc1 = nn.Linear(in_features, fc1)
        self.fc2 = nn.Linear(fc1, fc2)
        self.fc3 = nn.Linear(fc2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
