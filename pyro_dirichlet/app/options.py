"""The options of each step of a run, as plain frozen dataclasses checked where they are made.

The command line builds them (:mod:`pyro_dirichlet.app.cli`), the steps read them
(:mod:`pyro_dirichlet.app.steps`), and ``--help`` reads their defaults from this file's source
(:mod:`pyro_dirichlet.app.source_values`) without importing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from pyro_dirichlet.data.catalog import is_user_source
from pyro_dirichlet.data.normalization import Normalization
from pyro_dirichlet.io.factories import is_factory_path
from pyro_dirichlet.repair.distillation import DEFAULT_DISTILLATION
from pyro_dirichlet.repair.train import DEFAULT_EPOCHS, DEFAULT_LR
from pyro_dirichlet.infer.fit import FitConfig
from pyro_dirichlet.infer.fit_config import CLI_PREDICTIVE_DRAWS, PREDICTIVE_IMAGES
from pyro_dirichlet.infer.switches import resolve_gain
from pyro_dirichlet.planning.allocation import COSTS, DEFAULT_COST
from pyro_dirichlet.planning.plan import Target
from pyro_dirichlet.precision import DEFAULT_PRECISION, check_precision
from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION
from pyro_dirichlet.posterior import DEFAULT_CI_PROB
from pyro_dirichlet.app.prior_model import check_prior_model_name
from pyro_dirichlet.structure import COUPLING_POLICIES, DEFAULT_COUPLING, DEFAULT_ON_UNSUPPORTED, UNSUPPORTED_POLICIES

__all__ = ["MAX_SEED", "MIN_SUBSET", "Runtime", "TrainOptions", "FitOptions",
           "PruneOptions", "FinetuneOptions"]

#: The refusal of a symmetric concentration given together with a prior model, which replaces it.
PRIOR_AND_PRIOR_MODEL = ("--prior and --prior-model both given: a prior model replaces the symmetric Dirichlet "
                         "concentration, so give one of them.")
#: Seeds seed NumPy too, which takes 32-bit seeds.
MAX_SEED = 2**32 - 1
#: A smoke subset smaller than this leaves validation and test splits of one image.
MIN_SUBSET = 8


@dataclass(frozen=True)
class Runtime:
    """Where and how any step runs; not part of what a step computes, so it may differ between steps.

    Attributes:
        data_dir: where the data sets are (see :func:`pyro_dirichlet.data.resolve_data_root`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seeds the step's randomness (training, SVI, posterior draws, fine-tuning).
        progress: show progress bars and summaries.
        factory: the model factory (``"package.module:callable"``) named on this command;
            a step rebuilds a run's user model only from it, never from the path the run
            directory records (which it must equal).
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``, of every forward pass (:mod:`pyro_dirichlet.precision`);
            each step records what it resolved to as ``result["precision"]``.
        threads: CPU threads of each step's PyTorch work; ``None`` (the default): the CPUs
            other processes leave idle, measured as each step starts, unless the environment
            sets ``OMP_NUM_THREADS`` (:mod:`pyro_dirichlet.cpu_threads`: GNU OpenMP's
            threads spin on a busy core: a 45 s demo took 11 minutes beside one other job).
        compile: train and fine-tune through :func:`torch.compile`
            (:class:`~pyro_dirichlet.repair.compiled.CompiledForward`); off by default: it
            costs about 20 s of compiling per network, which a run of several epochs earns
            back (a bf16 ResNet-20 epoch 0.74x as long on this project's CPU).
    """

    data_dir: Path | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    factory: str | None = None
    precision: str = DEFAULT_PRECISION
    threads: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}.")
        if self.threads is not None:
            _check_int("threads", self.threads, low=1)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        _check_int("seed", self.seed, low=0, high=MAX_SEED)
        if self.factory is not None and not is_factory_path(self.factory):
            raise ValueError(f"factory must be a 'package.module:callable' path, got {self.factory!r}.")


@dataclass(frozen=True)
class TrainOptions:
    """The baseline: which network on which data, and how long to train it.

    Attributes:
        model: a name from ``pyro_dirichlet.baselines.MODELS``, or a user's factory ``"package.module:callable"``
            returning an ``nn.Module`` (:mod:`pyro_dirichlet.io.factories`).
        dataset: the model's data set, ``imagefolder:DIR`` or ``torchvision:NAME``; ``None``
            only where the model has no data set of its own, which ``train`` refuses.
        subset: for smoke runs, cut the training split to this many examples and validation
            and test to a quarter each (seeded by the train step's seed); every later step
            uses the same cut.
        train_epochs: epochs instead of the model's recipe (a factory's model: :class:`TrainConfig`'s).
        cache_dir: the baseline cache (a cached baseline is reused instead of retrained;
            registered models only).
        model_args: keyword arguments of the factory (plain values).
        weights: a trained state dict (safetensors, or ``torch.save``'d) used as the baseline
            instead of training.
        image_size: resize a user's images to this many pixels square.
        normalize: mean and std of a user's images; ``None`` measures them on the training split.
        weights_key: the entry of a checkpoint dict ``weights`` holds the state dict under.
        validation_dir: an ImageFolder of validation images (``imagefolder:`` data only),
            instead of a ``val/`` folder or a split carved from the training images.
    """

    model: str = "lenet5"
    dataset: str | None = "mnist"
    subset: int | None = None
    train_epochs: int | None = None
    cache_dir: Path | None = None
    model_args: dict[str, Any] | None = None
    weights: Path | None = None
    image_size: int | None = None
    normalize: Normalization | None = None
    weights_key: str | None = None
    validation_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.weights_key is not None and (not isinstance(self.weights_key, str) or not self.weights_key):
            raise ValueError(f"weights_key must name an entry of the checkpoint dict, got {self.weights_key!r}.")
        if self.weights_key is not None and self.weights is None:
            raise ValueError("--weights-key names the entry of a --weights checkpoint dict: give --weights FILE too.")
        if self.validation_dir is not None and not (isinstance(self.dataset, str)
                                                    and self.dataset.startswith("imagefolder:")):
            raise ValueError(f"--validation-dir is for an imagefolder:DIR data set, not {self.dataset!r}.")
        if self.subset is not None:
            _check_int("subset", self.subset, low=MIN_SUBSET)
        if self.train_epochs is not None:
            _check_int("train_epochs", self.train_epochs, low=1)
        if self.image_size is not None:
            _check_int("image_size", self.image_size, low=1, high=4096)
        if self.model_args and not is_factory_path(self.model):
            raise ValueError(f"--model-arg is for a model factory (--model package.module:callable), not the "
                             f"registered model {self.model!r}.")
        if (self.image_size is not None or self.normalize is not None) and not is_user_source(self.dataset):
            raise ValueError(f"--image-size and --normalize are for a user's data set (imagefolder:DIR or "
                             f"torchvision:NAME), not {self.dataset!r}.")


@dataclass(frozen=True)
class FitOptions:
    """The switches and their fit.

    Attributes:
        layers: layers to switch and prune; ``None`` finds every conv and hidden linear layer.
        coupled: ``"group"`` (default) gives each coupling group one shared switch,
            ``"skip"`` leaves channels coupled through residual adds unpruned.
        on_unsupported: ``"raise"`` refuses a network with layers whose channels the
            structure analysis cannot follow, listing them all; ``"skip"`` prunes the others
            (the fit records the skipped layers and why, and the report lists them).
        prior: symmetric Dirichlet prior concentration of every switch.
        prior_model: instead of ``prior``, a prior model named ``package.module:function``
            (:mod:`pyro_dirichlet.app.prior_model`); only its spelling is checked here, the
            module is imported by the command that needs it (validation runs no user code).
        fit: the SVI settings (seed, device and progress come from :class:`Runtime`; its
            ``hyper_guide`` covers the prior model's own latent sites).
        ci_prob: probability mass of the printed HDIs.
        gain: the learned scales beside each switch (:class:`~pyro_dirichlet.DirichletSwitches`'
            ``gain``): ``"channel"`` (the default: one per channel, so the posterior mean ranks
            by importance; see docs/method.md), ``"layer"`` (the earlier default) or ``"none"``
            (the paper's model).
        layer_gain: the older boolean spelling of ``gain`` (True: ``"layer"``, False: ``"none"``);
            ``None`` unless given.
        predictive_draws: posterior draws the validation images are predicted under, for
            ``posterior.nc``'s ``log_likelihood`` and ``posterior_predictive`` (``az.loo`` wants ~30+).
        predictive_images: validation images predicted; 0 writes no predictive groups.
    """

    layers: tuple[str, ...] | None = None
    coupled: str = DEFAULT_COUPLING
    on_unsupported: str = DEFAULT_ON_UNSUPPORTED
    prior: float = DEFAULT_CONCENTRATION
    prior_model: str | None = None
    fit: FitConfig = field(default_factory=FitConfig)
    ci_prob: float = DEFAULT_CI_PROB
    gain: str | None = None
    layer_gain: bool | None = None
    predictive_draws: int = CLI_PREDICTIVE_DRAWS
    predictive_images: int = PREDICTIVE_IMAGES

    def __post_init__(self) -> None:
        _check_number("prior", self.prior, low=0, finite=True)
        _check_int("predictive_draws", self.predictive_draws, low=1)
        _check_int("predictive_images", self.predictive_images, low=0)
        if self.layer_gain is not None and not isinstance(self.layer_gain, bool):
            raise ValueError(f"layer_gain must be true or false, got {self.layer_gain!r}.")
        try:
            object.__setattr__(self, "gain", resolve_gain(self.gain, self.layer_gain))
        except (TypeError, ValueError) as error:
            raise ValueError(str(error)) from None
        object.__setattr__(self, "layer_gain", None)  # recorded once, as gain
        if self.prior_model is not None:
            check_prior_model_name(self.prior_model)
            if self.prior != DEFAULT_CONCENTRATION:
                raise ValueError(PRIOR_AND_PRIOR_MODEL)
        _check_probability("ci_prob", self.ci_prob)
        if self.coupled not in COUPLING_POLICIES:
            raise ValueError(f"coupled must be 'group' or 'skip', got {self.coupled!r}.")
        if self.on_unsupported not in UNSUPPORTED_POLICIES:
            raise ValueError(f"on_unsupported must be 'raise' or 'skip', got {self.on_unsupported!r}.")
        if self.layers is not None and (not self.layers or not all(isinstance(n, str) and n for n in self.layers)):
            raise ValueError(f"layers must be None or a non-empty list of layer names, got {self.layers!r}.")
        if not isinstance(self.fit, FitConfig):
            raise TypeError(f"fit must be a FitConfig, got {type(self.fit).__name__}.")


@dataclass(frozen=True)
class PruneOptions:
    """How many channels each layer keeps: a per-layer target or one global budget, else the model's default.

    Attributes:
        keep: counts or fractions per layer, or one fraction of every switched layer (see
            :data:`pyro_dirichlet.planning.plan.Target`).
        budget: the fraction of the baseline's ``budget_cost`` the pruned network may keep;
            one threshold on ``E[s_c] * C`` picks every layer's count
            (:func:`pyro_dirichlet.planning.allocation.budget_counts`).
        budget_cost: ``"flops"`` or ``"params"``.
        check: compare the posterior's keep set with L1-norm's and random ones at the same
            counts after the same calibration, on the validation split
            (:func:`pyro_dirichlet.decision_check.check_decision`), and warn when it loses.
    """

    keep: Target | None = None
    budget: float | None = None
    budget_cost: Literal["flops", "params"] = DEFAULT_COST
    check: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.keep, float) or isinstance(self.keep, int) and not isinstance(self.keep, bool):
            _check_number("keep", self.keep, low=0, high=1)
        elif self.keep is not None:
            if not isinstance(self.keep, dict) or not self.keep:
                raise ValueError(f"keep must name at least one layer, e.g. conv1=5, got {self.keep!r}.")
            for layer, count in self.keep.items():
                if not isinstance(layer, str) or not layer:
                    raise ValueError(f"keep has a layer name that is not a name: {layer!r}.")
                if isinstance(count, bool) or not isinstance(count, (int, float)) or not (
                        (isinstance(count, int) and count >= 1) or (isinstance(count, float) and 0 < count <= 1)):
                    raise ValueError(f"keep for layer {layer!r} must be a count of at least 1 or a fraction in (0, 1], "
                                     f"got {count!r}.")
        if self.budget is not None:
            _check_number("budget", self.budget, low=0, high=1)
        if self.budget_cost not in COSTS:
            raise ValueError(f"budget_cost must be 'flops' or 'params', got {self.budget_cost!r}.")
        if not isinstance(self.check, bool):
            raise ValueError(f"check must be true or false, got {self.check!r}.")
        if self.keep is not None and self.budget is not None:
            raise ValueError("keep and budget both set: give per-layer counts (--keep) or a global budget (--budget), not both.")


@dataclass(frozen=True)
class FinetuneOptions:
    """Fine-tuning of the pruned network (Adam, cosine schedule, best validation epoch).

    Attributes:
        epochs: 0 keeps the pruned network as it is (default: see
            :data:`pyro_dirichlet.repair.train.DEFAULT_EPOCHS` for how it was chosen).
        lr: peak learning rate (:data:`pyro_dirichlet.repair.train.DEFAULT_LR`).
        distillation: share of the loss that matches the run's baseline (the unpruned
            network, the teacher) at :data:`~pyro_dirichlet.repair.distillation.DEFAULT_TEMPERATURE`,
            in ``[0, 1]``; 0 fine-tunes on the labels alone (:func:`pyro_dirichlet.repair.train.finetune`).
    """

    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    distillation: float = DEFAULT_DISTILLATION

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, low=0)
        _check_number("lr", self.lr, low=0, finite=True)
        if isinstance(self.distillation, bool) or not isinstance(self.distillation, (int, float)) \
                or not 0 <= self.distillation <= 1:
            raise ValueError(f"distillation must be a number in [0, 1], got {self.distillation!r}.")


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}.")


def _check_number(name: str, value: Any, *, low: float, high: float | None = None, finite: bool = False) -> None:
    """``low < value`` (and ``value <= high``); ``finite`` also refuses infinity."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > low and (
        high is None or value <= high) and (not finite or math.isfinite(value))
    if not ok:
        bound = f"a number in ({low:g}, {high:g}]" if high is not None else "a positive, finite number" if finite \
            else f"a number above {low:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")


def _check_probability(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}.")
