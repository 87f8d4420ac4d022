"""Posterior predictive checks of the switched network: accuracy and calibration over switch draws.

Read from a posterior with ``posterior_predictive`` and ``observed_data`` groups
(``FitResult.posterior(validation=...)``): how accurate the network is averaged over the
switch posterior, how well its confidence matches its accuracy (expected calibration
error), and how accuracy varies from one posterior draw to the next -- a distribution, not
a point. :func:`expected_calibration_error` takes plain class probabilities, so the network
at the posterior mean and the pruned network are measured the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

__all__ = ["CALIBRATION_BINS", "PredictiveCheck", "check_predictions", "expected_calibration_error", "predictive_check"]

#: Equal-width confidence bins of the expected calibration error: the 15 of Guo et al. (2017), whose ECE figures are the usual comparison.
CALIBRATION_BINS = 15


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: the example-weighted gap between confidence and accuracy over equal-width confidence bins.

    Args:
        probabilities: ``(examples, classes)`` predicted class probabilities.
        labels: ``(examples,)`` true classes.
        bins: number of confidence bins on ``[0, 1]``.

    Example:
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]))
        0.45
    """
    probabilities, labels = np.asarray(probabilities, float), np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(f"probabilities must be (examples, classes) and labels (examples,), got {probabilities.shape} and {labels.shape}.")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}.")
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    gap = 0.0
    for b in np.unique(index):
        members = index == b
        gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / len(labels))


def check_predictions(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = CALIBRATION_BINS) -> dict[str, float]:
    """``{"accuracy", "calibration_error"}`` of one set of class probabilities ``(examples, classes)`` against ``labels``.

    Example:
        >>> check_predictions(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]))
        {'accuracy': 0.5, 'calibration_error': 0.45}
    """
    calibration_error = expected_calibration_error(probabilities, labels, bins=bins)
    accuracy = float((np.asarray(probabilities).argmax(1) == np.asarray(labels)).mean())
    return {"accuracy": accuracy, "calibration_error": calibration_error}


@dataclass(frozen=True)
class PredictiveCheck:
    """Accuracy and calibration of the switched network over the posterior's predictive draws.

    Attributes:
        accuracy: accuracy of the class probabilities averaged over the draws (the
            posterior predictive).
        calibration_error: expected calibration error of those averaged probabilities.
        accuracy_per_draw: ``(draws,)`` accuracy of the network under each switch draw.
    """

    accuracy: float
    calibration_error: float
    accuracy_per_draw: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready: the averaged figures and the per-draw accuracy's mean, sd and 2.5/50/97.5% quantiles."""
        low, median, high = np.quantile(self.accuracy_per_draw, [0.025, 0.5, 0.975])
        return {
            "accuracy": self.accuracy,
            "calibration_error": self.calibration_error,
            "accuracy_per_draw": {
                "mean": float(self.accuracy_per_draw.mean()),
                "sd": float(self.accuracy_per_draw.std()),
                "q2.5": float(low),
                "median": float(median),
                "q97.5": float(high),
            },
        }


def predictive_check(posterior: xr.DataTree, *, bins: int = CALIBRATION_BINS) -> PredictiveCheck:
    """:class:`PredictiveCheck` of a posterior with ``posterior_predictive`` and ``observed_data`` groups.

    Raises:
        ValueError: the posterior has no predictions (fit it with ``validation=``), or no
            class probabilities (a likelihood other than the categorical one).
    """
    if not {"posterior_predictive", "observed_data"} <= set(posterior.children):
        raise ValueError("the posterior has no posterior_predictive/observed_data groups: draw it with FitResult.posterior(validation=...).")
    if "probabilities" not in posterior["posterior_predictive"].data_vars:
        raise ValueError("the posterior has no class probabilities to check: only a fit with the categorical likelihood draws them.")
    probabilities = posterior["posterior_predictive"]["probabilities"]
    probabilities = np.asarray(probabilities.stack(sample=("chain", "draw")).transpose("sample", "example", "class").values, float)
    labels = np.asarray(posterior["observed_data"]["obs"].values)
    averaged = check_predictions(probabilities.mean(0), labels, bins=bins)
    per_draw = (probabilities.argmax(-1) == labels).mean(1)
    return PredictiveCheck(**averaged, accuracy_per_draw=per_draw)
