"""pyro-dirichlet: structured pruning of trained networks with Dirichlet importance switches.

Define Dirichlet priors over each layer's channels, fit them by SVI for one epoch, read the
posterior credible intervals, prune by posterior mean, get a smaller plain ``nn.Module``::

    switches = DirichletSwitches(net, images[:2], prior=0.5)
    result = fit(switches, data.train)
    posterior = result.posterior()
    print(summary_table(posterior))
    small, keep = prune_by_posterior_mean(net, posterior, {"conv1": 5}, images[:2])

Names are imported on first use, so ``pyro_dirichlet.serialization`` (loading a pruned
model) works where Pyro is not installed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DirichletSwitches": "switches",
    "switch_site": "switches",
    "freeze": "switches",
    "DirichletGuide": "guide",
    "resolve_prior": "priors",
    "DEFAULT_CONCENTRATION": "priors",
    "FitConfig": "fitting",
    "FitResult": "fitting",
    "FitDivergedError": "fitting",
    "fit": "fitting",
    "FitCheckpoint": "checkpoint",
    "init_from_environment": "distributed",
    "sample_posterior": "posterior",
    "summary_table": "posterior",
    "layer_summaries": "posterior",
    "LayerSummary": "posterior",
    "plot_forest": "posterior",
    "save_posterior": "posterior",
    "load_posterior": "posterior",
    "posterior_mean": "importance",
    "posterior_lower_bound": "importance",
    "top_k_probability": "importance",
    "budget_counts": "allocation",
    "keep_from_budget": "allocation",
    "mass_curve": "uncertainty",
    "straddling_channels": "uncertainty",
    "plan_keep": "plan",
    "prune_by_posterior_mean": "pruning",
    "PrunableLayer": "structure",
    "find_prunable_layers": "structure",
    "UnsupportedStructureError": "structure",
    "prune_channels": "surgery",
    "mask_channels": "surgery",
    "fold_scales": "surgery",
    "finetune": "finetuning",
    "TrainConfig": "training",
    "train_classifier": "training",
    "save_pruned": "serialization",
    "load_pruned": "serialization",
    "ModelFileError": "serialization",
    "register_architecture": "serialization",
    "load_dataset": "data",
    "DatasetMissingError": "data",
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
