"""The models the project knows by name, each with its data set, training recipe and default pruned widths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from pyro_dirichlet.models.lenet import LeNet5Caffe, LeNet300100
from pyro_dirichlet.models.resnet_cifar import ResNet20, ResNet56
from pyro_dirichlet.models.vgg import (
    DIRICHLET_PAPER_FC,
    DIRICHLET_PAPER_WIDTHS,
    VGG16,
    VGG16_CONV_NAMES,
)
from pyro_dirichlet.models.wrn import WideResNet
from pyro_dirichlet.repair.train import TrainConfig

__all__ = ["MODELS", "ModelEntry", "get_model_entry", "resnet_inner_keep"]


@dataclass(frozen=True)
class ModelEntry:
    """A named model with everything needed to train its baseline and prune it.

    Args:
        name: the key in :data:`MODELS` and on the command line.
        build: makes a freshly initialised, full-width network.
        dataset: name of the data set it is trained on (see ``load_dataset``).
        train: the recipe for its baseline.
        default_keep: units each prunable layer keeps by default, by submodule name.

    Example:
        >>> entry = get_model_entry("lenet5")
        >>> entry.dataset, entry.default_keep["conv1"]
        ('mnist', 5)
    """

    name: str
    build: Callable[[], nn.Module]
    dataset: str
    train: TrainConfig
    default_keep: dict[str, int]


def resnet_inner_keep(*, blocks: int, divisor: int) -> dict[str, int]:
    """Keep counts ``width // divisor`` for every block's inner conv of a CIFAR ResNet (stages of 16, 32, 64).

    Under ``coupled="skip"`` the inner convs are what is pruned: block outputs are tied by
    the additions.
    """
    return {
        f"layer{stage}.{block}.conv1": width // divisor
        for stage, width in ((1, 16), (2, 32), (3, 64))
        for block in range(blocks)
    }


# The CIFAR recipes are the papers' (SGD, momentum 0.9, weight decay 5e-4, lr 0.1, batch
# 128) with a cosine schedule in place of step decays; only the epochs differ per model.
_CIFAR_SGD = TrainConfig(
    epochs=160, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine"
)

# A fast schedule for CPU training of the small CIFAR ResNets (one-cycle SGD with Nesterov
# momentum and label smoothing, as in the fast CIFAR-10 training literature): ResNet-20 on
# 45k images in 30 epochs, about 2.5 minutes an epoch on one CPU thread.
CIFAR_FAST_SGD = TrainConfig(
    epochs=30,
    batch_size=128,
    lr=0.2,
    optimizer="sgd",
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="onecycle",
    label_smoothing=0.1,
)

MODELS: dict[str, ModelEntry] = {
    "lenet5": ModelEntry(
        name="lenet5",
        build=LeNet5Caffe,
        dataset="mnist",
        # Fewest epochs measured to clear 99.0% MNIST test accuracy (55k/5k split, CPU):
        # 3 epochs gave 99.18 / 99.15 / 99.20% for seeds 0 / 1 / 2; 2 epochs gave 98.97%.
        train=TrainConfig(epochs=3, batch_size=128, lr=1e-3, optimizer="adam", schedule="cosine"),
        default_keep={"conv1": 5, "conv2": 12, "fc1": 40},
    ),
    "lenet300": ModelEntry(
        name="lenet300",
        build=LeNet300100,
        dataset="mnist",
        # 4 epochs gave 97.97% MNIST test accuracy (seed 0), the usual level for this network.
        train=TrainConfig(epochs=4, batch_size=128, lr=1e-3, optimizer="adam", schedule="cosine"),
        default_keep={"fc1": 30, "fc2": 30},
    ),
    # GPU times below are estimates:
    # 3x the forward FLOPs per training image (forward + backward) over 45k images per
    # epoch, at an assumed 40 TFLOP/s sustained float32/TF32 on an H100, then doubled for
    # the overheads of batch-128 steps; not measured.
    "vgg16": ModelEntry(
        name="vgg16",
        build=VGG16,
        dataset="cifar10",
        # 160 epochs as Li et al. 2017. 85 TFLOP per epoch: about 4 s per epoch, 12 min in
        # all on an H100 (estimate).
        train=replace(_CIFAR_SGD, epochs=160),
        # The Dirichlet paper's pruned VGG-16 (0.68M parameters).
        default_keep={
            **dict(zip(VGG16_CONV_NAMES, DIRICHLET_PAPER_WIDTHS)),
            "fc1": DIRICHLET_PAPER_FC,
        },
    ),
    "resnet56": ModelEntry(
        name="resnet56",
        build=ResNet56,
        dataset="cifar10",
        # 160 epochs (He et al.'s 64k iterations are about 182). 34 TFLOP per epoch; 56
        # thin layers make it latency-bound, so about 5 s per epoch, 15 min in all on an
        # H100 (estimate).
        train=replace(_CIFAR_SGD, epochs=160),
        # Half of each block's inner convolution; block outputs are tied by the additions.
        default_keep=resnet_inner_keep(blocks=9, divisor=2),
    ),
    # ResNet-56's little sibling (3 blocks per stage, 0.27M parameters, 41M FLOPs): the
    # architecture CPU runs of the CIFAR studies use where ResNet-56 would take hours.
    "resnet20": ModelEntry(
        name="resnet20",
        build=ResNet20,
        dataset="cifar10",
        train=CIFAR_FAST_SGD,
        default_keep=resnet_inner_keep(blocks=3, divisor=2),
    ),
    "wrn_28_10": ModelEntry(
        name="wrn_28_10",
        build=WideResNet,
        dataset="cifar10",
        # 200 epochs as Zagoruyko & Komodakis. 1,416 TFLOP per epoch: about 70 s per
        # epoch, 4 h in all on an H100 (estimate).
        train=replace(_CIFAR_SGD, epochs=200),
        default_keep={
            f"block{stage}.{block}.conv1": width // 2
            for stage, width in ((1, 160), (2, 320), (3, 640))
            for block in range(4)
        },
    ),
}


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry called ``name``.

    Raises:
        ValueError: ``name`` is not a registered model; the message lists the valid names.

    Example:
        >>> get_model_entry("lenet300").build().fc1.out_features
        300
    """
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model name {name!r}; valid choices: {', '.join(sorted(MODELS))}"
        ) from None
