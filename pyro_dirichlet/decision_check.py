"""Every pruning decision checked against cheap ones: the posterior's channels vs L1-norm's and random ones.

A posterior that ranks channels worse than their filter norms, or no better than chance,
should not be trusted silently. :func:`check_decision` prunes the same network to the same
per-layer counts three ways -- the given keep set (with its folded scales), the L1-norm
choice and random choices -- gives each the same cheap calibration
(:func:`pyro_dirichlet.repair.calibrate.calibrate` on training data) and measures each on the
validation split. The test split is never read. A few seconds on small networks.

    check = check_decision(network, keep, data, example, layers=pruner.layers, scales=scales)
    print(check.describe())
    if check.warning():
        print(check.warning())
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.measure import Stopwatch, accuracy
from pyro_dirichlet.pruner import Pruner
from pyro_dirichlet.repair.calibrate import CalibrationConfig
from pyro_dirichlet.structure import PrunableLayer

__all__ = ["CHECK_CALIBRATION", "DecisionCheck", "DecisionWarning", "check_decision"]


class DecisionWarning(UserWarning):
    """The checked channels lose to L1-norm's or random ones at the same counts (:meth:`DecisionCheck.warning`)."""

#: The calibration every candidate gets in the check: cheap, identical for all. Fewer steps
#: than the full calibration of the studies, which is enough to rank the candidates.
CHECK_CALIBRATION = CalibrationConfig(steps=40, batchnorm_batches=20, check_batches=4)

#: Random keep sets drawn (their mean accuracy is the random row): one draw is noisy.
RANDOM_DRAWS = 3


@dataclass(frozen=True)
class DecisionCheck:
    """Validation accuracy of three choices of the same per-layer counts, after the same calibration.

    Attributes:
        chosen: the checked keep set's accuracy (the posterior's, in the CLI).
        l1_norm: the L1-norm keep set's.
        random: the mean over :data:`RANDOM_DRAWS` random keep sets; ``random_draws`` holds each.
        margin: how far below another choice ``chosen`` may fall before :meth:`warning` speaks
            (one standard error of an accuracy on the validation examples used, at least 0.005).
        examples: validation examples measured.
        seconds: wall time of the whole check.
    """

    chosen: float
    l1_norm: float
    random: float
    random_draws: tuple[float, ...] = field(default=())
    margin: float = 0.005
    examples: int = 0
    seconds: float = 0.0
    label: str = "posterior"

    @property
    def loses_to(self) -> list[str]:
        """The cheap choices that beat the checked one by more than :attr:`margin`."""
        return [name for name, value in (("L1-norm", self.l1_norm), ("random", self.random)) if value > self.chosen + self.margin]

    def describe(self) -> str:
        """One line: the three accuracies."""
        return (f"decision check (validation accuracy after the same calibration, {self.examples} images): "
                f"{self.label} {self.chosen:.4f}, L1-norm {self.l1_norm:.4f}, random {self.random:.4f}")

    def warning(self) -> str | None:
        """One sentence when the checked choice loses to L1-norm or random, else ``None``."""
        losers = self.loses_to
        if not losers:
            return None
        best = max(self.l1_norm, self.random)
        return (f"the {self.label}'s channels lose to {' and '.join(losers)} at the same counts "
                f"({self.chosen:.4f} against {best:.4f} on the validation split after the same calibration): "
                f"fit until converged (no --epochs), or prune by L1-norm for this network.")

    def to_dict(self) -> dict:
        return {"chosen": self.label, "accuracy": {self.label: self.chosen, "l1-norm": self.l1_norm, "random": self.random},
                "random_draws": list(self.random_draws), "margin": self.margin, "examples": self.examples,
                "seconds": self.seconds, "loses_to": self.loses_to}


def check_decision(
    network: nn.Module,
    keep: Mapping[str, Sequence[int]],
    data: DataSplits,
    example_inputs: torch.Tensor,
    *,
    layers: Sequence[PrunableLayer] | None = None,
    scales: Mapping[str, torch.Tensor] | None = None,
    calibration: CalibrationConfig = CHECK_CALIBRATION,
    max_examples: int = 2000,
    seed: int = 0,
    label: str = "posterior",
) -> DecisionCheck:
    """Compare ``keep`` with L1-norm and random keep sets of the same counts, each calibrated alike.

    Args:
        network: the unpruned network (not modified).
        keep: ``{layer: kept channel indices}``, the decision to check.
        data: its ``train`` split calibrates, the first ``max_examples`` of ``validation`` score.
        example_inputs: a batch of inputs to trace the network with.
        layers: the network's prunable layers, if the caller has them (a
            :class:`~pyro_dirichlet.Pruner`'s ``layers``): the network is then not traced
            again; only the pruned candidates are, for their calibration.
        scales: per-channel scales folded into ``keep``'s network before the cut (the
            posterior's ``E[s]*C``), as the pipeline does; the other choices get none.
        calibration: the calibration every candidate gets.
        max_examples: validation examples scored.
        seed: seeds the random keep sets and the calibration's shuffles.
        label: what the checked choice is called in messages.

    Raises:
        ValueError: ``keep`` names a layer the network does not have.
    """
    with Stopwatch() as watch:
        pruner = Pruner(network, example_inputs, layers=sorted(keep) if layers is None else layers)
        unknown = sorted(set(keep) - set(pruner.names))
        if unknown:
            raise ValueError(f"keep names layers {unknown} that are not prunable layers of the network.")
        # The cheap choices score only the checked layers, in keep's order (the random draws follow it).
        checked = pruner.subset(list(keep))
        counts = {name: len(indices) for name, indices in keep.items()}
        validation = data.validation if len(data.validation) <= max_examples else data.validation.subset(max_examples, seed=seed)
        config = dataclasses.replace(calibration, seed=seed)

        def score(chosen: Mapping[str, Sequence[int]], folded: Mapping[str, torch.Tensor] | None) -> float:
            pruned = pruner.cut({k: list(v) for k, v in chosen.items()}, dict(folded) if folded else None)
            # Only the checked layers get scales: a layer the analysis cannot follow stays out of it.
            return accuracy(checked.repair(pruned, data, calibrate=config), validation)

        chosen = score(keep, scales)
        l1 = score(checked.plan(checked.score("l1-norm"), counts), None)
        draws = tuple(score(checked.plan(checked.score("random", seed=seed + draw), counts), None)
                      for draw in range(RANDOM_DRAWS))
    examples = len(validation)
    margin = max(0.005, (max(chosen, 1e-3) * (1 - chosen) / examples) ** 0.5)
    return DecisionCheck(chosen=chosen, l1_norm=l1, random=statistics.fmean(draws), random_draws=draws, margin=margin,
                         examples=examples, seconds=watch.seconds, label=label)
