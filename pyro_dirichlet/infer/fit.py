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
import pyro.util
import torch
from pyro.infer import SVI
from tqdm.auto import tqdm

from pyro_dirichlet.devices import resolve_device
from pyro_dirichlet.infer.checkpoint import CheckpointWriter, FitCheckpoint
from pyro_dirichlet.infer.convergence import Convergence, ConvergenceMonitor
from pyro_dirichlet.infer.fit_config import (
    AUTOCAST_DTYPES, DEFAULT_NUM_SAMPLES, PREDICTIVE_DRAWS, PREDICTIVE_IMAGES, FitConfig, network_context,
    network_layout,
)
from pyro_dirichlet.infer.fit_data import (
    FitData, check_label_values, check_labels, check_split, data_identity, preload, stream_data,
)
from pyro_dirichlet.infer.objective import elbo_estimator, switch_optimizer
from pyro_dirichlet.data import BatchSource, Split, minibatches
from pyro_dirichlet.infer.distributed import AllReduceGradients, DataParallel
from pyro_dirichlet.infer.optim import SkipNonFinite
from pyro_dirichlet.measure import Stopwatch
from pyro_dirichlet.infer.guide import (
    DirichletGuide,
    concentration_param,
    create_params,
    guide_concentrations,
    make_guide,
)
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.infer.likelihoods import CategoricalLikelihood
from pyro_dirichlet.infer.switches import DirichletSwitches

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "AUTOCAST_DTYPES", "FitConfig", "FitResult", "FitDivergedError", "fit", "fit_model", "network_context",
]

# FitConfig fields a checkpoint may differ in: how long to fit and how to show or save it.
_RESUMABLE_FIELDS = ("epochs", "progress", "checkpoint_every")


@dataclass
class FitResult:
    """What a fit produced: the fitted concentrations and how the ELBO went.

    ``switches`` and ``guide`` (the fitted model and guide, whose parameters stay in Pyro's
    param store) are kept for drawing the prior's latent sites and predictions into the
    posterior; they are ``None`` in a result built from concentrations alone.
    """

    layers: list[PrunableLayer]
    concentrations: dict[str, torch.Tensor]
    elbo: list[float]
    epochs: int
    steps: int
    seconds: float
    device: str
    config: FitConfig = field(repr=False)
    switches: DirichletSwitches | None = field(default=None, repr=False)
    guide: Callable | None = field(default=None, repr=False)
    parameters: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    example: torch.Tensor | None = field(default=None, repr=False)
    convergence: Convergence | None = None

    def posterior(
        self,
        *,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        seed: int = 0,
        validation: BatchSource | None = None,
        predictive_draws: int = PREDICTIVE_DRAWS,
        validation_size: int = PREDICTIVE_IMAGES,
    ) -> xr.DataTree:
        """The fitted posterior as an ArviZ DataTree: :func:`pyro_dirichlet.posterior.from_fit` of this result.

        Args:
            num_samples: draws of every switch and latent site from the guide, and from the prior.
            seed: seed of every draw (the global random streams are left as they were).
            validation: held-out data; with it the tree has ``observed_data``,
                ``log_likelihood`` and ``posterior_predictive`` groups (see ``from_fit``).
            predictive_draws: posterior draws the network is run under.
            validation_size: validation examples predicted.

        Returns:
            groups ``posterior``, ``prior``, ``variational``, ``guide_parameters`` and, with
            ``validation``, ``observed_data``, ``log_likelihood``, ``posterior_predictive``.
        """
        # Imported here: ArviZ takes seconds to import, which every fitting process (each
        # torchrun rank) would otherwise pay without drawing a posterior.
        from pyro_dirichlet.posterior.fitted import from_fit

        return from_fit(self, num_samples=num_samples, seed=seed, validation=validation,
                        predictive_draws=predictive_draws, validation_size=validation_size)

    def to_dict(self) -> dict:
        """JSON-ready record for reports (the concentrations are in the posterior file)."""
        config = asdict(self.config)
        config.pop("progress")
        return {
            "epochs": self.epochs,
            "convergence": None if self.convergence is None else self.convergence.to_dict(),
            "steps": self.steps,
            "seconds": self.seconds,
            "device": self.device,
            "elbo": self.elbo,
            "config": config,
        }


class FitDivergedError(RuntimeError):
    """The ELBO became NaN or infinite.

    The guide keeps its state from before that step whenever the step's gradients were not
    finite either (:class:`~pyro_dirichlet.infer.optim.SkipNonFinite`), which is the case
    for any NaN that reaches the guide's parameters.

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
    train: BatchSource,
    config: FitConfig = FitConfig(),
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    guide: Callable | None = None,
) -> FitResult:
    """Fit the Dirichlet switch posteriors by SVI over ``train``.

    Each step takes a minibatch, scales its log-likelihood to the data size through
    ``pyro.plate(subsample=...)``, and takes one Adam step on the guide's
    log-concentrations. The network stays frozen.

    ``train`` is a preloaded ``Split`` (moved to the device once and sliced; its order is
    drawn from ``config.seed``) or streamed data: a ``DataLoader`` or any re-iterable of
    ``(inputs, targets)`` batches, read batch by batch in its own batches and order
    (``config.batch_size`` does not apply to it), of which nothing is preloaded (see
    :mod:`pyro_dirichlet.infer.stream`). The data size the likelihood is scaled to is
    ``len(loader.dataset)``, or ``config.data_size`` for an iterable that cannot say it.
    The loader draws its shuffles from a stream seeded by ``config.seed``, apart from the
    switch draws. A checkpoint needs a loader with ``len()`` and replays an interrupted
    epoch by reading (and skipping) its finished batches again, so a resumed fit is exact
    when the loader's order comes from torch's random stream (``shuffle=True``, a
    ``DistributedSampler``) or is fixed.

    Under ``torch.distributed`` (launched by ``torchrun``, see
    :mod:`pyro_dirichlet.infer.distributed`) every rank fits on its shard of each minibatch and the
    gradients are all-reduced, so each step equals the single-process step over the whole
    minibatch; only rank 0 shows progress and writes the checkpoint, and every rank returns
    the same result. A ``DataLoader`` is rebuilt there around a ``DistributedSampler``
    seeded by ``config.seed`` (``set_epoch`` each epoch), each rank reading
    ``batch_size / world_size`` examples a step (see
    :func:`~pyro_dirichlet.infer.stream.distributed_loader`).

    Args:
        switches: the model (a frozen network with switch sites).
        train: the training data: a ``Split``, a ``DataLoader`` or any re-iterable of
            ``(inputs, targets)`` batches (the validation split stays untouched for model selection).
        config: see :class:`FitConfig`.
        checkpoint: a file to resume from and save to. If it exists and was written by a fit
            of the same layers and settings (``epochs``, ``progress`` and
            ``checkpoint_every`` may differ), the fit continues from it and gives the same
            result, bit for bit, as an uninterrupted fit on the same machine. It is
            rewritten atomically every ``config.checkpoint_every`` steps, at the end of each
            epoch, and on Ctrl-C (with the last completed step) before the
            ``KeyboardInterrupt`` propagates. It holds every parameter of the fit's prior
            and guide (a learnable prior's, an autoguide's) besides the concentrations.
        guide: a guide of your own, with the model's signature, that samples every switch
            site from a Dirichlet (and any latent site of the prior); its parameters are used
            as they stand in the param store. ``None``: :func:`~pyro_dirichlet.infer.guide.make_guide`,
            a Dirichlet per switch plus ``config.hyper_guide`` over the prior's latent sites,
            every parameter starting afresh.

    Returns:
        a :class:`FitResult`; the fitted concentrations are also left in Pyro's param store
        under ``<layer>.switch.concentration``. ``seconds`` counts every run of a resumed fit.

    Raises:
        FitDivergedError: the ELBO became NaN or infinite (the guide keeps its last good state).
        ValueError: ``checkpoint`` belongs to another fit (the message names the
            differences), or it has more steps than ``config.epochs`` allow; the data is
            empty or its size unknown; the likelihood's batch shape is not the batch.
        TypeError: ``train`` is not a ``Split`` or a re-iterable of batches.

    Example:
        >>> result = fit(DirichletSwitches(net, images[:2]), data.train)  # doctest: +SKIP
        >>> result.posterior()  # an ArviZ DataTree  # doctest: +SKIP
        >>> fit(switches, data.train, FitConfig(checkpoint_every=100), checkpoint="fit.ckpt")  # doctest: +SKIP
        >>> loader = DataLoader(TensorDataset(images, labels), batch_size=128, shuffle=True)  # doctest: +SKIP
        >>> fit(switches, loader)  # streamed: the data size is len(loader.dataset)  # doctest: +SKIP
    """
    run = _setup(switches, train, config, checkpoint=checkpoint, guide=guide)
    _resume(run, train, checkpoint, guide_name=_guide_name(guide))
    seconds = _fit_epochs(run)
    concentrations = _final_concentrations(run)
    # Called here, not in a helper: its FitNotConvergedWarning (stacklevel 3) names the caller's line.
    convergence = run.monitor.final(run.history, concentrations)
    return _result(run, seconds, concentrations, convergence)


@dataclass
class _FitRun:
    """A fit in progress: built by :func:`_setup`, restored by :func:`_resume`, advanced by :func:`_fit_epochs`."""

    switches: DirichletSwitches
    config: FitConfig
    device: torch.device
    parallel: DataParallel | None
    data: FitData
    classes: int | None
    guide: Callable
    param_names: list[str]
    optim: SkipNonFinite
    reduce: AllReduceGradients | None
    svi: SVI
    epochs: int
    total_steps: int | None
    monitor: ConvergenceMonitor
    history: list[float] = field(default_factory=list)
    start: int = 0
    earlier_seconds: float = 0.0
    writer: CheckpointWriter | None = None

    @property
    def main(self) -> bool:
        return self.parallel is None or self.parallel.is_main

    @property
    def until_converged(self) -> bool:
        return self.config.epochs is None

    @property
    def size(self) -> int:
        """The data size the likelihood is scaled to."""
        return self.config.effective_data_size or self.data.size

    @property
    def finished(self) -> bool:
        return self.monitor.stopped or (self.until_converged and len(self.history) >= self.total_steps)


def _guide_name(guide: Callable | None) -> str:
    """The guide a checkpoint must come from: the default one, or the caller's function by name."""
    return "make_guide" if guide is None else f"{getattr(guide, '__module__', '')}." \
        f"{getattr(guide, '__qualname__', type(guide).__qualname__)}"


def _setup(
    switches: DirichletSwitches,
    train: BatchSource,
    config: FitConfig,
    *,
    checkpoint: str | os.PathLike[str] | None,
    guide: Callable | None,
) -> _FitRun:
    """The data on the device, the guide's parameters and the SVI of a fit, before any step or checkpoint."""
    if isinstance(train, Split):
        check_split(train, config)
    parallel = DataParallel.current()
    device = resolve_device(config.device)
    if parallel is not None:
        device = parallel.device(device)
    switches.to(device)
    if isinstance(train, Split):
        data = preload(train, config, device)
    else:
        data = stream_data(train, config, device, parallel, checkpoint)
    classes = None
    if isinstance(switches.likelihood, CategoricalLikelihood):
        classes = check_labels(switches, data.first_images, data.labels)
    switches.check_likelihood(data.first_images, data.first_labels)
    pyro.set_rng_seed(config.seed)
    guide, param_names = _prepare_guide(
        switches, config, device, (data.first_images[:1], data.first_labels[:1]), data.size, guide
    )
    # A step whose gradients are not finite changes nothing, so a diverging fit keeps its last
    # good guide; under torchrun the gradients are summed over ranks before that check.
    optim = SkipNonFinite(switch_optimizer(config.lr, config.lr_decay, config.optimizer))
    reduce = AllReduceGradients(optim, parallel) if parallel is not None else None
    model = fit_model(switches, config, device)
    svi = SVI(model, guide, reduce or optim, elbo_estimator(config.analytic_kl, config.num_particles,
                                                             vectorize=config.vectorize_particles and switches.vectorizable))
    epochs, total_steps = _planned_steps(config, data.steps_per_epoch)
    return _FitRun(
        switches=switches, config=config, device=device, parallel=parallel, data=data, classes=classes,
        guide=guide, param_names=param_names, optim=optim, reduce=reduce, svi=svi, epochs=epochs,
        total_steps=total_steps, monitor=ConvergenceMonitor(config.stopping, until_converged=config.epochs is None),
    )


def _planned_steps(config: FitConfig, steps_per_epoch: int | None) -> tuple[int, int | None]:
    """The epochs the loop may run and its total steps (``None``: streamed data of unknown length)."""
    if config.epochs is None:
        total_steps = config.stopping.max_steps
        return (math.ceil(total_steps / steps_per_epoch) if steps_per_epoch else total_steps), total_steps
    return config.epochs, (config.epochs * steps_per_epoch if steps_per_epoch is not None else None)


def _resume(
    run: _FitRun, train: BatchSource, checkpoint: str | os.PathLike[str] | None, *, guide_name: str
) -> None:
    """Continue ``run`` from ``checkpoint`` where it holds a matching fit, and set up its writer (rank 0)."""
    switches, config = run.switches, run.config
    steps_per_epoch, total_steps = run.data.steps_per_epoch, run.total_steps
    layers = [(layer.name, layer.channels) for layer in switches.layers]
    identity = {**_checkpoint_identity(config, run.data.size), **_model_identity(switches), "guide": guide_name,
                **({"data": data_identity(train)} if checkpoint is not None else {})}
    resumed = None
    if checkpoint is not None:
        resumed = FitCheckpoint.load_matching(checkpoint, layers=layers, config=identity)
        if run.parallel is not None:
            run.parallel.barrier()  # rank 0 must not overwrite the file before every rank read it
    if resumed is not None:
        if resumed.step > total_steps:
            raise ValueError(
                f"checkpoint {checkpoint} has {resumed.step} steps, more than the {total_steps} of "
                f"FitConfig.epochs={config.epochs}; ask for at least {math.ceil(resumed.step / steps_per_epoch)} epochs"
                + (", fit until converged (epochs=None)," if not run.until_converged else "") + " or delete it to start over."
            )
        if sorted(resumed.params) != sorted(run.param_names):
            raise ValueError(
                f"checkpoint {checkpoint} holds parameters {sorted(resumed.params)}, this fit has "
                f"{sorted(run.param_names)}; delete it or pass another checkpoint path."
            )
        resumed.restore(run.optim, run.device)
        run.data.generator.set_state(resumed.generator)
        run.history = list(resumed.elbo)
        run.start, run.earlier_seconds = resumed.step, resumed.seconds
        run.monitor.restore(resumed.kept)
    if checkpoint is not None and run.main:
        run.writer = CheckpointWriter(
            checkpoint,
            every=config.checkpoint_every,
            steps_per_epoch=steps_per_epoch,
            param_names=run.param_names,
            optim=run.optim,
            layers=layers,
            config=identity,
            saved_step=run.start,
        )


def _fit_epochs(run: _FitRun) -> float:
    """Run the SVI steps from ``run.start`` until the planned steps end or the fit converges; its seconds."""
    config, history, steps_per_epoch = run.config, run.history, run.data.steps_per_epoch
    # Distribution validation is off inside the loop: it costs time at every step, and a
    # NaN must reach the finiteness check below (which keeps the last good guide) instead
    # of surfacing as a constraint error from the likelihood.
    with (
        network_layout(run.switches.network, config),
        Stopwatch(run.device) as watch,
        pyro.validation_enabled(False),
        warnings.catch_warnings(),  # Pyro's "Encountered NaN" warning: FitDivergedError says it better

        tqdm(total=run.total_steps, initial=run.start, desc="SVI", unit="step", disable=not (config.progress and run.main), leave=False) as bar,
    ):
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        try:
            for epoch in range(run.start // steps_per_epoch if steps_per_epoch else 0, run.epochs):
                if run.finished:
                    break
                # Replaying this state replays the epoch's order: a resumed fit sees the same batches.
                epoch_start = run.data.generator.get_state()
                done_in_epoch = len(history) - epoch * steps_per_epoch if steps_per_epoch else 0
                for images, labels, subsample, weight in _batches(run, epoch, done_in_epoch):
                    elbo = _svi_step(run, images, labels, subsample, weight)
                    history.append(elbo)
                    bar.update()
                    if run.monitor.due(len(history)):
                        run.monitor.check(history, _concentrations(run.guide, run.switches, run.data.first_images))
                    if len(history) % 20 == 0:
                        bar.set_postfix(elbo=f"{elbo:.4g}")
                    if run.writer is not None:
                        run.writer.completed(
                            elbo=history, seconds=run.earlier_seconds + watch.elapsed, generator=run.data.generator,
                            epoch_start=epoch_start, kept=run.monitor.snapshot(),
                        )
                    if run.finished:
                        break
        except KeyboardInterrupt:
            # Ctrl-C mid-step leaves the guide half-updated: the writer holds the last whole step.
            if run.writer is not None:
                run.writer.flush()
            raise
    return watch.seconds


def _batches(run: _FitRun, epoch: int, done: int) -> Iterator[tuple]:
    """The epoch's ``(images, labels, subsample, weight)`` after its first ``done`` steps."""
    config, stream, data = run.config, run.data.stream, run.data.split
    if stream is not None:
        for step in stream.epoch(epoch, skip=done):
            if run.classes is not None:  # streamed labels enter batch by batch: each is checked as it comes
                check_label_values(step.labels, run.classes)
            if config.channels_last and step.images.dim() == 4:
                step = step._replace(images=step.images.contiguous(memory_format=torch.channels_last))
            yield step
        return
    batches = minibatches(data, config.batch_size, shuffle=True, generator=run.data.generator)
    for indices, images, labels in itertools.islice(batches, done, None):
        weight = None
        if run.reduce is not None:
            indices, weight = run.parallel.shard(indices)
            images, labels = data.images[indices], data.labels[indices]
        yield images, labels, indices, weight


def _svi_step(run: _FitRun, images: torch.Tensor, labels: torch.Tensor, subsample, weight) -> float:
    """One SVI step on a minibatch; its ELBO (over every rank under torchrun)."""
    if run.reduce is not None:
        run.reduce.weight = weight
    loss = run.svi.step(images, labels, subsample=subsample, size=run.size)
    if run.reduce is not None:
        loss = run.parallel.all_reduce_loss(loss, run.reduce.weight, run.device)
    elbo = -loss
    if not math.isfinite(elbo):
        # SkipNonFinite skipped the update when the NaN reached the gradients,
        # so the guide still holds the last good state.
        raise FitDivergedError(len(run.history), elbo, run.history, _concentrations(run.guide, run.switches, run.data.first_images))
    return elbo


def _final_concentrations(run: _FitRun) -> dict[str, torch.Tensor]:
    """The fitted concentrations, with the checkpoint holding the last step of a fit that stopped."""
    concentrations = _concentrations(run.guide, run.switches, run.data.first_images)
    if run.writer is not None and run.monitor.stopped:
        run.writer.flush()  # a stop mid-epoch: the file holds the last step, so a rerun does not go on fitting
    return concentrations


def _result(
    run: _FitRun, seconds: float, concentrations: dict[str, torch.Tensor], convergence: Convergence
) -> FitResult:
    """The :class:`FitResult` of a finished run whose last loop took ``seconds``."""
    history, steps_per_epoch, first_images = run.history, run.data.steps_per_epoch, run.data.first_images
    return FitResult(
        layers=run.switches.layers,
        concentrations=concentrations,
        convergence=convergence,
        elbo=history,
        epochs=run.config.epochs if run.config.epochs is not None else math.ceil(len(history) / steps_per_epoch) if steps_per_epoch else 1,
        steps=len(history),
        seconds=run.earlier_seconds + seconds,
        device=str(run.device),
        config=run.config,
        switches=run.switches,
        guide=run.guide,
        parameters=_unconstrained(run.param_names),
        example=first_images[:1].detach().cpu().clone(),
    )


def _prepare_guide(
    switches: DirichletSwitches,
    config: FitConfig,
    device: torch.device,
    example: tuple[torch.Tensor, torch.Tensor],
    train_size: int,
    guide: Callable | None,
) -> tuple[Callable, list[str]]:
    """The fit's guide with every parameter of it, of the prior and of the likelihood in the param store, and their names.

    A fixed prior, a likelihood without parameters and the built guide have only the
    concentrations, created at ``init_concentration``. Otherwise the prior, the guide and
    the likelihood are run once on ``example`` (one example and its target, on the fit
    device; blocked, the random streams put back, so fresh and resumed fits draw alike) to
    create their parameters; with the built guide, a first run in a scratch store names
    them, so values a previous fit left in the store are forgotten and this fit starts afresh.
    """
    if guide is None and switches.priors.fixed and not switches.has_params:
        guide = DirichletGuide(switches.layers, init_concentration=config.init_concentration)
        guide.reset()
        guide.initialise(device)
        return guide, [concentration_param(layer.name) for layer in switches.layers]
    fresh = guide is None
    if fresh:
        guide = make_guide(switches, init_concentration=config.init_concentration, hyper_guide=config.hyper_guide)
    kwargs = {"subsample": torch.zeros(1, dtype=torch.long, device=device), "size": train_size}
    store = pyro.get_param_store()
    with store.scope() as scratch:
        _create_params(switches, guide, example, kwargs)
    if fresh:
        for name in scratch["params"]:
            if name in store:
                del store[name]
    _create_params(switches, guide, example, kwargs)
    if not fresh:
        # A user's guide must cover what the model samples: say so now, not as a KeyError inside the ELBO.
        guide_concentrations(guide, switches.layers, example[0], latent_sites=switches.priors.latent_sites)
    return guide, sorted(scratch["params"])


def _create_params(switches: DirichletSwitches, guide: Callable, example: tuple, kwargs: dict) -> None:
    """:func:`create_params`, and the likelihood's parameters (a learned noise scale) where it may declare some."""
    create_params(switches, guide, example, kwargs)
    switches.create_model_params(*example)


def _unconstrained(names: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters as Pyro stores them (unconstrained), on the CPU."""
    store = dict(pyro.get_param_store().named_parameters())
    return {name: store[name].detach().cpu().clone() for name in names}


def _concentrations(guide: Callable, switches: DirichletSwitches, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The guide's switch concentrations on the CPU (read from the param store for the Dirichlet guide)."""
    if isinstance(guide, DirichletGuide):
        return guide.concentrations()
    return guide_concentrations(guide, switches.layers, images[:1])


def fit_model(switches: DirichletSwitches, config: FitConfig, device: torch.device | str) -> Callable[..., torch.Tensor]:
    """The Pyro model :func:`fit` runs: ``switches.model``, under ``config.autocast`` and
    ``config.fast_pooling`` where they apply.

    Only the network's forward changes precision under autocast; the model casts the logits
    back to float32 before the likelihood, so the ELBO is summed in float32.

    Example:
        >>> loss = Trace_ELBO().loss(fit_model(switches, FitConfig(autocast="bf16"), "cpu"), guide, images, labels)  # doctest: +SKIP
    """
    def model(*args, **kwargs) -> torch.Tensor:
        with network_context(config, device, channels_last=config.channels_last):
            return switches.model(*args, **kwargs)

    return model


def _checkpoint_identity(config: FitConfig, train_size: int) -> dict:
    """What a checkpoint must share with the fit resuming it: the settings and the data size (the prior, the
    likelihood, the guide and the data themselves are added beside them)."""
    identity = {key: value for key, value in asdict(config).items() if key not in _RESUMABLE_FIELDS}
    identity["train_size"] = train_size
    return identity


def _model_identity(switches: DirichletSwitches) -> dict:
    """What a checkpoint must share with the fit resuming it besides the settings: the prior and the likelihood.

    A fixed prior by a digest of every layer's concentrations; a prior model by its latent sites.
    """
    import hashlib

    from pyro_dirichlet.infer.likelihoods import describe

    priors = switches.priors
    if priors.fixed:
        digest = hashlib.sha256()
        for name, distribution in sorted(priors(torch.device("cpu")).items()):
            digest.update(name.encode() + distribution.concentration.detach().double().cpu().numpy().tobytes())
        prior = f"Dirichlet concentrations sha256:{digest.hexdigest()[:16]}"
    else:
        prior = "prior model with latent sites " + ", ".join(site.name for site in priors.latent_sites)
    return {"prior": prior, "likelihood": describe(switches.likelihood)}



