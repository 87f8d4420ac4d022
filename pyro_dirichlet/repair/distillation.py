"""Knowledge distillation: the fine-tune loss that also asks the pruned network to match the unpruned one.

Post-training pruning always has the trained network at hand, and its softened class
probabilities carry more than the labels do (which wrong classes an image resembles), so a
pruned network fine-tuned to match them as well as the labels recovers with fewer labelled
epochs (Hinton, Vinyals & Dean 2015). :func:`pyro_dirichlet.repair.train.train_classifier` uses
:func:`distillation_loss` when ``TrainConfig.distillation`` is above 0 and a ``teacher`` is
given; the teacher is never trained.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DEFAULT_DISTILLATION", "DEFAULT_TEMPERATURE", "distillation_loss", "check_teacher"]

#: The share of the loss that matches the teacher unless asked: none, training on the labels alone
#: (which needs no teacher).
DEFAULT_DISTILLATION = 0.0

#: Softmax temperature of the matching term unless told otherwise: soft enough that the
#: teacher's wrong-class probabilities carry information (Hinton, Vinyals & Dean use 1-20).
DEFAULT_TEMPERATURE = 4.0


def distillation_loss(
    scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1 - weight) * CE(scores, labels) + weight * T^2 * KL(teacher_T || student_T)``.

    ``student_T`` and ``teacher_T`` are the two networks' softmax at temperature ``T``; the
    ``T^2`` keeps the gradient of the matching term on the scale of the label term's as
    ``T`` grows (Hinton et al. 2015, section 2). The KL is averaged over the batch.

    Args:
        scores: the trained network's class scores, ``(batch, classes)``.
        teacher_scores: the teacher's class scores for the same (augmented) images; no
            gradient flows into them.
        labels: class indices, ``(batch,)``.
        weight: share of the matching term, in ``[0, 1]``; 0 is plain cross-entropy.
        temperature: softmax temperature ``T`` of the matching term, positive.
        label_smoothing: of the cross-entropy term.

    Example:
        >>> scores = torch.tensor([[2.0, 0.0]])
        >>> round(distillation_loss(scores, scores, torch.tensor([0]), weight=1.0, temperature=4.0).item(), 6)
        0.0
    """
    hard = F.cross_entropy(scores, labels, label_smoothing=label_smoothing)
    if weight == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(scores / temperature, dim=1),
        F.log_softmax(teacher_scores.detach() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * hard + weight * temperature**2 * soft


def check_teacher(teacher: nn.Module | None, model: nn.Module, weight: float) -> None:
    """Refuse a teacher that cannot be used as one.

    Raises:
        ValueError: ``weight`` is above 0 without a teacher, a teacher is given with
            ``weight`` 0 (it would be ignored without a word), or the teacher shares a
            parameter with ``model`` (training the student would move the teacher).
        TypeError: ``teacher`` is not a module.
    """
    if teacher is None:
        if weight > 0:
            raise ValueError(f"distillation={weight} needs a teacher: pass teacher=<the unpruned network>")
        return
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if weight == 0:
        raise ValueError("teacher was given but distillation is 0, so it would be ignored; set distillation in (0, 1]")
    # By storage, not identity: a view of the teacher's weights would move with them too.
    shared = _storages(teacher) & _storages(model)
    if shared:
        raise ValueError(
            f"teacher shares the memory of {len(shared)} parameter(s) with the model being trained; pass a copy "
            "(copy.deepcopy) so the teacher stays as it was"
        )


def _storages(module: nn.Module) -> set[tuple[str, int]]:
    return {(str(p.device), p.untyped_storage().data_ptr()) for p in module.parameters() if p.numel() > 0}
