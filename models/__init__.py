"""The networks the project prunes, their registry entries, and their cached trained baselines."""

from pyro_dirichlet.models.baseline import (
    CACHE_ENV_VAR,
    Baseline,
    load_checkpoint,
    load_or_train_baseline,
    resolve_cache_dir,
    save_checkpoint,
)
from pyro_dirichlet.models.lenet import LeNet300100, LeNet5Caffe
from pyro_dirichlet.models.registry import MODELS, ModelEntry, get_model_entry
from pyro_dirichlet.models.resnet_cifar import CifarResNet, ResNet20, ResNet56, resnet20, resnet56
from pyro_dirichlet.models.vgg import VGG16
from pyro_dirichlet.models.wrn import WideResNet, WideResNet10x1, wrn_28_10

__all__ = [
    "CACHE_ENV_VAR",
    "CifarResNet",
    "MODELS",
    "Baseline",
    "LeNet300100",
    "LeNet5Caffe",
    "ModelEntry",
    "ResNet20",
    "ResNet56",
    "VGG16",
    "WideResNet",
    "WideResNet10x1",
    "get_model_entry",
    "load_checkpoint",
    "load_or_train_baseline",
    "resolve_cache_dir",
    "resnet20",
    "resnet56",
    "save_checkpoint",
    "wrn_28_10",
]
