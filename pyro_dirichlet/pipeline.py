"""The main job: every step of a run in sequence -- train (or reuse) a baseline, fit the switches, prune, fine-tune, report.

The steps themselves are in :mod:`pyro_dirichlet.steps` and :mod:`pyro_dirichlet.report`;
``pyro-dirichlet <step>`` runs one of them on an existing run directory. :func:`run` builds
the whole run directory in a staging folder and moves it in only when every step has
succeeded, so a failed run leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pyro_dirichlet.fitting import FitConfig
from pyro_dirichlet.measure import Stopwatch
from pyro_dirichlet.plan import Target
from pyro_dirichlet.report import ReportOptions, report_step
from pyro_dirichlet.rundir import RunDirectory, RunDirectoryError, check_writable, move_run
from pyro_dirichlet.steps import (
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

__all__ = ["RunConfig", "run", "format_layer_summary"]


@dataclass(frozen=True)
class RunConfig:
    """Everything the main job needs: the options of every step in one place.

    Attributes:
        model: a name from ``models.MODELS`` (e.g. ``"lenet5"``).
        dataset: a data set name (e.g. ``"mnist"``); must match the model's.
        out: the run directory (see :mod:`pyro_dirichlet.rundir` for its files).
        data_dir: where the data sets are (see :func:`pyro_dirichlet.data.resolve_data_root`).
        layers: names of the layers to switch and prune; ``None`` finds every conv and
            hidden linear layer.
        target: channels to keep per layer; ``None`` uses ``budget`` or else the model's
            documented default (restricted to ``layers`` when they are given).
        budget: a global fraction of the baseline's ``budget_cost`` instead of ``target``.
        budget_cost: ``"flops"`` or ``"params"``.
        coupled: ``"skip"`` leaves channels coupled through residual adds unpruned;
            ``"group"`` prunes each coupling group through one shared switch.
        prior: symmetric Dirichlet prior concentration of every switch.
        fit: the SVI settings (its ``seed`` and ``device`` are overridden by this config's).
        finetune_epochs: epochs of fine-tuning after pruning (best epoch by validation accuracy).
        finetune_lr: peak Adam learning rate of fine-tuning (see :class:`FinetuneOptions`).
        ci_prob: probability mass of the reported HDI credible intervals.
        seed: seeds training, the fit and fine-tuning.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        cache_dir: where trained baselines are cached (default: see ``models.baseline``).
        subset: for smoke runs on a CPU, cut the training split to this many examples and
            the validation and test splits to a quarter of it each (seeded). Accuracies of
            such runs are not comparable with full runs; the report records the sizes.
        train_epochs: train the baseline for this many epochs instead of its recipe's.
        latency_batch: images per forward pass when the report times inference.
        progress: show progress bars.
    """

    model: str = "lenet5"
    dataset: str = "mnist"
    out: Path = Path("runs/demo")
    data_dir: Path | None = None
    layers: tuple[str, ...] | None = None
    coupled: str = "skip"
    target: Target | None = None
    budget: float | None = None
    budget_cost: Literal["flops", "params"] = "flops"
    prior: float = 1.0
    fit: FitConfig = field(default_factory=FitConfig)
    finetune_epochs: int = FinetuneOptions.epochs
    finetune_lr: float = FinetuneOptions.lr
    ci_prob: float = 0.95
    seed: int = 0
    device: str = "auto"
    cache_dir: Path | None = None
    subset: int | None = None
    train_epochs: int | None = None
    latency_batch: int = 256
    progress: bool = True

    def runtime(self) -> Runtime:
        return Runtime(data_dir=self.data_dir, device=self.device, seed=self.seed, progress=self.progress)

    def train_options(self) -> TrainOptions:
        return TrainOptions(model=self.model, dataset=self.dataset, subset=self.subset,
                            train_epochs=self.train_epochs, cache_dir=self.cache_dir)

    def fit_options(self) -> FitOptions:
        return FitOptions(layers=self.layers, coupled=self.coupled, prior=self.prior, fit=self.fit, ci_prob=self.ci_prob)

    def prune_options(self) -> PruneOptions:
        return PruneOptions(keep=self.target, budget=self.budget, budget_cost=self.budget_cost)

    def finetune_options(self) -> FinetuneOptions:
        return FinetuneOptions(epochs=self.finetune_epochs, lr=self.finetune_lr)

    def report_options(self) -> ReportOptions:
        return ReportOptions(ci_prob=self.ci_prob, latency_batch=self.latency_batch)


def run(config: RunConfig) -> dict:
    """Run every step and write the whole run directory into ``config.out`` at once.

    ``out`` receives the baseline, ``posterior.nc``, ``forest.png``, the pruned model before
    and after fine-tuning, ``report.json``, ``report.html``, ``report.md`` and the manifest
    ``run.json``; files of an earlier run there that this run does not write are removed.

    Returns:
        the report (also written to ``<out>/report.json``).
    """
    out = Path(config.out)
    check_writable(out)
    # Every option is checked before anything runs or a folder is made.
    runtime, options = config.runtime(), (config.train_options(), config.fit_options(), config.prune_options(),
                                          config.finetune_options(), config.report_options())
    train_options, fit_options, prune_options, finetune_options, report_options = options
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-run-", dir=out))
    try:
        with Stopwatch() as watch:
            staged = RunDirectory(staging)
            train_step(staged, runtime, train_options)
            fit_step(staged, runtime, fit_options)
            prune_step(staged, runtime, prune_options)
            finetune_step(staged, runtime, finetune_options)
            report = report_step(staged, runtime, report_options)
            previous = _files_of(RunDirectory(out))
            move_run(staging, out)
            for name in previous - _files_of(RunDirectory(out)):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    pruned = report["pruned"]
    _say(config, f"pruned {pruned['architecture']}: {pruned['params']:,} parameters "
                 f"({pruned['params_fraction']:.2%}), {pruned['flops']:,} FLOPs ({pruned['flops_fraction']:.2%}); "
                 f"test accuracy {pruned['test_accuracy_before_finetune']:.4f} before fine-tuning, "
                 f"{pruned['test_accuracy']:.4f} after {config.finetune_epochs} epochs")
    _say(config, f"wrote {out}/ (report.html, report.md, report.json, posterior.nc, forest.png, pruned.safetensors, "
                 f"pruned.json, baseline.safetensors, run.json) in {watch.seconds:.0f} s")
    return report


def _files_of(run: RunDirectory) -> set[str]:
    """Every file the manifest in ``run`` lists, or none when there is no readable manifest."""
    try:
        steps = run.manifest()["steps"]
    except RunDirectoryError:
        return set()
    return {name for record in steps.values() for name in record.get("files", [])}


def _say(config: RunConfig, message: str) -> None:
    if config.progress:
        print(message, flush=True)
