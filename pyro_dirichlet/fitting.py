"""Fitting the switch posteriors by stochastic variational inference (SVI)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import pyro
import pyro.optim
import torch
import xarray as xr
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from pyro_dirichlet.data import Split, minibatches
from pyro_dirichlet.measure import Stopwatch
from pyro_dirichlet.guide import DEFAULT_INIT_CONCENTRATION, DirichletGuide
from pyro_dirichlet.posterior import sample_posterior
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.switches import DirichletSwitches

__all__ = ["FitConfig", "FitResult", "FitDivergedError", "fit", "resolve_device"]


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
        effective_data_size: temper the likelihood by scaling it to this many examples
            instead of the split's size. Smaller values give the prior more weight; at the
            full 55k MNIST examples the likelihood swamps any prior.
        seed: seeds Pyro, torch and the minibatch order.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar with the running ELBO.
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


def fit(switches: DirichletSwitches, train: Split, config: FitConfig = FitConfig()) -> FitResult:
    """Fit the Dirichlet switch posteriors by SVI over ``train``.

    Each step takes a minibatch, scales its log-likelihood to the data size through
    ``pyro.plate(subsample=...)``, and takes one Adam step on the guide's
    log-concentrations. The network stays frozen.

    Args:
        switches: the model (a frozen network with switch sites).
        train: the training split (the validation split stays untouched for model selection).
        config: see :class:`FitConfig`.

    Returns:
        a :class:`FitResult`; the fitted concentrations are also left in Pyro's param store
        under ``<layer>.switch.concentration``.

    Raises:
        FitDivergedError: the ELBO became NaN or infinite (the guide keeps its last good state).

    Example:
        >>> result = fit(DirichletSwitches(net, images[:2]), data.train)  # doctest: +SKIP
        >>> result.posterior()  # an ArviZ DataTree  # doctest: +SKIP
    """
    if len(train) == 0:
        raise ValueError("train is empty: the switches need data to fit.")
    device = resolve_device(config.device)
    switches.to(device)
    pyro.set_rng_seed(config.seed)
    guide = DirichletGuide(switches.layers, init_concentration=config.init_concentration)
    guide.reset()
    guide.initialise(device)
    loss = (TraceMeanField_ELBO if config.analytic_kl else Trace_ELBO)(num_particles=config.num_particles)
    svi = SVI(switches.model, guide, pyro.optim.Adam({"lr": config.lr}), loss)
    size = config.effective_data_size or len(train)
    generator = torch.Generator().manual_seed(config.seed)
    # Whole split on the device once, so a step only slices (the data is small next to the network).
    data = train.to(device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    history: list[float] = []
    _check_labels(switches, data)
    # Distribution validation is off inside the loop: it costs time at every step, and a
    # NaN must reach the finiteness check below (which keeps the last good guide) instead
    # of surfacing as a constraint error from the likelihood.
    with (
        Stopwatch(device) as watch,
        pyro.validation_enabled(False),
        warnings.catch_warnings(),  # Pyro's "Encountered NaN" warning: FitDivergedError says it better

        tqdm(total=config.epochs * steps_per_epoch, desc="SVI", unit="step", disable=not config.progress, leave=False) as bar,
    ):
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        for _ in range(config.epochs):
            for indices, images, labels in minibatches(data, config.batch_size, shuffle=True, generator=generator):
                # A snapshot costs a few thousand floats; it lets a diverged fit keep its last good state.
                last_good = guide.state()
                elbo = -svi.step(images, labels, subsample=indices, size=size)
                if not math.isfinite(elbo):
                    guide.load_state(last_good)
                    raise FitDivergedError(len(history), elbo, history, {k: v.cpu() for k, v in last_good.items()})
                history.append(elbo)
                bar.update()
                if len(history) % 20 == 0:
                    bar.set_postfix(elbo=f"{elbo:.4g}")
    return FitResult(
        layers=switches.layers,
        concentrations=guide.concentrations(),
        elbo=history,
        epochs=config.epochs,
        steps=len(history),
        seconds=watch.seconds,
        device=str(device),
        config=config,
    )


def _check_labels(switches: DirichletSwitches, data: Split) -> None:
    """Labels must index the network's classes (checked once, since validation is off in the loop)."""
    with torch.no_grad():
        classes = switches.network(data.images[:1]).shape[-1]
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= classes:
        raise ValueError(f"train labels must lie in [0, {classes - 1}] for this {classes}-class network, got [{low}, {high}].")
