"""The network architectures the project prunes: plain torch modules, nothing else.

Installed as ``pyro_dirichlet.models``. Which data set each is trained on, its recipe and its
cached trained weights are the library's business: :mod:`pyro_dirichlet.baselines`.
"""

from pyro_dirichlet.models.lenet import LeNet5Caffe, LeNet300100
from pyro_dirichlet.models.resnet_cifar import (
    CifarResNet,
    ResNet20,
    ResNet56,
    resnet20,
    resnet56,
)
from pyro_dirichlet.models.vgg import VGG16
from pyro_dirichlet.models.wrn import WideResNet, WideResNet10x1, wrn_28_10

__all__ = [
    "CifarResNet",
    "LeNet300100",
    "LeNet5Caffe",
    "ResNet20",
    "ResNet56",
    "VGG16",
    "WideResNet",
    "WideResNet10x1",
    "resnet20",
    "resnet56",
    "wrn_28_10",
]
