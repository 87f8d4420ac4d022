"""Fitting the switch posteriors by stochastic variational inference (SVI)."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import zero_grads
from tqdm.auto import tqdm

from pyro_dirichlet.checkpoint import CheckpointWriter, FitCheckpoint
from pyro_dirichlet.data import Split, minibatches
from pyro_dirichlet.distributed import DataParallel
from pyro_dirichlet.measure import Stopwatch
from pyro_dirichlet.pooling import NoGradMaxPool
from pyro_dirichlet.guide import DEFAULT_INIT_CONCENTRATION, DirichletGuide, concentration_param
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.switches import DirichletSwitches

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "AUTOCAST_DTYPES", "FitConfig", "FitResult", "FitDivergedError", "fit", "fit_model", "network_context", "resolve_device",
]

#: ``FitConfig.autocast`` names and the dtype the frozen network's forward runs in.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}

# FitConfig fields a checkpoint may differ in: how long to fit and how to show or save it.
_RESUMABLE_FIELDS = ("epochs", "progress", "checkpoint_every")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked and passed through."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine.")
    return resolved


@dataclass(frozen=True)
class FitConfig:
    """How to fit the switches.

    Attributes:
        epochs: passes over the training split (the paper: one suffices).
        batch_size: minibatch size; the likelihood is scaled to the full data size.
        lr: Adam learning rate on the log-concentrations.
        init_concentration: initial guide concentration of every channel.
        analytic_kl: use the closed-form Dirichlet KL (``TraceMeanField_ELBO``); ``False``
            estimates it by sampling (``Trace_ELBO``). Non-Dirichlet priors without a
            registered KL fall back to sampling either way.
        num_particles: ELBO samples per step.
        vectorize_particles: with ``num_particles > 1``, draw the particles as one batch
            (Pyro's ``vectorize_particles``: the switched network runs once on the stacked
            copies) instead of a Python loop over them. Same estimator, fewer calls.
        effective_data_size: temper the likelihood by scaling it to this many examples
            instead of the split's size. Smaller values give the prior more weight; at the
            full 55k MNIST examples the likelihood swamps any prior.
        seed: seeds Pyro, torch and the minibatch order.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar with the running ELBO.
        checkpoint_every: with ``fit(..., checkpoint=path)``, also write the checkpoint every
            this many steps (it is always written at the end of each epoch); ``None``: only
            at epoch ends. Without a checkpoint path it has no effect.
        autocast: ``"bf16"`` runs the frozen network's forward in bfloat16 autocast on the
            fit device (the switches, the ELBO and the optimizer stay float32); ``None``:
            float32 throughout.
        channels_last: give the network and the images the channels-last memory layout
            for the fit (often faster convolutions on GPUs and recent CPUs); the network
            gets its usual layout back afterwards.
        fast_pooling: on the CPU, run the non-overlapping max-pooling of tensors that need
            no gradient (the frozen layers in front of the first switch) as an element-wise
            maximum of strided slices, which gives the same values several times faster
            than PyTorch's channels-first kernel (see :mod:`pyro_dirichlet.pooling`).
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    init_concentration: float = DEFAULT_INIT_CONCENTRATION
    analytic_kl: bool = True
    num_particles: int = 1
    effective_data_size: int | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    vectorize_particles: bool = True
    checkpoint_every: int | None = None
    autocast: str | None = None
    channels_last: bool = False
    fast_pooling: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_particles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FitConfig.{name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"FitConfig.lr must be a positive number, got {self.lr!r}.")
        if not (isinstance(self.init_concentration, (int, float)) and 0 < self.init_concentration < math.inf):
            raise ValueError(f"FitConfig.init_concentration must be positive and finite, got {self.init_concentration!r}.")
        if self.effective_data_size is not None and (
            isinstance(self.effective_data_size, bool)
            or not isinstance(self.effective_data_size, int)
            or self.effective_data_size < 1
        ):
            raise ValueError(
                f"FitConfig.effective_data_size must be None or a positive integer, got {self.effective_data_size!r}."
            )
        if self.checkpoint_every is not None and (
            isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1
        ):
            raise ValueError(f"FitConfig.checkpoint_every must be None or a positive integer, got {self.checkpoint_every!r}.")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"FitConfig.autocast must be None or one of {sorted(AUTOCAST_DTYPES)}, got {self.autocast!r}.")
        for name in ("vectorize_particles", "channels_last", "fast_pooling"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FitConfig.{name} must be True or False, got {getattr(self, name)!r}.")


@dataclass
class FitResult:
    """What a fit produced: the fitted concentrations and how the ELBO went."""

    layers: list[PrunableLayer]
    concentrations: dict[str, torch.Tensor]
    elbo: list[float]
    epochs: int
    steps: int
    seconds: float
    device: str
    config: FitConfig = field(repr=False)

    def posterior(self, *, num_samples: int = 1000, seed: int = 0) -> xr.DataTree:
        """Draw the fitted switch posterior into an ArviZ DataTree (see :func:`sample_posterior`)."""
        # Imported here: ArviZ takes seconds to import, which every fitting process (each
        # torchrun rank) would otherwise pay without drawing a posterior.
        from pyro_dirichlet.posterior import sample_posterior

        return sample_posterior(self.concentrations, num_samples=num_samples, seed=seed)

    def to_dict(self) -> dict:
        """JSON-ready record for reports (the concentrations are in the posterior file)."""
        config = asdict(self.config)
        config.pop("progress")
        return {
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": self.seconds,
            "device": self.device,
            "elbo": self.elbo,
            "config": config,
        }


class FitDivergedError(RuntimeError):
    """The ELBO became NaN or infinite. The guide keeps its last good state.

    Attributes:
        step: the (0-based) step whose ELBO was not finite.
        elbo: the ELBO history up to the last good step.
        concentrations: the last good guide concentrations.
    """

    def __init__(self, step: int, value: float, elbo: list[float], concentrations: dict[str, torch.Tensor]) -> None:
        super().__init__(
            f"the ELBO became {value} at SVI step {step}; the fit stopped and the guide keeps "
            f"its state from before that step. Try a lower FitConfig.lr."
        )
        self.step = step
        self.elbo = elbo
        self.concentrations = concentrations


def fit(
    switches: DirichletSwitches,
    train: Split,
    config: FitConfig = FitConfig(),
    *,
    checkpoint: str | os.PathLike[str] | None = None,
) -> FitResult:
    """Fit the Dirichlet switch posteriors by SVI over ``train``.

    Each step takes a minibatch, scales its log-likelihood to the data size through
    ``pyro.plate(subsample=...)``, and takes one Adam step on the guide's
    log-concentrations. The network stays frozen.

    Under ``torch.distributed`` (launched by ``torchrun``, see
    :mod:`pyro_dirichlet.distributed`) every rank fits on its shard of each minibatch and the
    gradients are all-reduced, so each step equals the single-process step over the whole
    minibatch; only rank 0 shows progress and writes the checkpoint, and every rank returns
    the same result.

    Args:
        switches: the model (a frozen network with switch sites).
        train: the training split (the validation split stays untouched for model selection).
        config: see :class:`FitConfig`.
        checkpoint: a file to resume from and save to. If it exists and was written by a fit
            of the same layers and settings (``epochs``, ``progress`` and
            ``checkpoint_every`` may differ), the fit continues from it and gives the same
            result, bit for bit, as an uninterrupted fit on the same machine. It is
            rewritten atomically every ``config.checkpoint_every`` steps, at the end of each
            epoch, and on Ctrl-C (with the last completed step) before the
            ``KeyboardInterrupt`` propagates.

    Returns:
        a :class:`FitResult`; the fitted concentrations are also left in Pyro's param store
        under ``<layer>.switch.concentration``. ``seconds`` counts every run of a resumed fit.

    Raises:
        FitDivergedError: the ELBO became NaN or infinite (the guide keeps its last good state).
        ValueError: ``checkpoint`` belongs to another fit (the message names the
            differences), or it has more steps than ``config.epochs`` allow.

    Example:
        >>> result = fit(DirichletSwitches(net, images[:2]), data.train)  # doctest: +SKIP
        >>> result.posterior()  # an ArviZ DataTree  # doctest: +SKIP
        >>> fit(switches, data.train, FitConfig(checkpoint_every=100), checkpoint="fit.ckpt")  # doctest: +SKIP
    """
    if len(train) == 0:
        raise ValueError("train is empty: the switches need data to fit.")
    parallel = DataParallel.current()
    main = parallel is None or parallel.is_main
    device = resolve_device(config.device)
    if parallel is not None:
        device = parallel.device(device)
    switches.to(device)
    pyro.set_rng_seed(config.seed)
    guide = DirichletGuide(switches.layers, init_concentration=config.init_concentration)
    guide.reset()
    guide.initialise(device)
    elbo_loss = _elbo(config)
    optim = pyro.optim.Adam({"lr": config.lr})
    model = fit_model(switches, config, device)
    size = config.effective_data_size or len(train)
    generator = torch.Generator().manual_seed(config.seed)
    # Whole split on the device once, so a step only slices (the data is small next to the network).
    data = train.to(device)
    if config.channels_last:
        data = Split(data.images.contiguous(memory_format=torch.channels_last), data.labels)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    history: list[float] = []
    _check_labels(switches, data)

    layers = [(layer.name, layer.channels) for layer in switches.layers]
    identity = _checkpoint_identity(config, len(train))
    resumed = None
    if checkpoint is not None:
        resumed = FitCheckpoint.load_matching(checkpoint, layers=layers, config=identity)
        if parallel is not None:
            parallel.barrier()  # rank 0 must not overwrite the file before every rank read it
    start, earlier_seconds = 0, 0.0
    if resumed is not None:
        if resumed.step > total_steps:
            raise ValueError(
                f"checkpoint {checkpoint} has {resumed.step} steps, more than the {total_steps} of "
                f"FitConfig.epochs={config.epochs}; ask for at least {math.ceil(resumed.step / steps_per_epoch)} epochs."
            )
        resumed.restore(optim, device)
        generator.set_state(resumed.generator)
        history = list(resumed.elbo)
        start, earlier_seconds = resumed.step, resumed.seconds
    writer = None
    if checkpoint is not None and main:
        writer = CheckpointWriter(
            checkpoint,
            every=config.checkpoint_every,
            steps_per_epoch=steps_per_epoch,
            param_names=[concentration_param(layer.name) for layer in switches.layers],
            optim=optim,
            layers=layers,
            config=identity,
            saved_step=start,
        )

    # Distribution validation is off inside the loop: it costs time at every step, and a
    # NaN must reach the finiteness check below (which keeps the last good guide) instead
    # of surfacing as a constraint error from the likelihood.
    with (
        _network_layout(switches, config),
        Stopwatch(device) as watch,
        pyro.validation_enabled(False),
        warnings.catch_warnings(),  # Pyro's "Encountered NaN" warning: FitDivergedError says it better

        tqdm(total=total_steps, initial=start, desc="SVI", unit="step", disable=not (config.progress and main), leave=False) as bar,
    ):
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        try:
            for epoch in range(start // steps_per_epoch, config.epochs):
                # Replaying this state replays the epoch's permutation: a resumed fit sees the same order.
                epoch_start = generator.get_state()
                batches = minibatches(data, config.batch_size, shuffle=True, generator=generator)
                done_in_epoch = len(history) - epoch * steps_per_epoch
                for indices, images, labels in itertools.islice(batches, done_in_epoch, None):
                    weight = 1.0
                    if parallel is not None:
                        indices, weight = parallel.shard(indices)
                        images, labels = data.images[indices], data.labels[indices]
                    elbo = -_svi_step(model, guide, elbo_loss, optim, images, labels, indices, size, parallel, weight)
                    if not math.isfinite(elbo):
                        # _svi_step skipped the update, so the guide still holds the last good state.
                        raise FitDivergedError(len(history), elbo, history, guide.concentrations())
                    history.append(elbo)
                    bar.update()
                    if len(history) % 20 == 0:
                        bar.set_postfix(elbo=f"{elbo:.4g}")
                    if writer is not None:
                        writer.completed(
                            elbo=history, seconds=earlier_seconds + watch.elapsed, generator=generator, epoch_start=epoch_start
                        )
        except KeyboardInterrupt:
            # Ctrl-C mid-step leaves the guide half-updated: the writer holds the last whole step.
            if writer is not None:
                writer.flush()
            raise
    return FitResult(
        layers=switches.layers,
        concentrations=guide.concentrations(),
        elbo=history,
        epochs=config.epochs,
        steps=len(history),
        seconds=earlier_seconds + watch.seconds,
        device=str(device),
        config=config,
    )


def fit_model(switches: DirichletSwitches, config: FitConfig, device: torch.device | str) -> Callable[..., torch.Tensor]:
    """The Pyro model :func:`fit` runs: ``switches.model``, under ``config.autocast`` and
    ``config.fast_pooling`` where they apply.

    Only the network's forward changes precision under autocast; the model casts the logits
    back to float32 before the likelihood, so the ELBO is summed in float32.

    Example:
        >>> loss = Trace_ELBO().loss(fit_model(switches, FitConfig(autocast="bf16"), "cpu"), guide, images, labels)  # doctest: +SKIP
    """
    def model(*args, **kwargs) -> torch.Tensor:
        with network_context(config, device):
            return switches.model(*args, **kwargs)

    return model


@contextlib.contextmanager
def network_context(config: FitConfig, device: torch.device | str) -> Iterator[None]:
    """What :func:`fit` runs the frozen network's forward under: ``config.autocast``, and on
    the CPU ``config.fast_pooling`` (:class:`~pyro_dirichlet.pooling.NoGradMaxPool`)."""
    device_type = torch.device(device).type
    with contextlib.ExitStack() as stack:
        if config.autocast is not None:
            stack.enter_context(torch.autocast(device_type=device_type, dtype=AUTOCAST_DTYPES[config.autocast]))
        if config.fast_pooling and device_type == "cpu":
            stack.enter_context(NoGradMaxPool())
        yield


def _elbo(config: FitConfig) -> ELBO:
    """The ELBO estimator the config asks for."""
    family = TraceMeanField_ELBO if config.analytic_kl else Trace_ELBO
    if config.num_particles > 1 and config.vectorize_particles:
        # The data plate is the model's only plate; the particle plate goes left of it.
        return family(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1)
    return family(num_particles=config.num_particles)


def _svi_step(
    model: Callable[..., torch.Tensor],
    guide: DirichletGuide,
    elbo: ELBO,
    optim: pyro.optim.PyroOptim,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    size: int,
    parallel: DataParallel | None,
    weight: float,
) -> float:
    """One SVI step, Pyro's custom-loop pattern (what ``SVI.step`` does), with an all-reduce
    of the gradients between the backward pass and the update when data-parallel.

    A step whose loss is not finite updates nothing, so the guide keeps its state from
    before it: the caller stops the fit without needing a snapshot of every step.
    """
    with poutine.trace(param_only=True) as param_capture:
        loss = elbo.loss_and_grads(model, guide, images, labels, subsample=indices, size=size)
    params = {name: site["value"].unconstrained() for name, site in param_capture.trace.nodes.items()}
    if parallel is not None:
        loss = parallel.all_reduce(loss, [params[name] for name in sorted(params)], weight)
    if math.isfinite(loss):
        optim(params.values())
    zero_grads(set(params.values()))
    return loss


def _checkpoint_identity(config: FitConfig, train_size: int) -> dict:
    """What a checkpoint must share with the fit resuming it: the settings and the data size."""
    identity = {key: value for key, value in asdict(config).items() if key not in _RESUMABLE_FIELDS}
    identity["train_size"] = train_size
    return identity


@contextlib.contextmanager
def _network_layout(switches: DirichletSwitches, config: FitConfig):
    """Channels-last network for the fit when asked, and its usual layout back afterwards."""
    if not config.channels_last:
        yield
        return
    switches.network.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        switches.network.to(memory_format=torch.contiguous_format)


def _check_labels(switches: DirichletSwitches, data: Split) -> None:
    """Labels must index the network's classes (checked once, since validation is off in the loop)."""
    with torch.no_grad():
        classes = switches.network(data.images[:1]).shape[-1]
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= classes:
        raise ValueError(f"train labels must lie in [0, {classes - 1}] for this {classes}-class network, got [{low}, {high}].")
