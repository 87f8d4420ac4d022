"""The steps of a run -- train, fit, prune, fine-tune -- each reading the run directory and writing its own files into it.

Each step is one function ``<step>_step(run, runtime, options) -> record`` and one small
options dataclass. A step loads what earlier steps wrote (the baseline, the posterior, the
pruned network), does its work, and commits its files and its record to the run
directory's manifest all at once (:class:`pyro_dirichlet.rundir.RunDirectory`). The report
is its own module (:mod:`pyro_dirichlet.report`).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from pyro_dirichlet.data import DataSplits, load_dataset
from pyro_dirichlet.finetuning import DEFAULT_EPOCHS, DEFAULT_LR, finetune
from pyro_dirichlet.distributed import DataParallel, init_from_environment
from pyro_dirichlet.fitting import FitConfig, fit, resolve_device
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, count_parameters
from pyro_dirichlet.plan import Target
from pyro_dirichlet.posterior import LayerSummary, layer_summaries, load_posterior, plot_forest, save_posterior
from pyro_dirichlet.pruning import prune_by_posterior_mean
from pyro_dirichlet.rundir import RunDirectory, check_writable
from pyro_dirichlet.serialization import load_pruned, save_pruned
from pyro_dirichlet.switches import DirichletSwitches

__all__ = [
    "Runtime",
    "TrainOptions",
    "FitOptions",
    "PruneOptions",
    "FinetuneOptions",
    "BASELINE",
    "POSTERIOR",
    "FOREST",
    "PRUNED_BEFORE_FINETUNE",
    "PRUNED",
    "train_step",
    "fit_step",
    "prune_step",
    "finetune_step",
    "load_run_data",
    "load_baseline",
    "format_layer_summary",
]

#: File names in the run directory, by the step that writes them.
BASELINE = "baseline.safetensors"  # train
POSTERIOR = "posterior.nc"  # fit
FOREST = "forest.png"  # fit
#: Written every this many SVI steps while ``fit`` runs, so Ctrl-C or a crash loses little.
FIT_CHECKPOINT_EVERY = 50
PRUNED_BEFORE_FINETUNE = "pruned-before-finetune"  # prune: .safetensors + .json
PRUNED = "pruned"  # finetune: .safetensors + .json


@dataclass(frozen=True)
class Runtime:
    """Where and how any step runs; not part of what a step computes, so it may differ between steps.

    Attributes:
        data_dir: where the data sets are (see :func:`pyro_dirichlet.data.resolve_data_root`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seeds the step's randomness (training, SVI, posterior draws, fine-tuning).
        progress: show progress bars and summaries.
    """

    data_dir: Path | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainOptions:
    """The baseline: which network on which data, and how long to train it.

    Attributes:
        model: a name from ``models.MODELS``.
        dataset: the model's data set.
        subset: for smoke runs, cut the training split to this many examples and validation
            and test to a quarter each (seeded by the train step's seed); every later step
            uses the same cut.
        train_epochs: epochs instead of the model's recipe.
        cache_dir: the baseline cache (a cached baseline is reused instead of retrained).
    """

    model: str = "lenet5"
    dataset: str = "mnist"
    subset: int | None = None
    train_epochs: int | None = None
    cache_dir: Path | None = None


@dataclass(frozen=True)
class FitOptions:
    """The switches and their fit.

    Attributes:
        layers: layers to switch and prune; ``None`` finds every conv and hidden linear layer.
        coupled: ``"skip"`` leaves channels coupled through residual adds unpruned,
            ``"group"`` gives each coupling group one shared switch.
        prior: symmetric Dirichlet prior concentration of every switch.
        fit: the SVI settings (seed, device and progress come from :class:`Runtime`).
        ci_prob: probability mass of the printed HDIs.
    """

    layers: tuple[str, ...] | None = None
    coupled: str = "skip"
    prior: float = 1.0
    fit: FitConfig = field(default_factory=FitConfig)
    ci_prob: float = 0.95


@dataclass(frozen=True)
class PruneOptions:
    """How many channels each layer keeps: a per-layer target or one global budget, else the model's default.

    Attributes:
        keep: counts or fractions per layer (see :data:`pyro_dirichlet.plan.Target`).
        budget: the fraction of the baseline's ``budget_cost`` the pruned network may keep;
            one threshold on ``E[s_c] * C`` picks every layer's count
            (:func:`pyro_dirichlet.allocation.budget_counts`).
        budget_cost: ``"flops"`` or ``"params"``.
    """

    keep: Target | None = None
    budget: float | None = None
    budget_cost: Literal["flops", "params"] = "flops"

    def __post_init__(self) -> None:
        if self.keep is not None and self.budget is not None:
            raise ValueError("keep and budget both set: give per-layer counts (--keep) or a global budget (--budget), not both.")


@dataclass(frozen=True)
class FinetuneOptions:
    """Fine-tuning of the pruned network (Adam, cosine schedule, best validation epoch).

    Attributes:
        epochs: 0 keeps the pruned network as it is (default: see
            :data:`pyro_dirichlet.finetuning.DEFAULT_EPOCHS` for how it was chosen).
        lr: peak learning rate (:data:`pyro_dirichlet.finetuning.DEFAULT_LR`).
    """

    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR


def train_step(run: RunDirectory, runtime: Runtime, options: TrainOptions) -> dict[str, Any]:
    """Train (or take from the cache) the baseline and store it in the run directory as ``baseline.safetensors``.

    Starts the run: the manifest records the model, data set and data cut every later step uses.
    """
    from models import get_model_entry, load_or_train_baseline  # the application layer: library stays model-agnostic
    from models.baseline import save_checkpoint

    entry = get_model_entry(options.model)
    if options.dataset != entry.dataset:
        raise ValueError(f"model {options.model!r} is trained on {entry.dataset!r}, not dataset {options.dataset!r}.")
    check_writable(run.path)
    with Stopwatch() as watch:
        device = resolve_device(runtime.device)
        data_record = {"subset": options.subset, "subset_seed": runtime.seed}
        data = _cut(load_dataset(options.dataset, runtime.data_dir), data_record)
        recipe = entry.train if options.train_epochs is None else dataclasses.replace(entry.train, epochs=options.train_epochs)
        baseline = load_or_train_baseline(
            options.model, data, device=str(device), cache_dir=options.cache_dir, seed=runtime.seed,
            progress=runtime.progress, train_config=recipe,
        )
        network = baseline.model.to(device)
        example = data.train.images[:2].to(device)
        result = {
            "test_accuracy": accuracy(network, data.test, device=device),
            "validation_accuracy": accuracy(network, data.validation, device=device),
            "params": count_parameters(network),
            "flops": count_flops(network, example),
            "trained_in_this_run": baseline.trained_now,
        }
        if baseline.train_result is not None:
            result["seconds_per_epoch"] = statistics.median(baseline.train_result.seconds_per_epoch)
            result["epochs"] = baseline.train_result.epochs
            result["training"] = baseline.train_result.to_dict()
        _say(runtime, f"baseline {options.model}: test accuracy {result['test_accuracy']:.4f}, "
                      f"{result['params']:,} parameters, {result['flops']:,} FLOPs")
        identity = {
            "model": options.model,
            "dataset": options.dataset,
            "data": {**data_record, "source": data.source or data.name, "train": len(data.train),
                     "validation": len(data.validation), "test": len(data.test)},
        }
        with run.stage() as staging:
            save_checkpoint(staging / BASELINE, network, {**baseline.metadata, "model": options.model})
            return run.commit("train", staging, config={**_jsonable(options), **_jsonable(runtime), "train": recipe.to_dict()},
                              result=result, seconds=watch.elapsed, identity=identity)["steps"]["train"]


def fit_step(run: RunDirectory, runtime: Runtime, options: FitOptions) -> dict[str, Any]:
    """Fit the switch posterior of the run's baseline; write ``posterior.nc`` and ``forest.png``."""
    with Stopwatch() as watch:
        run.record("train")
        check_writable(run.path)
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        network = load_baseline(run).to(device)
        example = data.train.images[:2].to(device)
        switches = DirichletSwitches(network, example, layers=options.layers, prior=options.prior, coupled=options.coupled)
        fit_config = dataclasses.replace(options.fit, seed=runtime.seed, device=str(device), progress=runtime.progress)
        if fit_config.checkpoint_every is None:
            fit_config = dataclasses.replace(fit_config, checkpoint_every=FIT_CHECKPOINT_EVERY)
        checkpoint = fit_checkpoint_path(run, options, runtime)
        if checkpoint.exists():
            _say(runtime, f"resuming the fit from {checkpoint}")
        # Under torchrun every rank fits on its shard of each minibatch and ends with the
        # same guide; rank 0 alone writes the run directory.
        init_from_environment()
        parallel = DataParallel.current()
        result = fit(switches, data.train, fit_config, checkpoint=checkpoint)
        if parallel is not None and not parallel.is_main:
            return {"rank": parallel.rank, "result": result.to_dict()}
        posterior = result.posterior(seed=runtime.seed)
        _say(runtime, f"SVI: {result.steps} steps in {result.seconds:.1f} s, final ELBO {result.elbo[-1]:.4g}")
        for summary in layer_summaries(posterior, ci_prob=options.ci_prob).values():
            _say(runtime, format_layer_summary(summary))
        with run.stage() as staging:
            save_posterior(posterior, staging / POSTERIOR)
            plot_forest(posterior, staging / FOREST, ci_prob=options.ci_prob)
            config = {**_jsonable(dataclasses.replace(options, fit=fit_config)), **_jsonable(runtime)}
            record = run.commit("fit", staging, config=config, result=result.to_dict(), seconds=watch.elapsed)["steps"]["fit"]
        # The posterior is in place; the checkpoint only served to resume this fit.
        checkpoint.unlink(missing_ok=True)
        return record


def fit_checkpoint_path(run: RunDirectory, options: "FitOptions", runtime: "Runtime") -> Path:
    """Where ``fit`` keeps its checkpoint: named by everything the fit depends on.

    The checkpoint itself refuses other layers or SVI settings, but not another prior (a
    prior may be any callable); naming the file by the options means ``fit --prior 0.5``
    after an interrupted ``fit --prior 1`` starts afresh instead of resuming the wrong fit.
    """
    import hashlib
    import json

    identity = {**_jsonable(dataclasses.replace(options, fit=dataclasses.replace(options.fit, progress=False, epochs=1))),
                "seed": runtime.seed}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return run.path / f".fit-checkpoint-{digest}.pt"


def prune_step(run: RunDirectory, runtime: Runtime, options: PruneOptions) -> dict[str, Any]:
    """Prune the baseline by posterior mean to the target; write ``pruned-before-finetune.{safetensors,json}``."""
    from models import get_model_entry
    from pyro_dirichlet.allocation import budget_counts
    from pyro_dirichlet.importance import posterior_mean

    with Stopwatch() as watch:
        run.record("train")
        run.record("fit")
        check_writable(run.path)
        manifest = run.manifest()
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        network = load_baseline(run).to(device)
        example = data.train.images[:2].to(device)
        posterior = load_posterior(run.path / POSTERIOR)
        scores = posterior_mean(posterior)
        if options.keep is not None:
            target = dict(options.keep)
        elif options.budget is not None:
            target = budget_counts(network, scores, example, budget=options.budget, cost=options.budget_cost)
        else:
            default = get_model_entry(manifest["model"]).default_keep
            target = {layer: count for layer, count in default.items() if layer in scores}
        pruned, keep = prune_by_posterior_mean(network, posterior, target, example)
        widths = {layer: len(score) for layer, score in scores.items()}
        architecture = {layer: len(keep.get(layer, range(width))) for layer, width in widths.items()}
        result = {
            "target": target,
            "architecture": architecture,
            "kept_channels": keep,
            "params": count_parameters(pruned),
            "flops": count_flops(pruned, example),
            "test_accuracy_before_finetune": accuracy(pruned, data.test, device=device),
        }
        _say(runtime, f"pruned to {architecture}: {result['params']:,} parameters, {result['flops']:,} FLOPs, "
                      f"test accuracy {result['test_accuracy_before_finetune']:.4f} before fine-tuning")
        with run.stage() as staging:
            save_pruned(pruned.cpu(), staging / PRUNED_BEFORE_FINETUNE, metadata=_pruned_metadata(manifest, architecture))
            return run.commit("prune", staging, config={**_jsonable(options), **_jsonable(runtime)},
                              result=result, seconds=watch.elapsed)["steps"]["prune"]


def finetune_step(run: RunDirectory, runtime: Runtime, options: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune the pruned network; write ``pruned.{safetensors,json}`` (loadable with :func:`load_pruned`)."""
    with Stopwatch() as watch:
        pruned_record = run.record("prune")
        check_writable(run.path)
        manifest = run.manifest()
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        model = load_pruned(run.path / PRUNED_BEFORE_FINETUNE).to(device)
        tuning = finetune(model, data, epochs=options.epochs, lr=options.lr, seed=runtime.seed, device=str(device),
                          progress=runtime.progress)
        model.eval()
        result = {
            "params": count_parameters(model),
            "flops": count_flops(model, data.train.images[:2].to(device)),
            "test_accuracy": accuracy(model, data.test, device=device),
            "validation_accuracy": accuracy(model, data.validation, device=device),
            "finetune_epochs": options.epochs,
            "finetune_lr": options.lr,
            "finetune": tuning.to_dict(),
        }
        before = pruned_record["result"]["test_accuracy_before_finetune"]
        _say(runtime, f"fine-tuned for {options.epochs} epochs: test accuracy {before:.4f} -> {result['test_accuracy']:.4f}")
        with run.stage() as staging:
            architecture = pruned_record["result"]["architecture"]
            save_pruned(model.cpu(), staging / PRUNED, metadata=_pruned_metadata(manifest, architecture))
            return run.commit("finetune", staging, config={**_jsonable(options), **_jsonable(runtime)},
                              result=result, seconds=watch.elapsed)["steps"]["finetune"]


def load_run_data(run: RunDirectory, runtime: Runtime) -> DataSplits:
    """The run's data set, cut as the train step cut it."""
    manifest = run.manifest()
    return _cut(load_dataset(manifest["dataset"], runtime.data_dir), manifest["data"])


def load_baseline(run: RunDirectory) -> nn.Module:
    """The run's trained baseline, in eval mode on the CPU."""
    from models import get_model_entry
    from models.baseline import load_checkpoint

    run.record("train")
    state, _ = load_checkpoint(run.path / BASELINE)
    network = get_model_entry(run.manifest()["model"]).build()
    network.load_state_dict(state)
    return network.eval()


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


def _cut(data: DataSplits, record: dict[str, Any]) -> DataSplits:
    """Seeded subsets for smoke runs: ``subset`` training examples, a quarter of that for validation and test."""
    size = record.get("subset")
    if size is None:
        return data
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"subset must be an integer of at least 8 training examples, got {size!r}.")
    small = max(2, size // 4)
    return data.subset(train=size, validation=small, test=small, seed=record["subset_seed"])


def _pruned_metadata(manifest: dict[str, Any], architecture: dict[str, int]) -> dict[str, Any]:
    return {"model": manifest["model"], "dataset": manifest["dataset"], "architecture": architecture}


def _jsonable(options: Any) -> dict[str, Any]:
    """A step's options for the manifest: paths as strings, tuples as lists; progress is display only."""
    record = asdict(options)
    record.pop("progress", None)
    if isinstance(record.get("fit"), dict):
        record["fit"].pop("progress", None)
    return {key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
            for key, value in record.items()}


def _say(runtime: Runtime, message: str) -> None:
    if runtime.progress:
        print(message, flush=True)
