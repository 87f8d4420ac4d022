"""pyro-dirichlet: structured pruning of trained networks with Dirichlet importance switches.

Define Dirichlet priors over each layer's channels, fit them by SVI for one epoch, read the
posterior credible intervals, prune by posterior mean, get a smaller plain ``nn.Module``::

    switches = DirichletSwitches(net, images[:2], prior=0.5)
    result = fit(switches, data.train)
    posterior = result.posterior()
    print(summary_table(posterior))
    small, keep = prune_by_posterior_mean(net, posterior, {"conv1": 5}, images[:2])

Names are imported on first use, so ``pyro_dirichlet.io.serialization`` (loading a pruned
model) works where Pyro is not installed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DirichletSwitches": "infer.switches",
    "switch_site": "infer.switches",
    "freeze": "infer.switches",
    "DirichletGuide": "infer.guide",
    "load_guide": "infer.guide",
    "resolve_prior": "infer.priors",
    "PriorModel": "infer.priors",
    "DEFAULT_CONCENTRATION": "infer.priors",
    "FitConfig": "infer.fit",
    "FitResult": "infer.fit",
    "FitDivergedError": "infer.fit",
    "fit": "infer.fit",
    "FitCheckpoint": "infer.checkpoint",
    "init_from_environment": "infer.distributed",
    "sample_posterior": "posterior",
    "summary_table": "posterior",
    "layer_summaries": "posterior",
    "LayerSummary": "posterior",
    "plot_forest": "posterior",
    "save_posterior": "posterior",
    "load_posterior": "posterior",
    "posterior_mean": "criteria.posterior",
    "posterior_lower_bound": "criteria.posterior",
    "top_k_probability": "criteria.posterior",
    "Criterion": "criteria",
    "get_criterion": "criteria",
    "register_criterion": "criteria",
    "CRITERIA": "criteria",
    "Calibration": "repair.calibrate",
    "CalibrationConfig": "repair.calibrate",
    "budget_counts": "planning.allocation",
    "keep_from_budget": "planning.allocation",
    "mass_curve": "posterior.uncertainty",
    "straddling_channels": "posterior.uncertainty",
    "plan_keep": "planning.plan",
    "resolve_device": "devices",
    "prune_by_posterior_mean": "pruning",
    "save_pretrained": "io.pretrained",
    "from_pretrained": "io.pretrained",
    "Pruner": "pruner",
    "PrunableLayer": "structure",
    "find_prunable_layers": "structure",
    "UnsupportedStructureError": "structure",
    "prune_channels": "surgery",
    "mask_channels": "surgery",
    "fold_scales": "surgery",
    "finetune": "repair.train",
    "TrainConfig": "repair.train",
    "train_classifier": "repair.train",
    "save_pruned": "io.serialization",
    "load_pruned": "io.serialization",
    "ModelFileError": "io.serialization",
    "register_architecture": "io.serialization",
    "load_dataset": "data",
    "DatasetMissingError": "data",
    "DatasetError": "data",
    "count_parameters": "measure",
    "count_flops": "measure",
    "accuracy": "measure",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
