"""Fine-tuning by distillation: the loss, the checks on the teacher, and knowledge that flows from it on real MNIST."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import shrink

from pyro_dirichlet.data import Split
from pyro_dirichlet.repair.distillation import distillation_loss
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.baselines import get_model_entry
from pyro_dirichlet.repair.train import TrainConfig, finetune, train_classifier


def test_the_loss_blends_cross_entropy_with_the_tempered_kl_by_hand():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 10, generator=generator, requires_grad=True)
    teacher = torch.randn(6, 10, generator=generator, requires_grad=True)
    labels = torch.randint(0, 10, (6,), generator=generator)
    hard = F.cross_entropy(scores, labels, label_smoothing=0.1)
    assert torch.equal(distillation_loss(scores, teacher, labels, weight=0.0, temperature=4.0, label_smoothing=0.1), hard)
    p, q = F.softmax(teacher / 3.0, dim=1), F.softmax(scores / 3.0, dim=1)
    kl = (p * (p.log() - q.log())).sum(dim=1).mean()
    loss = distillation_loss(scores, teacher, labels, weight=0.7, temperature=3.0, label_smoothing=0.1)
    assert loss.item() == pytest.approx((0.3 * hard + 0.7 * 9.0 * kl).item(), rel=1e-5)
    loss.backward()
    assert teacher.grad is None and scores.grad is not None  # the teacher's scores are a target, never moved
    # Matching the teacher exactly costs nothing in the matching term.
    same = distillation_loss(scores, scores.detach(), labels, weight=1.0, temperature=4.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_the_config_checks_the_share_and_temperature_and_keeps_old_cache_keys():
    for bad in ({"distillation": 1.5}, {"distillation": -0.1}, {"distillation": float("nan")}, {"temperature": 0.0}):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            TrainConfig(**bad)
    assert "distillation" not in TrainConfig().to_dict() and "temperature" not in TrainConfig().to_dict()
    assert TrainConfig(distillation=0.9, temperature=2.0).to_dict()["distillation"] == 0.9


def test_a_teacher_is_refused_where_it_cannot_teach(mnist_small):
    student = get_model_entry("lenet5").build()
    config = TrainConfig(epochs=1, distillation=0.5)
    with pytest.raises(ValueError, match="needs a teacher"):
        train_classifier(student, mnist_small, config)
    with pytest.raises(ValueError, match="teacher was given but distillation is 0"):
        train_classifier(student, mnist_small, TrainConfig(epochs=1), teacher=copy.deepcopy(student))
    with pytest.raises(ValueError, match="shares the memory of"):
        train_classifier(student, mnist_small, config, teacher=student)
    sharing = copy.deepcopy(student)
    sharing.fc2 = student.fc2  # one layer in common is enough to move the teacher
    with pytest.raises(ValueError, match="shares the memory of 2 parameter"):
        finetune(student, mnist_small, teacher=sharing, distillation=0.5, progress=False)
    with pytest.raises(TypeError, match="teacher must be a torch.nn.Module"):
        finetune(student, mnist_small, teacher="lenet5", distillation=0.5, progress=False)


def test_a_student_learns_from_the_teacher_what_shuffled_labels_cannot_teach(mnist, one_thread):
    """Real MNIST with the training labels shuffled: the labels teach nothing, so what the
    distilled student knows (scored on the true validation labels) came from the teacher."""
    data = shrink(mnist, 4000, 1000, 1000)
    teacher = get_model_entry("lenet5").build()
    train_classifier(teacher, data, TrainConfig(epochs=2, lr=1e-3, seed=0), progress=False)
    teacher.eval()
    teacher_accuracy = accuracy(teacher, data.validation)
    before = copy.deepcopy(teacher.state_dict())
    permutation = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))
    shuffled = dataclasses.replace(data, train=Split(data.train.images, data.train.labels[permutation]))

    def student() -> nn.Module:
        torch.manual_seed(2)
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))

    plain, distilled = student(), student()
    finetune(plain, shuffled, epochs=3, lr=1e-2, progress=False)
    finetune(distilled, shuffled, epochs=3, lr=1e-2, progress=False, teacher=teacher, distillation=1.0, temperature=2.0)
    plain_accuracy, distilled_accuracy = accuracy(plain, data.validation), accuracy(distilled, data.validation)
    assert teacher_accuracy > 0.9, teacher_accuracy
    assert plain_accuracy < 0.3, plain_accuracy  # shuffled labels: near chance
    assert distilled_accuracy > 0.8, distilled_accuracy
    # The teacher taught without being trained, and is handed back in the mode it had.
    assert all(torch.equal(before[name], value) for name, value in teacher.state_dict().items())
    assert not teacher.training
