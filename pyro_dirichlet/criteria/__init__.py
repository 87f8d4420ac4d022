"""Importance criteria: one score per channel of each prunable layer, higher is more important.

Criteria are found by name in a registry::

    scores = get_criterion("l1-norm")(network, layers, data)
    scores = get_criterion("taylor", batches=20)(network, layers, data.train)

The baselines (:mod:`.magnitude`, :mod:`.taylor`, :mod:`.random`) need only torch. The
posterior criteria (:mod:`.posterior`) need ArviZ, so they are registered here by name and
imported the first time one is asked for: ranking by L1-norm never loads Pyro or ArviZ.
:mod:`.removal_cost` is the oracle every ranking is measured against.
"""

from __future__ import annotations

from pyro_dirichlet.criteria.magnitude import BatchNormScale, L1Norm
from pyro_dirichlet.criteria.random import RandomScores
from pyro_dirichlet.criteria.registry import CRITERIA, Criterion, Scores, get_criterion, register_criterion
from pyro_dirichlet.criteria.taylor import Taylor

__all__ = [
    "CRITERIA",
    "BatchNormScale",
    "Criterion",
    "L1Norm",
    "RandomScores",
    "Scores",
    "Taylor",
    "get_criterion",
    "register_criterion",
]

# Named here, not registered by their module, so that each is registered once and the
# registry's lookup is the only way in.
for _name, _attribute in (
    ("posterior-mean", "PosteriorMean"),
    ("posterior-lower-bound", "PosteriorLowerBound"),
    ("top-k-probability", "TopKProbability"),
):
    CRITERIA.add(_name, f"pyro_dirichlet.criteria.posterior:{_attribute}")
