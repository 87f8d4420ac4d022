"""PSIS-LOO on a fitted posterior's validation predictions, with its Pareto-k diagnostics and a verdict in words.

``az.loo`` warns, but returns a number, when its importance sampling fails; an elpd shown
without its diagnostics invites comparing models on estimates that mean little. Here the
estimate always travels with how many Pareto k values exceed ArviZ's threshold ``good_k``
(``min(1 - 1/log10(draws), 0.7)``: 0.5 for 100 draws) and a sentence saying whether it can be
trusted.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["LooCheck", "loo_check", "UNRELIABLE_K"]

#: Above this Pareto k, PSIS-LOO is unreliable whatever the number of draws (Vehtari et al., 2024).
UNRELIABLE_K = 0.7


@dataclass(frozen=True)
class LooCheck:
    """``elpd_loo`` with its standard error, effective number of parameters and Pareto-k diagnostics.

    Attributes:
        elpd: expected log pointwise predictive density (PSIS-LOO estimate).
        se: its standard error.
        p_loo: effective number of parameters.
        observations: validation examples the log-likelihood covers.
        draws: posterior draws.
        good_k: ArviZ's threshold for this many draws.
        above_good_k: observations whose Pareto k exceeds ``good_k``.
        above_unreliable: observations whose Pareto k exceeds :data:`UNRELIABLE_K`.
        max_k: the largest Pareto k.
    """

    elpd: float
    se: float
    p_loo: float
    observations: int
    draws: int
    good_k: float
    above_good_k: int
    above_unreliable: int
    max_k: float

    @property
    def reliable(self) -> bool:
        """Whether every Pareto k is at most ``good_k`` (so at most 0.7)."""
        return self.above_good_k == 0

    def headline(self) -> str:
        """``elpd_loo -210.7 (SE 2.7, p_loo 12.4; Pareto k: 3 of 100 above 0.5, max 0.58)``."""
        return (f"elpd_loo {self.elpd:.1f} (SE {self.se:.1f}, p_loo {self.p_loo:.1f}; Pareto k: {self.above_good_k} of "
                f"{self.observations} above {self.good_k:.2g}, max {self.max_k:.2f})")

    def verdict(self) -> str:
        """One sentence: whether the estimate can be trusted, and why not."""
        if self.reliable:
            return (f"Every Pareto k is at most {self.good_k:.2g}: the PSIS-LOO estimate is reliable, so elpd_loo can "
                    "compare fits on the same validation images.")
        return (f"{self.above_good_k} of {self.observations} Pareto k values exceed {self.good_k:.2g} "
                f"({self.above_unreliable} exceed {UNRELIABLE_K}), so this PSIS-LOO estimate is unreliable: do not "
                "compare fits by this elpd_loo; compare their validation accuracy and calibration instead.")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reliable": self.reliable}


def loo_check(posterior: Any) -> LooCheck | None:
    """PSIS-LOO of ``posterior`` (a DataTree with a ``log_likelihood`` group), or ``None`` without one.

    ArviZ's warning about large Pareto k values is caught: :meth:`LooCheck.verdict` says it.

    Example:
        >>> check = loo_check(load_posterior("runs/demo/posterior.nc"))  # doctest: +SKIP
        >>> print(check.headline()); print(check.verdict())  # doctest: +SKIP
    """
    import arviz_stats

    if "log_likelihood" not in posterior.children:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = arviz_stats.loo(posterior, pointwise=True)
    k = np.asarray(result.pareto_k).ravel()
    return LooCheck(
        elpd=float(result.elpd), se=float(result.se), p_loo=float(result.p), observations=int(result.n_data_points),
        draws=int(result.n_samples), good_k=float(result.good_k), above_good_k=int((k > result.good_k).sum()),
        above_unreliable=int((k > UNRELIABLE_K).sum()), max_k=float(k.max()),
    )
