"""The main job: train (or reuse) a baseline, fit the switches, prune by posterior mean, fine-tune, report."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pyro_dirichlet.atomic import atomic_write_json
from pyro_dirichlet.data import DataSplits, load_dataset
from pyro_dirichlet.finetuning import finetune
from pyro_dirichlet.fitting import FitConfig, fit, resolve_device
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, count_parameters
from pyro_dirichlet.plan import Target
from pyro_dirichlet.posterior import LayerSummary, layer_summaries, plot_forest, save_posterior
from pyro_dirichlet.pruning import prune_by_posterior_mean
from pyro_dirichlet.serialization import save_pruned
from pyro_dirichlet.switches import DirichletSwitches

__all__ = ["RunConfig", "run", "format_layer_summary"]

REPORT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything the main job needs.

    Attributes:
        model: a name from ``models.MODELS`` (e.g. ``"lenet5"``).
        dataset: a data set name (e.g. ``"mnist"``); must match the model's.
        out: the run directory written with the report, posterior, plot and pruned model.
        data_dir: where the data sets are (see :func:`pyro_dirichlet.data.resolve_data_root`).
        layers: names of the layers to switch and prune; ``None`` finds every conv and
            hidden linear layer.
        target: channels to keep per layer; ``None`` uses the model's documented default
            (restricted to ``layers`` when they are given).
        coupled: ``"skip"`` leaves channels coupled through residual adds unpruned;
            ``"group"`` prunes each coupling group through one shared switch.
        prior: symmetric Dirichlet prior concentration of every switch.
        fit: the SVI settings (its ``seed`` and ``device`` are overridden by this config's).
        finetune_epochs: epochs of fine-tuning after pruning (best epoch by validation accuracy).
        finetune_lr: peak Adam learning rate of fine-tuning. 1e-2 was chosen over 3e-3 and
            1e-3 by validation accuracy after pruning LeNet-5 (``analysis/select_finetune_lr.py``).
        ci_prob: probability mass of the reported HDI credible intervals.
        seed: seeds training, the fit and fine-tuning.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        cache_dir: where trained baselines are cached (default: see ``models.baseline``).
        subset: for smoke runs on a CPU, cut the training split to this many examples and
            the validation and test splits to a quarter of it each (seeded). Accuracies of
            such runs are not comparable with full runs; the report records the sizes.
        train_epochs: train the baseline for this many epochs instead of its recipe's.
        progress: show progress bars.
    """

    model: str = "lenet5"
    dataset: str = "mnist"
    out: Path = Path("runs/demo")
    data_dir: Path | None = None
    layers: tuple[str, ...] | None = None
    coupled: str = "skip"
    target: Target | None = None
    prior: float = 1.0
    fit: FitConfig = field(default_factory=FitConfig)
    finetune_epochs: int = 3
    finetune_lr: float = 1e-2
    ci_prob: float = 0.95
    seed: int = 0
    device: str = "auto"
    cache_dir: Path | None = None
    subset: int | None = None
    train_epochs: int | None = None
    progress: bool = True


def format_layer_summary(summary: LayerSummary, *, count: int = 3) -> str:
    """Two lines for one layer: its ``count`` most and least important channels with HDIs."""
    order = summary.ranked()
    percent = round(summary.ci_prob * 100)

    def describe(positions) -> str:
        return ", ".join(
            f"#{summary.channels[i]} {summary.mean[i]:.3g} [{summary.hdi_lower[i]:.3g}, {summary.hdi_upper[i]:.3g}]"
            for i in positions
        )

    return (
        f"{summary.layer} ({len(order)} channels; mean [{percent}% HDI])\n"
        f"  most important:  {describe(order[:count])}\n"
        f"  least important: {describe(order[::-1][:count])}"
    )


def run(config: RunConfig) -> dict:
    """Run the whole job and write ``report.json``, ``posterior.nc``, ``forest.png`` and the pruned model into ``config.out``.

    Returns:
        the report (also written to ``<out>/report.json``).
    """
    with Stopwatch() as watch:
        return _run(config, watch)


def _run(config: RunConfig, watch: Stopwatch) -> dict:
    from models import get_model_entry, load_or_train_baseline  # the application layer: library stays model-agnostic

    entry = get_model_entry(config.model)
    if config.dataset != entry.dataset:
        raise ValueError(f"model {config.model!r} is trained on {entry.dataset!r}, not dataset {config.dataset!r}.")
    out = Path(config.out)
    _check_writable(out)
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, config.data_dir)
    if config.subset is not None:
        data = _cut(data, config.subset, seed=config.seed)
    example = data.train.images[:2].to(device)

    recipe = entry.train if config.train_epochs is None else dataclasses.replace(entry.train, epochs=config.train_epochs)
    baseline = load_or_train_baseline(
        config.model, data, device=str(device), cache_dir=config.cache_dir, seed=config.seed,
        progress=config.progress, train_config=recipe,
    )
    network = baseline.model.to(device)
    baseline_report = {
        "test_accuracy": accuracy(network, data.test, device=device),
        "validation_accuracy": accuracy(network, data.validation, device=device),
        "params": count_parameters(network),
        "flops": count_flops(network, example),
        "trained_in_this_run": baseline.trained_now,
    }
    if baseline.train_result is not None:
        seconds = baseline.train_result.seconds_per_epoch
        baseline_report["seconds_per_epoch"] = statistics.median(seconds)
        baseline_report["epochs"] = baseline.train_result.epochs
    _say(config, f"baseline {config.model}: test accuracy {baseline_report['test_accuracy']:.4f}, "
                 f"{baseline_report['params']:,} parameters, {baseline_report['flops']:,} FLOPs")

    switches = DirichletSwitches(network, example, layers=config.layers, prior=config.prior, coupled=config.coupled)
    fit_config = FitConfig(**{**asdict(config.fit), "seed": config.seed, "device": str(device), "progress": config.progress})
    result = fit(switches, data.train, fit_config)
    posterior = result.posterior(seed=config.seed)
    summaries = layer_summaries(posterior, ci_prob=config.ci_prob)
    _say(config, f"SVI: {result.steps} steps in {result.seconds:.1f} s, final ELBO {result.elbo[-1]:.4g}")
    for summary in summaries.values():
        _say(config, format_layer_summary(summary))

    switched = {layer.name for layer in switches.layers}
    target = dict(config.target) if config.target is not None else {
        layer: count for layer, count in entry.default_keep.items() if layer in switched
    }
    pruned, keep = prune_by_posterior_mean(network, posterior, target, example)
    before_finetune = accuracy(pruned, data.test, device=device)
    tuning = finetune(pruned, data, epochs=config.finetune_epochs, lr=config.finetune_lr, seed=config.seed, device=str(device), progress=config.progress)
    pruned.eval()
    architecture = {layer.name: len(keep.get(layer.name, range(layer.channels))) for layer in switches.layers}
    pruned_report = {
        "architecture": architecture,
        "kept_channels": keep,
        "params": count_parameters(pruned),
        "flops": count_flops(pruned, example),
        "test_accuracy_before_finetune": before_finetune,
        "test_accuracy": accuracy(pruned, data.test, device=device),
        "validation_accuracy": accuracy(pruned, data.validation, device=device),
        "finetune_epochs": config.finetune_epochs,
        "finetune_lr": config.finetune_lr,
        "finetune": tuning.to_dict(),
    }
    pruned_report["params_fraction"] = pruned_report["params"] / baseline_report["params"]
    pruned_report["flops_fraction"] = pruned_report["flops"] / baseline_report["flops"]

    report = {
        "format_version": REPORT_FORMAT_VERSION,
        "model": config.model,
        "dataset": config.dataset,
        "device": str(device),
        "seed": config.seed,
        "data": {"source": getattr(data, "source", config.dataset), "train": len(data.train),
                 "validation": len(data.validation), "test": len(data.test)},
        "prior_concentration": config.prior,
        "coupled": config.coupled,
        "target": target,
        "ci_prob": config.ci_prob,
        "baseline": baseline_report,
        "svi": result.to_dict(),
        "pruned": pruned_report,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()},
    }
    with _staged(out) as staging:
        save_posterior(posterior, staging / "posterior.nc")
        plot_forest(posterior, staging / "forest.png", ci_prob=config.ci_prob)
        save_pruned(pruned.cpu(), staging / "pruned", metadata={"model": config.model, "dataset": config.dataset, "architecture": architecture})
        report["total_seconds"] = watch.elapsed
        atomic_write_json(staging / "report.json", report)
    _say(config, f"pruned {architecture}: {pruned_report['params']:,} parameters "
                 f"({pruned_report['params_fraction']:.2%}), {pruned_report['flops']:,} FLOPs ({pruned_report['flops_fraction']:.2%}); "
                 f"test accuracy {before_finetune:.4f} before fine-tuning, {pruned_report['test_accuracy']:.4f} after "
                 f"{config.finetune_epochs} epochs")
    _say(config, f"wrote {out}/report.json, posterior.nc, forest.png, pruned.safetensors, pruned.json "
                 f"in {report['total_seconds']:.0f} s")
    return report


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A staging folder inside ``out`` whose files move into ``out`` only when every one is written.

    A failure halfway leaves ``out`` as it was (no posterior from this run next to a report
    from the last one); ``report.json`` moves last, so a report always describes files present.
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield staging
        names = sorted(p.name for p in staging.iterdir())
        for name in [n for n in names if n != "report.json"] + ["report.json"]:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cut(data: DataSplits, size: int, *, seed: int) -> DataSplits:
    """Seeded subsets for smoke runs: ``size`` training examples, ``size // 4`` validation and test."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"subset must be an integer of at least 8 training examples, got {size!r}.")
    small = max(2, size // 4)
    return data.subset(train=size, validation=small, test=small, seed=seed)


def _check_writable(out: Path) -> None:
    """Fail before any work when the run directory cannot be written."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"out {str(out)!r} is not a directory path: {str(probe)!r} is a file.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"out {str(out)!r} cannot be written: no write permission on {str(probe)!r}.")


def _say(config: RunConfig, message: str) -> None:
    if config.progress:
        print(message, flush=True)
