"""Static view of the lazily imported names in ``pyro_dirichlet/__init__.py`` (``_EXPORTS``), for type checkers and IDEs.

tests/test_api.py checks that this file names exactly the exported names and modules."""

from __future__ import annotations

from pyro_dirichlet.planning.allocation import budget_counts as budget_counts, keep_from_budget as keep_from_budget
from pyro_dirichlet.repair.calibrate import Calibration as Calibration, CalibrationConfig as CalibrationConfig
from pyro_dirichlet.data import DatasetError as DatasetError, DatasetMissingError as DatasetMissingError, load_dataset as load_dataset
from pyro_dirichlet.devices import resolve_device as resolve_device
from pyro_dirichlet.criteria import CRITERIA as CRITERIA, Criterion as Criterion, get_criterion as get_criterion, register_criterion as register_criterion
from pyro_dirichlet.infer.checkpoint import FitCheckpoint as FitCheckpoint
from pyro_dirichlet.infer.distributed import init_from_environment as init_from_environment
from pyro_dirichlet.infer.fit import FitConfig as FitConfig, FitDivergedError as FitDivergedError, FitResult as FitResult, fit as fit
from pyro_dirichlet.infer.guide import DirichletGuide as DirichletGuide, load_guide as load_guide
from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION as DEFAULT_CONCENTRATION, PriorModel as PriorModel, resolve_prior as resolve_prior
from pyro_dirichlet.infer.switches import DirichletSwitches as DirichletSwitches, freeze as freeze, switch_site as switch_site
from pyro_dirichlet.measure import accuracy as accuracy, count_flops as count_flops, count_parameters as count_parameters
from pyro_dirichlet.planning.plan import plan_keep as plan_keep
from pyro_dirichlet.posterior import LayerSummary as LayerSummary, layer_summaries as layer_summaries, load_posterior as load_posterior, plot_forest as plot_forest, sample_posterior as sample_posterior, save_posterior as save_posterior, summary_table as summary_table
from pyro_dirichlet.posterior.uncertainty import mass_curve as mass_curve, straddling_channels as straddling_channels
from pyro_dirichlet.criteria.posterior import posterior_lower_bound as posterior_lower_bound, posterior_mean as posterior_mean, top_k_probability as top_k_probability
from pyro_dirichlet.pruner import Pruner as Pruner
from pyro_dirichlet.pruning import prune_by_posterior_mean as prune_by_posterior_mean
from pyro_dirichlet.io.pretrained import from_pretrained as from_pretrained, save_pretrained as save_pretrained
from pyro_dirichlet.io.serialization import ModelFileError as ModelFileError, load_pruned as load_pruned, register_architecture as register_architecture, save_pruned as save_pruned
from pyro_dirichlet.structure import PrunableLayer as PrunableLayer, UnsupportedStructureError as UnsupportedStructureError, find_prunable_layers as find_prunable_layers
from pyro_dirichlet.surgery import fold_scales as fold_scales, mask_channels as mask_channels, prune_channels as prune_channels
from pyro_dirichlet.repair.train import TrainConfig as TrainConfig, finetune as finetune, train_classifier as train_classifier

__version__: str
__all__: list[str]
