"""The prune step's decision check: run it, say the three accuracies, warn on stderr when the posterior loses."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.decision_check import check_decision
from pyro_dirichlet.pruning import switch_scales
from pyro_dirichlet.structure import PrunableLayer

__all__ = ["check_prune_decision"]


def check_prune_decision(
    network: nn.Module,
    keep: dict[str, list[int]],
    scores: dict[str, torch.Tensor],
    gains: dict[str, float],
    data: DataSplits,
    example: torch.Tensor,
    *,
    seed: int,
    say: Callable[[str], None],
    layers: Sequence[PrunableLayer] | None = None,
) -> dict[str, Any]:
    """Check the posterior's ``keep`` (folded as the prune step folds it) against L1-norm and random; the record for run.json.

    ``layers``: the prune step's (its :class:`~pyro_dirichlet.Pruner`'s), so the network is not traced again.
    """
    check = check_decision(network, keep, data, example, layers=layers,
                           scales=switch_scales({k: scores[k] for k in keep}, gains), seed=seed)
    say(check.describe())
    warning = check.warning()
    if warning is not None:
        print(f"pyro-dirichlet: warning: {warning}", file=sys.stderr, flush=True)
    return check.to_dict()
