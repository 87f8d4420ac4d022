"""The main job: every step of a run in sequence -- train (or reuse) a baseline, fit the switches, prune, fine-tune, report.

The steps themselves are in :mod:`pyro_dirichlet.app.steps` and :mod:`pyro_dirichlet.app.report`;
``pyro-dirichlet <step>`` runs one of them on an existing run directory. :func:`run` builds
the whole run directory in a staging folder and moves it in only when every step has
succeeded, so a failed run leaves ``out`` as it was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import gc
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from pyro_dirichlet.io.factories import is_factory_path
from pyro_dirichlet.measure import Stopwatch
from pyro_dirichlet.app.prior_model import load_prior_model
from pyro_dirichlet.app.report import ReportOptions, report_step
from pyro_dirichlet.app.rundir import STAGING_PREFIX, RunDirectory, replace_run
from pyro_dirichlet.app.steps import (
    FinetuneOptions,
    FitOptions,
    PruneOptions,
    Runtime,
    TrainOptions,
    finetune_step,
    fit_step,
    format_layer_summary,
    prune_step,
    train_step,
)

__all__ = ["RunConfig", "run", "format_layer_summary", "Runtime", "TrainOptions", "FitOptions", "PruneOptions",
           "FinetuneOptions", "ReportOptions"]


@dataclass(frozen=True)
class RunConfig:
    """Everything the main job needs: where to write, and each step's own options.

    Every default lives in the step's options dataclass; ``RunConfig()`` is the documented
    run (LeNet-5 on MNIST, the model's default target, :data:`pyro_dirichlet.repair.train.DEFAULT_EPOCHS`
    fine-tune epochs).

    Attributes:
        out: the run directory (see :mod:`pyro_dirichlet.app.rundir` for its files).
        runtime: data folder, device, seed and progress display of every step.
        train: the baseline (:class:`TrainOptions`).
        fit: the switches, the prior and the SVI settings (:class:`FitOptions`).
        prune: the per-layer target or global budget (:class:`PruneOptions`).
        finetune: fine-tuning of the pruned network (:class:`FinetuneOptions`).
        report: what the report measures (:class:`ReportOptions`).

    Example:
        >>> RunConfig(out=Path("runs/b"), fit=FitOptions(prior=0.5), finetune=FinetuneOptions(epochs=3))  # doctest: +SKIP
    """

    out: Path = Path("runs/demo")
    runtime: Runtime = field(default_factory=Runtime)
    train: TrainOptions = field(default_factory=TrainOptions)
    fit: FitOptions = field(default_factory=FitOptions)
    prune: PruneOptions = field(default_factory=PruneOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    report: ReportOptions = field(default_factory=ReportOptions)

    def __post_init__(self) -> None:
        kinds = {"runtime": Runtime, "train": TrainOptions, "fit": FitOptions, "prune": PruneOptions,
                 "finetune": FinetuneOptions, "report": ReportOptions}
        for name, kind in kinds.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"RunConfig.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}.")


def run(config: RunConfig) -> dict:
    """Run every step and write the whole run directory into ``config.out`` at once.

    ``out`` receives the baseline, ``posterior.nc``, the pruned model before
    and after fine-tuning, ``report.json``, ``report.html``, ``report.md`` and the manifest
    ``run.json``; files of an earlier run there that this run does not write are removed.

    Returns:
        the report (also written to ``<out>/report.json``).
    """
    out = Path(config.out)
    _check_layer_names(config)
    # Imported once, before any work: a bad module fails now, and fit and report share it.
    prior_model = None if config.fit.prior_model is None else load_prior_model(config.fit.prior_model)
    if is_factory_path(config.train.model) and config.runtime.factory is None:
        # The caller named the factory in TrainOptions: the later steps may rebuild the network from it.
        config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, factory=config.train.model))
    # The whole run holds out's lock; each step locks the staged copy it builds.
    with RunDirectory(out).lock(), Stopwatch() as watch:
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}run-{os.getpid()}-", dir=out))
        try:
            staged = RunDirectory(staging, published=Path(out))
            train_step(staged, config.runtime, config.train)
            _release_memory()
            fit_step(staged, config.runtime, config.fit, prior_model=prior_model)
            _release_memory()
            prune_step(staged, config.runtime, config.prune)
            _release_memory()
            finetune_step(staged, config.runtime, config.finetune)
            _release_memory()
            # The report draws the model, so it needs the prior model the fit was given.
            report = report_step(staged, config.runtime, dataclasses.replace(config.report, prior_model=config.fit.prior_model),
                                 prior_model=prior_model)
            replace_run(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    pruned = report["pruned"]
    _say(config, f"pruned {pruned['architecture']}: {pruned['params']:,} parameters "
                 f"({pruned['params_fraction']:.2%}), {pruned['flops']:,} FLOPs ({pruned['flops_fraction']:.2%}); "
                 f"test accuracy {pruned['test_accuracy_before_finetune']:.4f} before fine-tuning, "
                 f"{pruned['test_accuracy']:.4f} after {config.finetune.epochs} epochs")
    _say(config, f"wrote {out}/ (report.html, report.md, report.json, posterior.nc, pruned.safetensors, "
                 f"pruned.json, baseline.safetensors, run.json) in {watch.seconds:.0f} s")
    return report


def _check_layer_names(config: RunConfig) -> None:
    """Layers named in ``fit.layers`` or ``prune.keep`` must exist in the model: found now, not after training and fitting."""
    from torch import nn

    from pyro_dirichlet.app.sources import train_model

    # A factory is imported and called here, so a wrong path fails before any data are read.
    factory, entry = train_model(config.train)
    network = factory.build() if factory is not None else None
    if config.fit.layers is None and config.prune.keep is None:
        return
    network = network if network is not None else entry.build()
    names = sorted(name for name, module in network.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear)))
    for option, asked in (("layers", config.fit.layers or ()), ("keep", config.prune.keep or {})):
        unknown = sorted(set(asked) - set(names))
        if unknown:
            raise ValueError(f"--{option} names {', '.join(map(repr, unknown))}, which {config.train.model} does not have; "
                             f"its convolution and linear layers are {', '.join(names)}.")
    if config.fit.layers is not None and config.prune.keep is not None:
        unswitched = sorted(set(config.prune.keep) - set(config.fit.layers))
        if unswitched:
            raise ValueError(f"--keep names {', '.join(map(repr, unswitched))}, which --layers does not switch.")


def _say(config: RunConfig, message: str) -> None:
    if config.runtime.progress:
        print(message, flush=True)


def _release_memory() -> None:
    """Hand the memory a finished step let go of back to the operating system.

    Each step frees its tensors when it returns, but glibc's allocator keeps the freed pages
    in its arenas, so the next step's peak stacks on the last one's: a user's 317k-parameter
    ResNet run on 2,000 images peaked at 1.64 GB where no step alone passed 1.4 GB
    (``benchmarks/run_cost.py``). ``malloc_trim(0)`` returns them; without glibc this only collects.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` without glibc; looked up once (``find_library``
    runs ``ldconfig`` in a child process)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
