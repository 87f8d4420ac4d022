"""The named networks (``--model lenet5``, ...) with their data set, training recipe and
default widths (:mod:`.registry`), and their trained baselines, cached on disk
(:mod:`.trained`). The architectures themselves are plain torch in :mod:`pyro_dirichlet.models`."""

from pyro_dirichlet.baselines.registry import MODELS, ModelEntry, get_model_entry
from pyro_dirichlet.baselines.trained import (
    CACHE_ENV_VAR,
    Baseline,
    load_checkpoint,
    load_or_train_baseline,
    resolve_cache_dir,
    save_checkpoint,
)

__all__ = [
    "CACHE_ENV_VAR",
    "MODELS",
    "Baseline",
    "ModelEntry",
    "get_model_entry",
    "load_checkpoint",
    "load_or_train_baseline",
    "resolve_cache_dir",
    "save_checkpoint",
]
