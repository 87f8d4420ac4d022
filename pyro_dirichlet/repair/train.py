"""The one supervised training loop: trains baselines and fine-tunes pruned networks (:func:`finetune`).

Model selection happens on the validation split only: the state of the epoch with the best
validation accuracy is the one the model holds when training returns.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from dataclasses import asdict, dataclass, field
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from pyro_dirichlet.io.atomic import atomic_write
from pyro_dirichlet.repair.compiled import CompiledForward
from pyro_dirichlet.repair.distillation import DEFAULT_DISTILLATION, DEFAULT_TEMPERATURE, check_teacher, distillation_loss
from pyro_dirichlet.data import BatchSource, DataSplits, Split, count_batches, iterate_batches
from pyro_dirichlet.measure import Stopwatch, accuracy
from pyro_dirichlet.precision import LIBRARY_PRECISION, autocast, check_precision

__all__ = ["TrainConfig", "TrainResult", "train_classifier", "finetune", "DEFAULT_BATCH_SIZE", "DEFAULT_EPOCHS", "DEFAULT_LR"]

_OPTIMIZERS = ("adam", "sgd")
#: Examples per training step of a baseline and of fine-tuning, unless told otherwise.
DEFAULT_BATCH_SIZE = 128
_SCHEDULES = ("constant", "cosine", "onecycle")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TrainConfig:
    """How to train a classifier.

    Args:
        epochs: passes over the training split; 0 trains nothing.
        batch_size: examples per gradient step.
        lr: peak learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
        momentum: SGD momentum, in ``[0, 1)``; ignored by Adam.
        weight_decay: L2 penalty passed to the optimizer, at least 0.
        schedule: ``"constant"``, ``"cosine"`` (decays to 0 over all steps), or
            ``"onecycle"`` (linear warm-up to ``lr`` over the first quarter of the steps,
            then cosine decay; SGD momentum cycles inversely), all stepped per minibatch.
        nesterov: Nesterov momentum for SGD.
        label_smoothing: cross-entropy label smoothing, in ``[0, 1)``.
        distillation: share of the loss that matches a ``teacher``'s softened class
            probabilities (:func:`pyro_dirichlet.repair.distillation.distillation_loss`), in
            ``[0, 1]``; 0 trains on the labels alone and takes no teacher.
        temperature: softmax temperature of that matching term, positive.
        seed: seeds the shuffling and torch's global generator.
        precision: ``"fp32"``, ``"bf16"`` (the forward passes under bfloat16 autocast; the
            weights, the optimiser, BatchNorm's statistics and the loss stay float32) or
            ``"auto"`` (bf16 where the device has native bfloat16 units); see
            :mod:`pyro_dirichlet.precision`.
        channels_last: train convolutions in the channels-last memory layout (the model's
            4-D weights and the image batches; the model gets the usual layout back at the
            end). A training step on this project's CPU, against the default layout at the
            same precision (``benchmarks/results/channels_last.json``): LeNet-5 0.71x in fp32
            and 0.60x in bf16, ResNet-20 0.82x and 0.81x, VGG-16 1.07x and 0.86x. The values
            computed are the same up to floating-point summation order.
        compile: run the training forward and backward through :func:`torch.compile`
            (:class:`~pyro_dirichlet.repair.compiled.CompiledForward`: full batches compiled,
            a smaller last batch eager, an eager fallback with a warning where compiling
            fails). It fuses the element-wise kernels a bf16 step spends about half its time
            in (a bf16 ResNet-20 epoch 0.74x as long, fp32 0.83x; LeNet-5's and VGG-16's
            no shorter); it costs 17-22 s of compiling the first time a network is trained,
            so it is off by default and pays for itself over runs of several epochs.

    Example:
        >>> TrainConfig(epochs=2, lr=3e-4).schedule
        'cosine'
    """

    epochs: int = 4
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    nesterov: bool = False
    label_smoothing: float = 0.0
    distillation: float = DEFAULT_DISTILLATION
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0
    precision: str = LIBRARY_PRECISION
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        check_precision(self.precision)
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _is_int(self.epochs) or self.epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {self.epochs!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not _is_real(self.lr) or not self.lr > 0:
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"nesterov must be a bool, got {self.nesterov!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=True needs optimizer='sgd' with a positive momentum")
        if not _is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not _is_real(self.distillation) or not 0 <= self.distillation <= 1:
            raise ValueError(f"distillation must be in [0, 1], got {self.distillation!r}")
        if not _is_real(self.temperature) or not self.temperature > 0:
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict.

        Options at their defaults that older versions did not have are left out, so the
        baseline cache keys of recipes written before them stay valid; ``compile`` is always
        left out: it changes how the steps execute, not what they compute, so a baseline
        trained either way serves both (and a compiled run resumes eagerly).
        """
        values = asdict(self)
        del values["compile"]
        for name, default in _LATER_OPTIONS.items():
            if values[name] == default:
                del values[name]
        return values


# Options added after baselines were first cached, with their defaults.
_LATER_OPTIONS = {"nesterov": False, "label_smoothing": 0.0, "distillation": DEFAULT_DISTILLATION, "temperature": DEFAULT_TEMPERATURE,
                  "precision": LIBRARY_PRECISION,
                  # A memory layout, not part of the recipe: baselines trained before it stay valid.
                  "channels_last": True}


@dataclass
class TrainResult:
    """What one call of :func:`train_classifier` did, epoch by epoch.

    Args:
        epochs: epochs run.
        train_loss: mean training loss over each epoch's minibatches (weighted by size): the
            cross-entropy, or the distillation loss when distilling.
        validation_accuracy: validation accuracy after each epoch.
        best_epoch: 0-based index of the epoch whose weights the model holds now, so
            ``validation_accuracy[best_epoch]`` is its validation accuracy; -1 when no
            epoch ran, or when the starting weights were kept (see ``initial_validation_accuracy``).
        seconds_per_epoch: wall time of each training pass, validation excluded.
        initial_validation_accuracy: validation accuracy of the starting weights when they
            competed with the trained epochs (``keep_initial=True``), else ``None``.

    Example:
        >>> result = TrainResult(1, [0.3], [0.95], 0, [12.0])
        >>> result.best_validation_accuracy
        0.95
    """

    epochs: int
    train_loss: list[float] = field(default_factory=list)
    validation_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds_per_epoch: list[float] = field(default_factory=list)
    initial_validation_accuracy: float | None = None

    @property
    def best_validation_accuracy(self) -> float | None:
        """Validation accuracy of the returned weights, or ``None`` when no epoch ran."""
        if self.best_epoch >= 0:
            return self.validation_accuracy[self.best_epoch]
        return self.initial_validation_accuracy

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


def _make_optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=0.25,
            cycle_momentum=config.optimizer == "sgd" and config.momentum > 0,
        )
    return None


def _save_resume_state(path: Path, state: dict[str, Any]) -> None:
    # torch.save into memory first, then one atomic write: a kill never leaves half a file.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _load_resume_state(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: start over, say so
        warnings.warn(f"training checkpoint {path} could not be read ({error}); starting over", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(state, dict) or state.get("config") != config.to_dict():
        warnings.warn(f"training checkpoint {path} was written for another recipe; starting over", RuntimeWarning, stacklevel=3)
        return None
    return state


def _check_batch_source(name: str, source: object, kinds: str) -> None:
    if not isinstance(source, (Split, Iterable)) or isinstance(source, (torch.Tensor, str, bytes)):
        raise TypeError(
            f"{name} must be {kinds} or an iterable of (inputs, targets) batches such as a DataLoader, "
            f"got {type(source).__name__}"
        )
    # A generator would be used up by the first epoch and train on nothing after it.
    if isinstance(source, Iterator):
        raise TypeError(
            f"{name} is a one-shot iterator; pass something that can be read once per epoch, such as a "
            "DataLoader or a list of batches"
        )


def train_classifier(
    model: nn.Module,
    data: DataSplits | BatchSource,
    config: TrainConfig,
    *,
    validation: BatchSource | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    keep_initial: bool = False,
    resume_from: str | os.PathLike[str] | None = None,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy; keep the best validation epoch.

    After each epoch the validation accuracy is measured; when training ends the model is
    loaded with the weights of the best epoch (the earliest, on ties) and returned to the
    train/eval mode it had on entry. Only parameters with ``requires_grad=True`` are
    trained. The test split is never read. When ``data.augment`` is set it is applied to
    every training minibatch (never to the validation split), with its own generator seeded
    from ``config.seed``, so the shuffling order does not depend on whether data is augmented.

    The training data may also stream: ``data`` a ``DataLoader`` (or any re-iterable of
    ``(inputs, targets)`` batches) and ``validation`` another. Each batch is then moved to
    ``device`` as it comes, in the loader's own batches and order (``config.batch_size``
    and the shuffling seed apply to preloaded splits only; a ``DataLoader`` that shuffles
    with torch's global generator is reproducible, as that generator is seeded from
    ``config.seed`` and restored on resume). The ``"cosine"`` and ``"onecycle"`` schedules
    need ``len(data)``, the batches per epoch.

    Args:
        model: classifier mapping images to class scores; moved to ``device``.
        data: the splits (``train`` and ``validation`` are copied to ``device`` once), or
            the training data alone: a ``Split`` or an iterable of batches.
        config: optimiser, schedule, epochs and seed.
        validation: the model-selection data (a ``Split`` or an iterable of batches),
            required when ``data`` is not a ``DataSplits`` and refused when it is.
        device: where to train.
        progress: show a tqdm bar per epoch with the running loss.
        keep_initial: let the starting weights compete with the trained epochs on
            validation accuracy (for fine-tuning, which must never make a network worse
            than it was handed over).
        resume_from: a file where the whole training state (weights, optimiser, schedule,
            random generators, best epoch so far) is written atomically after every
            epoch; when it exists and was written for the same ``config``, training
            continues from it, so a killed run resumes where it stopped and ends with the
            same weights. It is deleted when training returns.
        teacher: the network whose class probabilities the model also learns to match when
            ``config.distillation`` is above 0 (for a pruned network: the unpruned one). It
            is moved to ``device``, scored in eval mode on the same augmented minibatches,
            never trained, and returned to the mode it had; it must not share parameters
            with ``model``.

    Returns:
        The per-epoch losses, validation accuracies and timings.

    Example:
        >>> result = train_classifier(LeNet5Caffe(), load_mnist(), TrainConfig())  # doctest: +SKIP
        >>> result.validation_accuracy[result.best_epoch]  # doctest: +SKIP
        0.99
    """
    trainable = _check_arguments(model, data, config, validation=validation, teacher=teacher)
    if config.epochs == 0:
        return TrainResult(epochs=0)
    run = _setup(model, data, config, trainable, validation=validation, device=device, progress=progress, teacher=teacher)
    resume_path = None if resume_from is None else Path(resume_from)
    # Read here, not in a helper: its warnings (stacklevel 3) name the caller's line.
    resumed = None if resume_path is None else _load_resume_state(resume_path, config)
    if resumed is not None:
        _resume(run, resumed)
    elif keep_initial:
        run.best_accuracy = run.result.initial_validation_accuracy = run.accuracy()
        run.best_state = _copy_state(model)
    for epoch in range(run.first_epoch, config.epochs):
        _train_epoch(run, epoch)
        _select_epoch(run, epoch)
        if resume_path is not None:
            _save_resume_state(resume_path, _resume_state(run))
    return _finish(run, resume_path)


@dataclass
class _Training:
    """A training run in progress: built by :func:`_setup`, restored by :func:`_resume`, advanced by :func:`_train_epoch`."""

    model: nn.Module
    config: TrainConfig
    device: torch.device | str
    progress: bool
    teacher: nn.Module | None
    train: BatchSource
    validation: BatchSource
    augment: Any
    steps_per_epoch: int | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    shuffle_generator: torch.Generator
    augment_generator: torch.Generator
    was_training: bool
    teacher_was_training: bool | None
    result: TrainResult
    forward: Callable[[torch.Tensor], Any]
    best_accuracy: float = -math.inf
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    first_epoch: int = 0

    def accuracy(self) -> float:
        return accuracy(self.model, self.validation, device=self.device, precision=self.config.precision)


def _check_arguments(
    model: nn.Module,
    data: DataSplits | BatchSource,
    config: TrainConfig,
    *,
    validation: BatchSource | None,
    teacher: nn.Module | None,
) -> list[nn.Parameter]:
    """Raise on arguments :func:`train_classifier` cannot train with; the parameters it trains."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(data, DataSplits):
        if validation is not None:
            raise ValueError("validation must be None when data is a DataSplits, which holds its own validation split")
    else:
        _check_batch_source("data", data, "a DataSplits, a Split")
        if validation is None:
            raise ValueError("validation is required when data is not a DataSplits: the best epoch is chosen on it")
        _check_batch_source("validation", validation, "a Split")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    check_teacher(teacher, model, config.distillation)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("model has no parameter with requires_grad=True, so nothing to train")
    return trainable


def _setup(
    model: nn.Module,
    data: DataSplits | BatchSource,
    config: TrainConfig,
    trainable: list[nn.Parameter],
    *,
    validation: BatchSource | None,
    device: torch.device | str,
    progress: bool,
    teacher: nn.Module | None,
) -> _Training:
    """Seeds, the model (and teacher) and data on the device, the optimiser and schedule: a run before its first epoch."""
    torch.manual_seed(config.seed)
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    # A separate stream: adding augmentation must not change which examples a batch holds.
    augment_generator = torch.Generator().manual_seed(config.seed + 1)
    was_training = model.training
    model.to(device)
    teacher_was_training = None
    if teacher is not None:
        teacher_was_training = teacher.training
        teacher.to(device).eval()
    if config.channels_last:
        for network in (model, teacher):
            if network is not None:
                network.to(memory_format=torch.channels_last)
    augment = None
    if isinstance(data, DataSplits):
        train, validation, augment = data.train, data.validation, data.augment
    else:
        train = data
    # Preloaded splits go to the device once; streamed batches go one by one in the epoch.
    train = train.to(device) if isinstance(train, Split) else train
    validation = validation.to(device) if isinstance(validation, Split) else validation

    steps_per_epoch = count_batches(train, config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"the training data ({type(train).__name__}) holds no batches")
    if steps_per_epoch is None and config.schedule != "constant":
        raise ValueError(
            f"schedule {config.schedule!r} needs the number of batches per epoch, but the training data "
            f"({type(train).__name__}) has no len(): use schedule='constant' or a DataLoader over a sized data set"
        )
    optimizer = _make_optimizer(trainable, config)
    return _Training(
        model=model, config=config, device=device, progress=progress, teacher=teacher, train=train,
        validation=validation, augment=augment, steps_per_epoch=steps_per_epoch, optimizer=optimizer,
        scheduler=_make_scheduler(optimizer, config, config.epochs * (steps_per_epoch or 0)),
        shuffle_generator=shuffle_generator, augment_generator=augment_generator, was_training=was_training,
        teacher_was_training=teacher_was_training, result=TrainResult(epochs=config.epochs),
        forward=CompiledForward(model, config.batch_size) if config.compile else model,
    )


def _resume(run: _Training, resumed: dict[str, Any]) -> None:
    """Put ``run`` back in the state a resume file holds: after its last whole epoch."""
    run.model.load_state_dict(resumed["model"])
    run.optimizer.load_state_dict(resumed["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(resumed["scheduler"])
    run.shuffle_generator.set_state(resumed["shuffle_generator"])
    run.augment_generator.set_state(resumed["augment_generator"])
    torch.set_rng_state(resumed["torch_rng"])
    run.best_accuracy, run.best_state = resumed["best_accuracy"], resumed["best_state"]
    run.result = TrainResult(**resumed["result"])
    run.first_epoch = len(run.result.train_loss)


def _train_epoch(run: _Training, epoch: int) -> None:
    """One pass over the training data; records its mean loss and seconds in ``run.result``."""
    config, device, progress = run.config, run.device, run.progress
    run.model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not progress,
        leave=False,
    )
    with Stopwatch(device) as watch, bar:
        for step, (images, labels, _) in enumerate(
            iterate_batches(run.train, config.batch_size, shuffle=True, generator=run.shuffle_generator)
        ):
            # No-ops for a split already on the device.
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss, scores = _train_step(run, images, labels)
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            bar.update()
            if progress:
                # Running accuracy of the training minibatches (augmented, in train mode): a
                # display of progress, not a measurement; validation accuracy is that.
                correct += (scores.detach().argmax(dim=1) == labels).sum()
                # Reading the loss forces a GPU sync, so refresh the display only now and then.
                if step % 20 == 0 or step + 1 == run.steps_per_epoch:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", accuracy=f"{correct.item() / seen:.4f}")
        if seen == 0:
            raise ValueError(f"the training data ({type(run.train).__name__}) yielded no batches in epoch {epoch + 1}")
        epoch_loss = loss_sum.item() / seen
    run.result.seconds_per_epoch.append(watch.seconds)
    run.result.train_loss.append(epoch_loss)


def _train_step(run: _Training, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser (and schedule) step on a minibatch, augmented first; its loss and the model's scores."""
    config, teacher = run.config, run.teacher
    if run.augment is not None:
        images = run.augment(images, run.augment_generator)
    if config.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(config.precision, run.device):
        scores = run.forward(images)
        if teacher is not None:
            with torch.no_grad():
                teacher_scores = teacher(images).float()
    # The loss in float32 whatever the forward's precision (a no-op in fp32).
    scores = scores.float()
    if teacher is None:
        loss = F.cross_entropy(scores, labels, label_smoothing=config.label_smoothing)
    else:
        loss = distillation_loss(scores, teacher_scores, labels, weight=config.distillation,
                                 temperature=config.temperature, label_smoothing=config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    return loss, scores


def _select_epoch(run: _Training, epoch: int) -> None:
    """Score the epoch on validation; keep its weights when they are the best so far (the earliest, on ties)."""
    validation_accuracy = run.accuracy()
    run.result.validation_accuracy.append(validation_accuracy)
    if validation_accuracy > run.best_accuracy:
        run.best_accuracy = validation_accuracy
        run.result.best_epoch = epoch
        run.best_state = _copy_state(run.model)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _resume_state(run: _Training) -> dict[str, Any]:
    """Everything a killed run needs to end with the same weights (the resume file's format)."""
    return {
        "config": run.config.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "shuffle_generator": run.shuffle_generator.get_state(),
        "augment_generator": run.augment_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "best_accuracy": run.best_accuracy,
        "best_state": run.best_state,
        "result": run.result.to_dict(),
    }


def _finish(run: _Training, resume_path: Path | None) -> TrainResult:
    """The best weights back in the model, the resume file gone, the modes as on entry."""
    run.model.load_state_dict(run.best_state)
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    run.model.train(run.was_training)
    if run.config.channels_last:
        # The usual layout back: safetensors saves contiguous tensors only.
        run.model.to(memory_format=torch.contiguous_format)
    if run.teacher is not None:
        run.teacher.train(run.teacher_was_training)
        if run.config.channels_last:
            run.teacher.to(memory_format=torch.contiguous_format)
    return run.result

#: Fine-tune epochs of the command line's prune -> fine-tune. 8 was chosen among 3, 5 and 8
#: by mean validation accuracy of LeNet-5 pruned to 5-12-40 (3 seeds), keeping fit plus
#: fine-tuning within 3 baseline training epochs (``analysis/reproduction.py``).
DEFAULT_EPOCHS = 8
#: Peak learning rate: 1e-2 was chosen over 3e-3 and 1e-3 by validation accuracy after
#: pruning LeNet-5 (``analysis/select_finetune_lr.py``).
DEFAULT_LR = 1e-2


def finetune(
    model: nn.Module,
    data: DataSplits | BatchSource,
    *,
    validation: BatchSource | None = None,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    teacher: nn.Module | None = None,
    distillation: float = DEFAULT_DISTILLATION,
    temperature: float = DEFAULT_TEMPERATURE,
    precision: str = LIBRARY_PRECISION,
    compile: bool = False,
) -> TrainResult:
    """Fine-tune a pruned network in place with Adam and a cosine schedule.

    A named entry point over the one training loop; its defaults are the command line's.

    Every parameter is made trainable first (surgery may hand back frozen tensors), and the
    model trains in train mode. The validation split is scored before training and after
    each epoch, and the model ends up holding the weights with the best *validation*
    accuracy -- the untouched pruned weights included, so fine-tuning never returns a
    network worse on validation than the one it was given; the
    test split is never looked at. The model is returned to the train/eval mode it had.

    Args:
        model: the pruned network; modified in place and moved to ``device``.
        data: the splits it trains and selects on, or the training data alone (a ``Split``
            or an iterable of batches such as a ``DataLoader``; see :func:`train_classifier`).
        validation: the data it selects on, when ``data`` is not a ``DataSplits``.
        epochs: passes over the training split; 0 leaves the model untouched and returns
            an empty result (``epochs=0``, ``best_epoch=-1``).
        lr: peak learning rate of the cosine schedule.
        batch_size: examples per step.
        seed: seeds the shuffling and torch's global generator.
        device: where to train.
        progress: show a progress bar per epoch.
        teacher: the unpruned network, to distil from (see ``distillation``); never trained.
        distillation: share of the loss that matches the teacher's softened class
            probabilities, in ``[0, 1]``; 0 (the default) fine-tunes on the labels alone.
        temperature: softmax temperature of the matching term.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (see :class:`TrainConfig`).
        compile: train through :func:`torch.compile` (see :class:`TrainConfig`).

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
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, distillation=distillation,
                         temperature=temperature, precision=precision, compile=compile)
    check_teacher(teacher, model, distillation)
    if epochs == 0:
        return TrainResult(epochs=0)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return train_classifier(
        model, data, config, validation=validation, device=device, progress=progress, keep_initial=True, teacher=teacher
    )
