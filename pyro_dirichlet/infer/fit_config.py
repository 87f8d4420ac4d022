"""How to fit the switches: :class:`FitConfig`, the settings of :func:`pyro_dirichlet.infer.fit.fit`, and
:func:`network_context`, the forward its precision and pooling settings give the frozen network.

Apart from the fit itself so that a reader finds every default of a fit in one place, so
that ``--help`` reads them from this file's source without importing the fitting machinery,
and so that the posterior's predictions (:mod:`pyro_dirichlet.posterior.fitted`) run the
network as the fit did without depending on the fit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from pyro_dirichlet.infer._fast import NoGradMaxPool
from pyro_dirichlet.infer.convergence import StoppingRule
from pyro_dirichlet.infer.guide import DEFAULT_HYPER_GUIDE, DEFAULT_INIT_CONCENTRATION, HYPER_GUIDES
from pyro_dirichlet.infer.objective import DEFAULT_LR_DECAY, DEFAULT_OPTIMIZER, OPTIMIZERS
from pyro_dirichlet.precision import LIBRARY_PRECISION, autocast, check_precision

__all__ = ["AUTOCAST_DTYPES", "CLI_PREDICTIVE_DRAWS", "DEFAULT_NUM_SAMPLES", "FitConfig", "PREDICTIVE_DRAWS",
           "PREDICTIVE_IMAGES", "network_context", "network_layout"]

#: Draws of every switch and latent site a fitted posterior holds (``FitResult.posterior``,
#: :func:`pyro_dirichlet.posterior.sample_posterior`, :func:`pyro_dirichlet.posterior.from_fit`).
DEFAULT_NUM_SAMPLES = 1000
#: The posterior predictive of ``FitResult.posterior(validation=...)``: the network is run under
#: this many posterior draws on this many validation images (docs/priors-and-posteriors.md).
PREDICTIVE_DRAWS = 100
PREDICTIVE_IMAGES = 128
#: ``pyro-dirichlet fit`` runs fewer draws than the library, being timed against its SVI: 50 x 128
#: cost 0.09 of the demo's SVI in CPU seconds (100 x 128: 0.19-0.20; the bar is 0.2), and 50 draws
#: stay above the ~30 that PSIS (az.loo) wants.
CLI_PREDICTIVE_DRAWS = 50

#: ``FitConfig.autocast`` names and the dtype the frozen network's forward runs in.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


@dataclass(frozen=True)
class FitConfig:
    """How to fit the switches.

    Attributes:
        epochs: passes over the training split; ``None`` (the default) fits until the
            ``stopping`` rule holds (at least ``stopping.min_steps`` steps, whatever the
            data size). The paper's setting, one epoch, stays available as ``epochs=1``:
            on a small data set it is a few steps, and a fit that stops before its
            posterior settles ranks channels by how far each happened to move
            (``analysis/ranking_quality.py``); such a fit warns
            (:class:`~pyro_dirichlet.infer.convergence.FitNotConvergedWarning`).
        stopping: when a fit with ``epochs=None`` stops, and the thresholds every fit's
            convergence diagnostics are judged by (:class:`~pyro_dirichlet.infer.convergence.StoppingRule`).
        batch_size: minibatch size; the likelihood is scaled to the full data size.
        lr: Adam learning rate on the log-concentrations, at the first step.
        lr_decay: the learning rate is multiplied by this after every step (Pyro's
            ``ClippedAdam(lrd=...)``, without clipping); 1 keeps it constant (plain Adam).
            The default falls tenfold every 1,000 steps: at a constant rate the
            concentrations keep jittering by about ``lr`` in log space, so channels near a
            layer's keep threshold trade places at every check and a fit never settles.
        optimizer: ``"adam"`` (one step scale per channel) or ``"layer-adam"`` (one per layer:
            the channels of a layer move in proportion to their gradients; see
            :class:`~pyro_dirichlet.infer.optim.LayerAdam`).
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
        data_size: the number of training examples, for training data that cannot say it
            (an iterable without ``len(loader.dataset)``); ``None``: the data's own count.
            With a ``Split`` it must be ``None`` or the split's length.
        seed: seeds Pyro, torch and the minibatch order.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar with the running ELBO.
        checkpoint_every: with ``fit(..., checkpoint=path)``, also write the checkpoint every
            this many steps (it is always written at the end of each epoch); ``None``: only
            at epoch ends. Without a checkpoint path it has no effect.
        precision: the frozen network's forward: ``"fp32"``, ``"bf16"`` (bfloat16 autocast
            on the fit device; the switches, the ELBO and the optimizer stay float32) or
            ``"auto"`` (bf16 where the device has native bfloat16 units; see
            :mod:`pyro_dirichlet.precision`).
        autocast: the older spelling of ``precision="bf16"``: ``"bf16"`` overrides
            ``precision``; ``None`` leaves it to ``precision``.
        channels_last: give the network and 4-D image batches the channels-last memory
            layout for the fit (other inputs are left as they are); the network gets its
            usual layout back afterwards. On by default, as for training: oneDNN's
            convolutions run natively in it, where a channels-first bf16 batch is first
            copied into that layout at every convolution. An SVI epoch on this project's
            CPU (AMX, one thread, medians of 3) against channels-first: ResNet-20 fp32
            0.85x, bf16 0.77x; VGG-16 fp32 1.11x, bf16 0.75x -- bf16 is what ``auto``
            runs on such a CPU.
        fast_pooling: on the CPU, run the non-overlapping max-pooling of tensors that need
            no gradient (the frozen layers in front of the first switch) as an element-wise
            maximum of strided slices, which gives the same values several times faster
            than PyTorch's channels-first kernel (see :mod:`pyro_dirichlet.infer._fast`). With
            ``channels_last`` it has nothing to do: PyTorch's channels-last kernel is as fast
            (LeNet-5's first pooling, one thread: 1.1 ms against 8.0 ms channels-first).
        hyper_guide: the autoguide of the prior's own latent sites (a hierarchical prior's
            concentration, say): ``"normal"`` (``AutoNormal``) or ``"delta"`` (``AutoDelta``,
            a point estimate: empirical Bayes). See :data:`~pyro_dirichlet.infer.guide.HYPER_GUIDES`.
    """

    epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    lr_decay: float = DEFAULT_LR_DECAY
    optimizer: str = DEFAULT_OPTIMIZER
    init_concentration: float = DEFAULT_INIT_CONCENTRATION
    analytic_kl: bool = True
    num_particles: int = 1
    effective_data_size: int | None = None
    data_size: int | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    vectorize_particles: bool = True
    checkpoint_every: int | None = None
    autocast: str | None = None
    channels_last: bool = True
    precision: str = LIBRARY_PRECISION
    fast_pooling: bool = True
    hyper_guide: str = DEFAULT_HYPER_GUIDE
    stopping: StoppingRule = field(default_factory=StoppingRule)

    def __post_init__(self) -> None:
        if not isinstance(self.stopping, StoppingRule):
            raise ValueError(f"FitConfig.stopping must be a StoppingRule, got {type(self.stopping).__name__}.")
        for name in ("epochs", "batch_size", "num_particles"):
            value = getattr(self, name)
            if name == "epochs" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FitConfig.{name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"FitConfig.lr must be a positive number, got {self.lr!r}.")
        if isinstance(self.lr_decay, bool) or not isinstance(self.lr_decay, (int, float)) or not 0 < self.lr_decay <= 1:
            raise ValueError(f"FitConfig.lr_decay must be a number in (0, 1], got {self.lr_decay!r}.")
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
        if self.data_size is not None and (
            isinstance(self.data_size, bool) or not isinstance(self.data_size, int) or self.data_size < 1
        ):
            raise ValueError(f"FitConfig.data_size must be None or a positive integer, got {self.data_size!r}.")
        if self.checkpoint_every is not None and (
            isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1
        ):
            raise ValueError(f"FitConfig.checkpoint_every must be None or a positive integer, got {self.checkpoint_every!r}.")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"FitConfig.autocast must be None or one of {sorted(AUTOCAST_DTYPES)}, got {self.autocast!r}.")
        check_precision(self.precision, "FitConfig.precision")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"FitConfig.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.hyper_guide not in HYPER_GUIDES:
            raise ValueError(f"FitConfig.hyper_guide must be one of {sorted(HYPER_GUIDES)}, got {self.hyper_guide!r}.")
        for name in ("vectorize_particles", "channels_last", "fast_pooling"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FitConfig.{name} must be True or False, got {getattr(self, name)!r}.")


@contextlib.contextmanager
def network_context(config: FitConfig, device: torch.device | str, *, channels_last: bool = False) -> Iterator[None]:
    """What :func:`~pyro_dirichlet.infer.fit.fit` runs the frozen network's forward under: ``config.precision`` (or
    ``config.autocast``), and on the CPU ``config.fast_pooling``
    (:class:`~pyro_dirichlet.infer._fast.NoGradMaxPool`) unless the batches are ``channels_last``:
    PyTorch pools those fast itself, and the mode would only put a Python call in front of every
    torch function of the step (about 100 a LeNet-5 step)."""
    device_type = torch.device(device).type
    with contextlib.ExitStack() as stack:
        stack.enter_context(autocast(config.autocast or config.precision, device))
        if config.fast_pooling and device_type == "cpu" and not channels_last:
            stack.enter_context(NoGradMaxPool())
        yield


@contextlib.contextmanager
def network_layout(network: torch.nn.Module, config: FitConfig) -> Iterator[None]:
    """The frozen network in the channels-last layout while the fit (or its posterior
    predictive) runs it, when ``config.channels_last``; its usual layout back afterwards."""
    if not config.channels_last:
        yield
        return
    network.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        network.to(memory_format=torch.contiguous_format)
