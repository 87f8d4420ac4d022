"""Fine-tuning of a pruned network: a named entry point over the one training loop."""

from __future__ import annotations

import torch
from torch import nn

from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.training import TrainConfig, TrainResult, train_classifier

__all__ = ["finetune", "DEFAULT_EPOCHS", "DEFAULT_LR"]

#: Fine-tune epochs of the command line's prune -> fine-tune. 8 was chosen among 3, 5 and 8
#: by mean validation accuracy of LeNet-5 pruned to 5-12-40 (3 seeds), keeping fit plus
#: fine-tuning within 3 baseline training epochs (``analysis/reproduction.py``).
DEFAULT_EPOCHS = 8
#: Peak learning rate: 1e-2 was chosen over 3e-3 and 1e-3 by validation accuracy after
#: pruning LeNet-5 (``analysis/select_finetune_lr.py``).
DEFAULT_LR = 1e-2


def finetune(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Fine-tune a pruned network in place with Adam and a cosine schedule.

    Every parameter is made trainable first (surgery may hand back frozen tensors), and the
    model trains in train mode. The validation split is scored before training and after
    each epoch, and the model ends up holding the weights with the best *validation*
    accuracy -- the untouched pruned weights included, so fine-tuning never returns a
    network worse on validation than the one it was given; the
    test split is never looked at. The model is returned to the train/eval mode it had.

    Args:
        model: the pruned network; modified in place and moved to ``device``.
        data: the splits it trains and selects on.
        epochs: passes over the training split; 0 leaves the model untouched and returns
            an empty result (``epochs=0``, ``best_epoch=-1``).
        lr: peak learning rate of the cosine schedule.
        batch_size: examples per step.
        seed: seeds the shuffling and torch's global generator.
        device: where to train.
        progress: show a progress bar per epoch.

    Returns:
        The per-epoch record from :func:`train_classifier`.

    Example:
        >>> result = finetune(pruned, data, epochs=2)  # doctest: +SKIP
        >>> result.best_validation_accuracy  # doctest: +SKIP
        0.988
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # Built first so a bad epochs/lr/batch_size raises before the model is touched.
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    if epochs == 0:
        return TrainResult(epochs=0)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return train_classifier(model, data, config, device=device, progress=progress, keep_initial=True)
