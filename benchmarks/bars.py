"""The suite's quality bars (issue 5) and how a result is judged against them."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BARS", "Bar", "judge"]


@dataclass(frozen=True)
class Bar:
    """A bound on one figure of the suite's JSON.

    Attributes:
        figure: the key in the suite's ``figures`` mapping.
        op: ``"<="`` or ``">="``.
        bound: the limit.
        meaning: one line for the table.
    """

    figure: str
    op: str
    bound: float
    meaning: str

    def met(self, value: float) -> bool:
        return {"<=": operator.le, ">=": operator.ge}[self.op](value, self.bound)


BARS = (
    Bar("lenet5_svi_over_train", "<=", 0.7, "LeNet-5: SVI epoch / training epoch"),
    Bar("vgg16_svi_over_train", "<=", 0.7, "VGG-16: SVI epoch / training epoch"),
    Bar("vgg16_pyro_overhead", "<=", 0.10, "VGG-16: Pyro's share of an SVI step"),
    Bar("vgg16_posterior_seconds", "<=", 5.0, "VGG-16: 1,000 draws + HDI summary (s)"),
)


def judge(figures: Mapping[str, float]) -> dict[str, bool]:
    """``{figure: met}`` for every bar whose figure was measured."""
    return {bar.figure: bar.met(figures[bar.figure]) for bar in BARS if bar.figure in figures}
