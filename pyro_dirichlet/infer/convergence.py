"""When a switch fit has converged: the stopping rule and the diagnostics every fit reports.

A fit stopped before its posterior settles ranks channels by how far each concentration
happened to move, not by the evidence (measured in ``analysis/ranking_quality.py``: a
short fit ranks never-firing units on top). So the default fit runs until two things hold
at a check, every ``check_every`` steps once ``min_steps`` are done:

- the ELBO has levelled off: its median over the last tenth of the steps differs from its
  median over the tenth before by less than ``elbo_tolerance`` (relative), and
- the decision has settled: the channels each layer would keep at ``keep_fraction`` of its
  width are, pooled over layers, at least ``min_overlap`` the same as at the previous check.

A fit of a fixed number of epochs (the paper's one epoch) runs that long and reports the
same diagnostics, with a :class:`FitNotConvergedWarning` when they say it stopped early.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "Convergence",
    "ConvergenceMonitor",
    "FitNotConvergedWarning",
    "SHORT_FIT_STEPS",
    "StoppingRule",
    "elbo_change",
    "kept_overlap",
    "kept_sets",
]

#: Fewer SVI steps than this is a short fit, whatever the diagnostics say: warned about.
SHORT_FIT_STEPS = 300


class FitNotConvergedWarning(UserWarning):
    """A fit of a fixed length stopped before the stopping rule held, or after very few steps."""


@dataclass(frozen=True)
class StoppingRule:
    """How long a fit with ``FitConfig(epochs=None)`` runs.

    Attributes:
        min_steps: SVI steps before the first check may stop the fit.
        max_steps: the fit stops here whatever the checks say (and says so).
        check_every: steps between checks.
        elbo_tolerance: the largest relative ELBO change over the last fifth of the steps
            that counts as levelled off.
        min_overlap: the smallest pooled overlap of the kept sets of two consecutive checks
            that counts as settled.
        keep_fraction: the share of each layer's channels the kept sets hold.
    """

    min_steps: int = 600
    max_steps: int = 2000
    check_every: int = 100
    elbo_tolerance: float = 0.02
    min_overlap: float = 0.85
    keep_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("min_steps", "max_steps", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"StoppingRule.{name} must be a positive integer, got {value!r}.")
        if self.max_steps < self.min_steps:
            raise ValueError(f"StoppingRule.max_steps ({self.max_steps}) must be at least min_steps ({self.min_steps}).")
        for name in ("elbo_tolerance", "min_overlap", "keep_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"StoppingRule.{name} must be a number in (0, 1], got {value!r}.")

    def holds(self, convergence: Convergence) -> bool:
        """Whether ``convergence`` (diagnosed by these thresholds, at a check) says the fit may stop."""
        return convergence.converged and convergence.steps >= self.min_steps


def elbo_change(elbo: Sequence[float]) -> float | None:
    """Relative change of the ELBO over the last fifth of ``elbo``: the median of its last
    half against the median of its first half, over the later one's magnitude.

    ``None`` with fewer than 10 steps (no fifth to split).
    """
    fifth = len(elbo) // 5
    if fifth < 2:
        return None
    window = list(elbo[-fifth:])
    first, last = statistics.median(window[: fifth // 2]), statistics.median(window[fifth // 2:])
    return abs(last - first) / max(abs(last), 1e-12)


def kept_sets(concentrations: Mapping[str, torch.Tensor], fraction: float = 0.5) -> dict[str, frozenset[int]]:
    """The channels of highest posterior mean (``phi / sum(phi)``), ``fraction`` of each layer (at least one)."""
    sets = {}
    for layer, phi in concentrations.items():
        count = max(1, round(fraction * phi.numel()))
        sets[layer] = frozenset(phi.detach().float().cpu().argsort(descending=True)[:count].tolist())
    return sets


def kept_overlap(before: Mapping[str, frozenset[int]], after: Mapping[str, frozenset[int]]) -> float:
    """Pooled over layers: the share of ``after``'s kept channels that ``before`` kept too."""
    shared = sum(len(after[layer] & before.get(layer, frozenset())) for layer in after)
    total = sum(len(kept) for kept in after.values())
    return shared / total if total else 1.0


@dataclass(frozen=True)
class Convergence:
    """A fit's convergence diagnostics, at its end or at a check.

    Attributes:
        steps: SVI steps done.
        elbo_change: :func:`elbo_change` of the ELBO history (``None``: too few steps).
        kept_overlap: :func:`kept_overlap` between the previous check's kept sets and these
            steps' (``None``: no earlier check).
        rule: ``"stopping rule"`` (the fit ran until it held), ``"max steps"`` (it ran out),
            or ``"fixed epochs"``.
        converged: whether the stopping rule's thresholds hold.
    """

    steps: int
    elbo_change: float | None
    kept_overlap: float | None
    rule: str
    converged: bool

    def describe(self) -> str:
        """One line: steps, the ELBO's change over the last fifth, the kept-set overlap."""
        change = "n/a" if self.elbo_change is None else f"{100 * self.elbo_change:.1f}%"
        overlap = "n/a" if self.kept_overlap is None else f"{self.kept_overlap:.2f}"
        state = "converged" if self.converged else "not converged"
        return f"{self.steps} SVI steps ({self.rule}): ELBO change over the last fifth {change}, kept-set overlap with the previous check {overlap}: {state}"

    def advice(self) -> str | None:
        """One sentence when the fit is too short or unconverged to trust its ranking, else ``None``."""
        if self.steps < SHORT_FIT_STEPS:
            return (f"the fit ran only {self.steps} SVI steps, too few for the posterior to rank channels "
                    f"by importance: fit until converged (the default, no --epochs) or for more epochs.")
        if not self.converged:
            return ("the fit stopped before its posterior settled (" + self.describe().split(": ", 1)[1]
                    + "): fit until converged (the default, no --epochs) or for more epochs.")
        return None

    def to_dict(self) -> dict:
        return asdict(self)


def diagnose(
    elbo: Sequence[float], overlap: float | None, *, rule: str, stopping: StoppingRule
) -> Convergence:
    """The :class:`Convergence` of a history ``elbo`` and a kept-set overlap, judged by ``stopping``'s thresholds."""
    change = elbo_change(elbo)
    converged = (
        change is not None
        and change < stopping.elbo_tolerance
        and overlap is not None
        and overlap >= stopping.min_overlap
        and len(elbo) >= min(stopping.min_steps, SHORT_FIT_STEPS)
    )
    return Convergence(steps=len(elbo), elbo_change=change, kept_overlap=overlap, rule=rule, converged=converged)


class ConvergenceMonitor:
    """Follows a running fit: checks the rule every ``rule.check_every`` steps and says when to stop.

    The kept sets of the last check are part of the fit's checkpoint (:meth:`snapshot`,
    :meth:`restore`), so a resumed fit stops where an uninterrupted one would.

    Args:
        rule: the thresholds and the check interval.
        until_converged: stop at the first check where the rule holds; otherwise only diagnose.
    """

    def __init__(self, rule: StoppingRule, *, until_converged: bool) -> None:
        self.rule = rule
        self.until_converged = until_converged
        self.previous: dict[str, frozenset[int]] | None = None
        self.overlap: float | None = None
        self.stopped = False

    def due(self, step: int) -> bool:
        return step % self.rule.check_every == 0

    def check(self, elbo: Sequence[float], concentrations: Mapping[str, torch.Tensor]) -> Convergence:
        """Diagnose the fit after ``len(elbo)`` steps; sets :attr:`stopped` when the rule holds."""
        current = kept_sets(concentrations, self.rule.keep_fraction)
        self.overlap = None if self.previous is None else kept_overlap(self.previous, current)
        self.previous = current
        state = diagnose(elbo, self.overlap, rule="stopping rule", stopping=self.rule)
        if self.until_converged and self.rule.holds(state):
            self.stopped = True
        return state

    def final(self, elbo: Sequence[float], concentrations: Mapping[str, torch.Tensor]) -> Convergence:
        """The fit's diagnostics at its end; warns (:class:`FitNotConvergedWarning`) when it stopped early."""
        steps = len(elbo)
        if steps and not self.due(steps) and self.previous is not None:
            # The last check was before the last step: compare its kept sets with the final ones.
            self.overlap = kept_overlap(self.previous, kept_sets(concentrations, self.rule.keep_fraction))
        rule = "stopping rule" if self.stopped else ("max steps" if self.until_converged else "fixed epochs")
        state = diagnose(elbo, self.overlap, rule=rule, stopping=self.rule)
        advice = state.advice()
        if advice is not None:
            warnings.warn(advice[0].upper() + advice[1:], FitNotConvergedWarning, stacklevel=3)
        return state

    def snapshot(self) -> dict[str, list[int]]:
        """The last check's kept sets, as plain lists for the checkpoint."""
        return {} if self.previous is None else {layer: sorted(kept) for layer, kept in self.previous.items()}

    def restore(self, snapshot: Mapping[str, Sequence[int]]) -> None:
        """Take the kept sets of a checkpoint's last check back (``{}``: none yet)."""
        self.previous = {layer: frozenset(int(i) for i in kept) for layer, kept in snapshot.items()} or None
