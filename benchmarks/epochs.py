"""One SVI epoch (``fit``) against one plain training epoch (``train_classifier``) on the same network and data.

Both passes use the same network architecture, batch size and preloaded-tensor minibatches.
``train_classifier``'s ``seconds_per_epoch`` excludes its validation pass, and ``fit`` has
none, so the two seconds compare the training passes alone. The two alternate within each
repeat, so they see the same machine state; the ratio is taken per repeat and its median
reported.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

import pyro

from benchmarks.workloads import Workload
from pyro_dirichlet.baselines.registry import get_model_entry
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.repair.train import train_classifier

__all__ = ["EpochTiming", "measure_epochs", "svi_epoch_seconds", "train_epoch_seconds"]


@dataclass(frozen=True)
class EpochTiming:
    """Seconds of one training epoch and one SVI epoch, per repeat, and their ratio.

    Attributes:
        model: registry name.
        examples: images per epoch.
        batch_size: images per step.
        train_seconds: one ``train_classifier`` epoch per repeat with the model's registry recipe
            (optimiser, schedule), no augmentation, validation excluded.
        svi_seconds: one ``fit`` epoch per repeat (``FitResult.seconds``).
        ratio: median over repeats of ``svi / train``.
    """

    model: str
    examples: int
    batch_size: int
    train_seconds: list[float]
    svi_seconds: list[float]
    ratio: float

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "examples": self.examples,
            "batch_size": self.batch_size,
            "train_seconds": self.train_seconds,
            "svi_seconds": self.svi_seconds,
            "train_seconds_median": statistics.median(self.train_seconds),
            "svi_seconds_median": statistics.median(self.svi_seconds),
            "svi_over_train": self.ratio,
        }


def train_epoch_seconds(workload: Workload, *, device: str, seed: int) -> float:
    """One epoch of the plain training loop on a fresh network, validation excluded."""
    config = replace(get_model_entry(workload.name).train, epochs=1, batch_size=workload.batch_size, seed=seed)
    # fit() never augments, so neither does this pass: both time the same minibatches' compute.
    data = replace(workload.data, augment=None)
    result = train_classifier(workload.build(), data, config, device=device, progress=False)
    return result.seconds_per_epoch[0]


def svi_epoch_seconds(workload: Workload, *, device: str, seed: int) -> float:
    """One ``fit`` epoch of the switches of a fresh (frozen) network."""
    switches = DirichletSwitches(workload.build(), workload.data.train.images[:2])
    config = FitConfig(epochs=1, batch_size=workload.batch_size, seed=seed, device=device, progress=False)
    pyro.clear_param_store()
    return fit(switches, workload.data.train, config).seconds


def measure_epochs(workload: Workload, *, repeats: int, device: str) -> EpochTiming:
    """``repeats`` alternating pairs of one training epoch and one SVI epoch."""
    train, svi = [], []
    for repeat in range(repeats):
        train.append(train_epoch_seconds(workload, device=device, seed=repeat))
        svi.append(svi_epoch_seconds(workload, device=device, seed=repeat))
    return EpochTiming(
        model=workload.name,
        examples=len(workload.data.train),
        batch_size=workload.batch_size,
        train_seconds=train,
        svi_seconds=svi,
        ratio=statistics.median(s / t for s, t in zip(svi, train)),
    )
