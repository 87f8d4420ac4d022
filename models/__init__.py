"""The networks the project prunes, their registry entries, and their cached trained baselines."""

from models.baseline import (
    CACHE_ENV_VAR,
    Baseline,
    load_checkpoint,
    load_or_train_baseline,
    resolve_cache_dir,
    save_checkpoint,
)
from models.lenet import LeNet300100, LeNet5Caffe
from models.registry import MODELS, ModelEntry, get_model_entry

__all__ = [
    "CACHE_ENV_VAR",
    "MODELS",
    "Baseline",
    "LeNet300100",
    "LeNet5Caffe",
    "ModelEntry",
    "get_model_entry",
    "load_checkpoint",
    "load_or_train_baseline",
    "resolve_cache_dir",
    "save_checkpoint",
]
