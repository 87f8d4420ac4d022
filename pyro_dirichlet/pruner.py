"""The pruning pipeline as one object: score -> plan -> fold and cut -> repair, over one trace of the network.

:class:`Pruner` traces the network once (:func:`~pyro_dirichlet.structure.find_prunable_layers`)
and hands the layers it found to every stage, so scoring, budget planning, surgery and
calibration never trace it again. It keeps the three concerns apart as the stages do:
criteria score channels (:mod:`pyro_dirichlet.criteria`), the plan picks them
(:mod:`pyro_dirichlet.planning`), surgery cuts them (:mod:`pyro_dirichlet.surgery`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pyro_dirichlet.criteria import Criterion, get_criterion
from pyro_dirichlet.criteria.posterior import posterior_mean
from pyro_dirichlet.criteria.registry import Scores
from pyro_dirichlet.data import BatchSource, DataSplits
from pyro_dirichlet.planning.allocation import COSTS, DEFAULT_COST, Cost, CostModel, budget_counts
from pyro_dirichlet.planning.plan import Target, plan_keep
from pyro_dirichlet.repair.calibrate import CalibrationConfig
from pyro_dirichlet.repair.calibrate import calibrate as calibrate_network
from pyro_dirichlet.repair.train import TrainConfig, train_classifier
from pyro_dirichlet.structure import (
    DEFAULT_COUPLING,
    CouplingPolicy,
    PrunableLayer,
    UnsupportedPolicy,
    find_prunable_layers,
)
from pyro_dirichlet.structure.naming import PYTHON_SPELLING, keep_name_error
from pyro_dirichlet.surgery import fold_scales, prune_channels

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["Pruner"]


class Pruner:
    """Prune one network: score its channels, plan which to keep, cut them out, repair the result.

    The network is traced once, here; :attr:`layers` then serves every stage.

    Args:
        network: the trained network; never modified (each stage works on copies).
        example_inputs: a batch of inputs (or a tuple of positional inputs) to trace,
            measure and cut the network with.
        layers: ``None`` finds every prunable layer; a sequence of qualified names traces
            only those (a posterior's switched layers); a sequence of
            :class:`~pyro_dirichlet.structure.PrunableLayer` already found (e.g.
            ``DirichletSwitches(...).layers``) is used as is, without tracing.
        coupled: for ``layers=None``, what to do with layers coupled through a residual
            add (see :func:`~pyro_dirichlet.structure.find_prunable_layers`).
        on_unsupported: ``"raise"`` or ``"skip"`` layers the analysis cannot follow.

    Example:
        >>> pruner = Pruner(net, images[:2])  # doctest: +SKIP
        >>> scores = pruner.score(posterior)  # the posterior mean; or "l1-norm", "taylor"...  # doctest: +SKIP
        >>> keep = pruner.plan(scores, budget=0.5)  # half the FLOPs  # doctest: +SKIP
        >>> small = pruner.repair(pruner.cut(keep), data, calibrate=CalibrationConfig())  # doctest: +SKIP
    """

    def __init__(
        self,
        network: nn.Module,
        example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
        *,
        layers: Sequence[str] | Sequence[PrunableLayer] | None = None,
        coupled: CouplingPolicy = DEFAULT_COUPLING,
        on_unsupported: UnsupportedPolicy = "raise",
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        self.network = network
        self.example_inputs = example_inputs
        if layers is not None and (isinstance(layers, (str, PrunableLayer)) or not isinstance(layers, Sequence)):
            raise TypeError(f"layers must be a sequence of layer names or of PrunableLayer, got {type(layers).__name__}.")
        if layers is not None and all(isinstance(layer, PrunableLayer) for layer in layers):
            # Found before (an empty sequence too: nothing to prune, nothing to trace).
            self.layers: list[PrunableLayer] = list(layers)
        elif layers is not None and not all(isinstance(name, str) for name in layers):
            raise TypeError("layers must hold only layer names (str) or only PrunableLayer objects, not a mix.")
        else:
            self.layers = find_prunable_layers(network, example_inputs, layers=None if layers is None else list(layers),
                                               coupled=coupled, on_unsupported=on_unsupported)
        # One cost model per cost: each is a forward pass and a count, and is reused budget after budget.
        self._prices: dict[str, CostModel] = {}

    @property
    def names(self) -> list[str]:
        """The held layers' names, in their order."""
        return [layer.name for layer in self.layers]

    def subset(self, names: Sequence[str]) -> Pruner:
        """A pruner of the same network over the named held layers only, in the order of ``names``; no trace.

        The order matters to criteria that draw per layer in turn (``"random"``).

        Raises:
            ValueError: a name that is not a held layer.
        """
        by_name = {layer.name: layer for layer in self.layers}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise ValueError(f"layers {unknown} are not among the pruner's layers {sorted(by_name)}.")
        return Pruner(self.network, self.example_inputs, layers=[by_name[name] for name in names])

    def score(self, criterion: str | Criterion | xr.DataTree, data: BatchSource | None = None, **options: Any) -> Scores:
        """One score per channel of every held layer (higher is more important).

        Args:
            criterion: a registered criterion's name (``"l1-norm"``, ``"taylor"``,
                ``"random"``... built with ``options``, e.g. ``seed=1``), a
                :class:`~pyro_dirichlet.criteria.Criterion`, or a fitted switch posterior
                (an ArviZ DataTree), which means its posterior mean
                (:func:`~pyro_dirichlet.criteria.posterior.posterior_mean`) of every layer
                it switched, all of them held layers.
            data: what a data-driven criterion reads (Taylor's gradients), else ``None``.
            options: the registered criterion's options; only with a name.

        Returns:
            ``{layer: float tensor of one score per channel}``; a posterior's in its own
            layer order.

        Raises:
            ValueError: an unknown criterion name, or a posterior switching a layer the
                pruner does not hold.
        """
        if isinstance(criterion, str):
            return get_criterion(criterion, **options)(self.network, self.layers, data)
        if options:
            raise TypeError(f"options {sorted(options)} go with a criterion's name, not with {type(criterion).__name__}.")
        if callable(criterion):
            return criterion(self.network, self.layers, data)
        means = posterior_mean(criterion)
        # A fit may switch only some layers: those are the ones a keep set may name.
        stray = sorted(set(means) - set(self.names))
        if stray:
            raise ValueError(f"the posterior switches layers {stray} that are not among the pruner's layers {self.names}.")
        # The posterior's order, not the layers': a fraction target resolves layer by layer in it.
        return means

    def counts(self, scores: Mapping[str, torch.Tensor], *, budget: float, cost: Cost = DEFAULT_COST) -> dict[str, int]:
        """Keep counts for every scored layer that fit ``budget`` of the network's ``cost``.

        One global threshold on ``score * width``
        (:func:`~pyro_dirichlet.planning.allocation.budget_counts`), priced from the held
        layers by a cost model built once per cost.
        """
        if cost not in self._prices and cost in COSTS:
            self._prices[cost] = CostModel(self.network, self.layers, self.example_inputs, cost)
        return budget_counts(self.network, scores, self.example_inputs, budget=budget, cost=cost, layers=self.layers,
                             price=self._prices.get(cost))

    def plan(
        self,
        scores: Mapping[str, torch.Tensor],
        keep: Target | None = None,
        *,
        budget: float | None = None,
        cost: Cost = DEFAULT_COST,
        spelling: str = PYTHON_SPELLING,
    ) -> dict[str, list[int]]:
        """The channels to keep: each layer's highest-scoring ones, to ``keep`` or to ``budget``.

        The one place a keep set is checked. A layer feeding a grouped convolution keeps
        whole groups (its ``PrunableLayer.block``).

        Args:
            scores: ``{layer: one score per channel}`` (from :meth:`score`); a keep set may
                name only these layers.
            keep: counts or fractions per layer, or one fraction for every scored layer
                (:data:`~pyro_dirichlet.planning.plan.Target`).
            budget: instead of ``keep``, the fraction in (0, 1] of the network's ``cost`` to
                keep (:meth:`counts`).
            cost: ``"flops"`` or ``"params"``, what ``budget`` limits.
            spelling: how an error names an option, ``PYTHON_SPELLING`` or ``CLI_SPELLING``
                (:mod:`pyro_dirichlet.structure.naming`).

        Returns:
            ``{layer: sorted original indices of the channels to keep}``.

        Raises:
            ValueError: neither or both of ``keep`` and ``budget``; a ``keep`` naming a layer
                that is not scored (the message names its coupling group where it has one);
                a count or fraction out of range; a budget that cannot be met.

        Example:
            >>> pruner.plan({"fc1": torch.tensor([0.1, 0.5, 0.4])}, {"fc1": 2})  # doctest: +SKIP
            {'fc1': [1, 2]}
        """
        if (keep is None) == (budget is None):
            raise ValueError("give keep (per-layer counts or fractions, or one fraction) or budget (a fraction of "
                             "the FLOPs or parameters), exactly one of them.")
        if isinstance(keep, Mapping) and set(keep) - set(scores):
            raise ValueError(keep_name_error(self.network, self.example_inputs, sorted(set(keep) - set(scores)),
                                             list(scores), spelling=spelling))
        target = self.counts(scores, budget=budget, cost=cost) if budget is not None else keep
        return plan_keep(scores, target, blocks={layer.name: layer.block for layer in self.layers})

    def cut(self, keep: Mapping[str, Sequence[int]], scales: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """The network with only ``keep``'s channels, ``scales`` folded into the weights first.

        Args:
            keep: ``{layer: original indices of the channels to keep}`` (from :meth:`plan`).
            scales: ``{layer: one factor per channel of the unpruned layer}`` (e.g.
                :func:`pyro_dirichlet.pruning.switch_scales` of the posterior mean), or ``None``.

        Returns:
            A new, smaller plain ``nn.Module``; the pruner's network is not modified.
        """
        # Folding keeps every module's name and width, so the held layers serve both steps.
        network = self.network if scales is None else fold_scales(self.network, scales, self.example_inputs, layers=self.layers)
        return prune_channels(network, keep, self.example_inputs, layers=self.layers)

    def repair(
        self,
        pruned: nn.Module,
        data: DataSplits,
        *,
        calibrate: CalibrationConfig | None = None,
        finetune: TrainConfig | None = None,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> nn.Module:
        """``pruned`` calibrated and then fine-tuned, each where its config is given.

        Calibration (:func:`~pyro_dirichlet.repair.calibrate.calibrate` on ``data.train``)
        fits one scale per kept channel of the held layers and returns a new network.
        Fine-tuning trains that network (or ``pruned`` itself, without calibration) in
        place with ``finetune``'s recipe, keeping its best epoch on ``data.validation``
        (the untouched weights included); with ``finetune.distillation`` it distils from
        the unpruned network.

        Returns:
            The repaired network.

        Example:
            >>> tuned = pruner.repair(small, data, calibrate=CalibrationConfig(), finetune=TrainConfig(epochs=2))  # doctest: +SKIP
        """
        network = pruned
        if calibrate is not None:
            # Scales for the pruned layers only: a layer the plan did not touch needs none.
            names = sorted(self.names)
            layers = find_prunable_layers(pruned, self.example_inputs, layers=names) if names else []
            network = calibrate_network(pruned, data.train, self.example_inputs, calibrate, layers=layers).network
        if finetune is not None and finetune.epochs > 0:
            # Surgery may hand back frozen tensors; fine-tuning trains every parameter.
            for parameter in network.parameters():
                parameter.requires_grad_(True)
            teacher = self.network if finetune.distillation > 0 else None
            train_classifier(network, data, finetune, device=device, progress=progress, keep_initial=True, teacher=teacher)
        return network
