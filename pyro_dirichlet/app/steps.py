"""The steps of a run -- train, fit, prune, fine-tune -- each reading the run directory and writing its own files into it.

Each step is one function ``<step>_step(run, runtime, options) -> record`` and one small
options dataclass. A step loads what earlier steps wrote (the baseline, the posterior, the
pruned network), does its work, and commits its files and its record to the run
directory's manifest all at once (:class:`pyro_dirichlet.app.rundir.RunDirectory`). The report
is its own module (:mod:`pyro_dirichlet.app.report`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from pyro_dirichlet.data import DataSplits, load_dataset
from pyro_dirichlet.train import DEFAULT_EPOCHS, DEFAULT_LR, finetune
from pyro_dirichlet.infer.distributed import DataParallel, init_from_environment
from pyro_dirichlet.devices import resolve_device
from pyro_dirichlet.infer.fit import FitConfig, FitDivergedError, fit
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, count_parameters
from pyro_dirichlet.plan import Target
from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION
from pyro_dirichlet.posterior import DEFAULT_CI_PROB, LayerSummary, layer_summaries, load_posterior, plot_forest, save_posterior
from pyro_dirichlet.pruning import prune_by_posterior_mean
from pyro_dirichlet.app.rundir import RunDirectory, RunDirectoryError, check_writable, reading, writing
from pyro_dirichlet.serialization import load_pruned, save_pruned
from pyro_dirichlet.infer.switches import DirichletSwitches

if TYPE_CHECKING:
    import xarray as xr

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
    "load_run_pruned",
    "load_run_posterior",
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
    """

    data_dir: Path | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        _check_int("seed", self.seed, low=0, high=MAX_SEED)


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

    def __post_init__(self) -> None:
        if self.subset is not None:
            _check_int("subset", self.subset, low=MIN_SUBSET)
        if self.train_epochs is not None:
            _check_int("train_epochs", self.train_epochs, low=1)


@dataclass(frozen=True)
class FitOptions:
    """The switches and their fit.

    Attributes:
        layers: layers to switch and prune; ``None`` finds every conv and hidden linear layer.
        coupled: ``"skip"`` leaves channels coupled through residual adds unpruned,
            ``"group"`` gives each coupling group one shared switch.
        on_unsupported: ``"raise"`` refuses a network with layers whose channels the
            structure analysis cannot follow, listing them all; ``"skip"`` prunes the others
            (the fit records the skipped layers and why, and the report lists them).
        prior: symmetric Dirichlet prior concentration of every switch.
        fit: the SVI settings (seed, device and progress come from :class:`Runtime`).
        ci_prob: probability mass of the printed HDIs.
    """

    layers: tuple[str, ...] | None = None
    coupled: str = "skip"
    on_unsupported: str = "raise"
    prior: float = DEFAULT_CONCENTRATION
    fit: FitConfig = field(default_factory=FitConfig)
    ci_prob: float = DEFAULT_CI_PROB

    def __post_init__(self) -> None:
        _check_number("prior", self.prior, low=0, finite=True)
        _check_probability("ci_prob", self.ci_prob)
        if self.coupled not in ("skip", "group"):
            raise ValueError(f"coupled must be 'skip' or 'group', got {self.coupled!r}.")
        if self.on_unsupported not in ("raise", "skip"):
            raise ValueError(f"on_unsupported must be 'raise' or 'skip', got {self.on_unsupported!r}.")
        if self.layers is not None and (not self.layers or not all(isinstance(n, str) and n for n in self.layers)):
            raise ValueError(f"layers must be None or a non-empty list of layer names, got {self.layers!r}.")
        if not isinstance(self.fit, FitConfig):
            raise TypeError(f"fit must be a FitConfig, got {type(self.fit).__name__}.")


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
        if self.keep is not None:
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
        if self.budget_cost not in ("flops", "params"):
            raise ValueError(f"budget_cost must be 'flops' or 'params', got {self.budget_cost!r}.")
        if self.keep is not None and self.budget is not None:
            raise ValueError("keep and budget both set: give per-layer counts (--keep) or a global budget (--budget), not both.")


@dataclass(frozen=True)
class FinetuneOptions:
    """Fine-tuning of the pruned network (Adam, cosine schedule, best validation epoch).

    Attributes:
        epochs: 0 keeps the pruned network as it is (default: see
            :data:`pyro_dirichlet.train.DEFAULT_EPOCHS` for how it was chosen).
        lr: peak learning rate (:data:`pyro_dirichlet.train.DEFAULT_LR`).
    """

    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, low=0)
        _check_number("lr", self.lr, low=0, finite=True)


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


def _locked(step: Callable[[RunDirectory, Runtime, Any], dict[str, Any]]) -> Callable[[RunDirectory, Runtime, Any], dict[str, Any]]:
    """Run ``step`` holding the run directory's lock: no other command changes the directory meanwhile."""

    @functools.wraps(step)
    def locked(run: RunDirectory, runtime: Runtime, options: Any) -> dict[str, Any]:
        with run.lock():
            return step(run, runtime, options)

    return locked


@_locked
def train_step(run: RunDirectory, runtime: Runtime, options: TrainOptions) -> dict[str, Any]:
    """Train (or take from the cache) the baseline and store it in the run directory as ``baseline.safetensors``.

    Starts the run: the manifest records the model, data set and data cut every later step uses.
    """
    from pyro_dirichlet.models import get_model_entry, load_or_train_baseline  # the application layer: library stays model-agnostic
    from pyro_dirichlet.models.baseline import save_checkpoint

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
        with writing(run.path), run.stage() as staging:
            save_checkpoint(staging / BASELINE, network, {**baseline.metadata, "model": options.model})
            return run.commit("train", staging, config={**_jsonable(options), **_jsonable(runtime), "train": recipe.to_dict()},
                              result=result, seconds=watch.elapsed, identity=identity)["steps"]["train"]


@_locked
def fit_step(run: RunDirectory, runtime: Runtime, options: FitOptions) -> dict[str, Any]:
    """Fit the switch posterior of the run's baseline; write ``posterior.nc`` and ``forest.png``."""
    with Stopwatch() as watch:
        run.record("train")
        check_writable(run.path)
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        network = load_baseline(run).to(device)
        example = data.train.images[:2].to(device)
        switches = DirichletSwitches(network, example, layers=options.layers, prior=options.prior,
                                     coupled=options.coupled, on_unsupported=options.on_unsupported)
        # Every layer left unswitched, and why, for the report (the classifier, coupled
        # channels, and under on_unsupported="skip" the layers the analysis cannot follow).
        skipped = [{"layer": s.name, "reason": s.reason, "unsupported": s.unsupported} for s in switches.layers.skipped]
        fit_config = dataclasses.replace(options.fit, seed=runtime.seed, device=str(device), progress=runtime.progress)
        if fit_config.checkpoint_every is None:
            fit_config = dataclasses.replace(fit_config, checkpoint_every=FIT_CHECKPOINT_EVERY)
        checkpoint = fit_checkpoint_path(run, options, runtime)
        if checkpoint.exists():
            _usable_checkpoint(checkpoint)
        if checkpoint.exists():
            _say(runtime, f"resuming the fit from {checkpoint}")
        # Under torchrun every rank fits on its shard of each minibatch and ends with the
        # same guide; rank 0 alone writes the run directory.
        init_from_environment()
        parallel = DataParallel.current()
        try:
            with writing(checkpoint):
                result = fit(switches, data.train, fit_config, checkpoint=checkpoint)
        except FitDivergedError:
            # The same command would only resume into the same divergence.
            checkpoint.unlink(missing_ok=True)
            raise
        if parallel is not None and not parallel.is_main:
            return {"rank": parallel.rank, "result": result.to_dict()}
        posterior = result.posterior(seed=runtime.seed, validation=data.validation)
        _say(runtime, f"SVI: {result.steps} steps in {result.seconds:.1f} s, final ELBO {result.elbo[-1]:.4g}")
        for summary in layer_summaries(posterior, ci_prob=options.ci_prob).values():
            _say(runtime, format_layer_summary(summary))
        with writing(run.path), run.stage() as staging:
            save_posterior(posterior, staging / POSTERIOR)
            plot_forest(posterior, staging / FOREST, ci_prob=options.ci_prob)
            config = {**_jsonable(dataclasses.replace(options, fit=fit_config)), **_jsonable(runtime)}
            record = run.commit("fit", staging, config=config, result={**result.to_dict(), "skipped_layers": skipped},
                                seconds=watch.elapsed)["steps"]["fit"]
        # The posterior is in place; the checkpoint only served to resume this fit.
        checkpoint.unlink(missing_ok=True)
        return record


def _usable_checkpoint(path: Path) -> None:
    """Remove a checkpoint that cannot be read (a crash while it was written, a full disk) so the fit starts over.

    A warning on stderr says so: otherwise every rerun of ``fit`` would fail on it forever.
    """
    from pyro_dirichlet.infer.checkpoint import FitCheckpoint

    try:
        with reading(path):
            FitCheckpoint.load(path)
    except (ValueError, RunDirectoryError) as error:
        path.unlink(missing_ok=True)
        print(f"pyro-dirichlet: warning: {error}; removed it, the fit starts over.", file=sys.stderr, flush=True)


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


@_locked
def prune_step(run: RunDirectory, runtime: Runtime, options: PruneOptions) -> dict[str, Any]:
    """Prune the baseline by posterior mean to the target; write ``pruned-before-finetune.{safetensors,json}``."""
    from pyro_dirichlet.models import get_model_entry
    from pyro_dirichlet.allocation import budget_counts
    from pyro_dirichlet.posterior_criteria import posterior_mean

    with Stopwatch() as watch:
        run.record("train")
        run.record("fit")
        check_writable(run.path)
        manifest = run.manifest()
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        network = load_baseline(run).to(device)
        example = data.train.images[:2].to(device)
        posterior = load_run_posterior(run, network, example)
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
        with writing(run.path), run.stage() as staging:
            save_pruned(pruned.cpu(), staging / PRUNED_BEFORE_FINETUNE, metadata=_pruned_metadata(manifest, architecture))
            return run.commit("prune", staging, config={**_jsonable(options), **_jsonable(runtime)},
                              result=result, seconds=watch.elapsed)["steps"]["prune"]


@_locked
def finetune_step(run: RunDirectory, runtime: Runtime, options: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune the pruned network; write ``pruned.{safetensors,json}`` (loadable with :func:`load_pruned`)."""
    with Stopwatch() as watch:
        pruned_record = run.record("prune")
        check_writable(run.path)
        manifest = run.manifest()
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        model = load_run_pruned(run, PRUNED_BEFORE_FINETUNE).to(device)
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
        with writing(run.path), run.stage() as staging:
            architecture = pruned_record["result"]["architecture"]
            save_pruned(model.cpu(), staging / PRUNED, metadata=_pruned_metadata(manifest, architecture))
            return run.commit("finetune", staging, config={**_jsonable(options), **_jsonable(runtime)},
                              result=result, seconds=watch.elapsed)["steps"]["finetune"]


def load_run_data(run: RunDirectory, runtime: Runtime) -> DataSplits:
    """The run's data set, cut as the train step cut it."""
    manifest = run.manifest()
    return _cut(load_dataset(manifest["dataset"], runtime.data_dir), manifest["data"])


def load_run_pruned(run: RunDirectory, stem: str) -> nn.Module:
    """A pruned network the run holds (``stem``.json and .safetensors), checked against the manifest's SHA-256."""
    run.input(f"{stem}.json")
    path = run.input(f"{stem}.safetensors")
    with reading(f"{run.path / stem}.json (with {stem}.safetensors)"):
        network = load_pruned(run.path / stem)
    _check_finite(network, path)
    return network


def load_baseline(run: RunDirectory) -> nn.Module:
    """The run's trained baseline, in eval mode on the CPU, its weights checked to be finite."""
    from pyro_dirichlet.models import get_model_entry
    from pyro_dirichlet.models.baseline import load_checkpoint

    path = run.input(BASELINE)
    with reading(path):
        state, _ = load_checkpoint(path)
        network = get_model_entry(run.manifest()["model"]).build()
        network.load_state_dict(state)
    _check_finite(network, path)
    return network.eval()


def load_run_posterior(run: RunDirectory, network: nn.Module, example: torch.Tensor) -> xr.DataTree:
    """The run's posterior, checked against the network it was fitted to.

    Every variable must be ``LAYER.switch`` of a prunable layer of ``network`` with one
    channel coordinate per output channel, and every draw a point of the simplex (finite,
    non-negative, summing to 1).

    Raises:
        RunDirectoryError: naming ``posterior.nc`` and what is wrong with it.
    """
    from pyro_dirichlet.posterior import channel_dim
    from pyro_dirichlet.structure import find_prunable_layers

    path = run.input(POSTERIOR)
    with reading(path):
        posterior = load_posterior(path)
        variables = dict(posterior["posterior"].data_vars)
    if not variables:
        raise RunDirectoryError(f"{path} holds no switch variables.")
    # Skip mode: the posterior names the layers; one the analysis cannot follow is not among them.
    layers = {layer.name: layer for layer in find_prunable_layers(network, example, coupled="group", on_unsupported="skip")}
    widths = {name: layer.channels for name, layer in layers.items()}
    for name, draws in variables.items():
        layer = name.removesuffix(".switch")
        if not name.endswith(".switch") or layer not in widths:
            raise RunDirectoryError(f"{path} has a variable {name!r} that is no switch of a prunable layer of the "
                                    f"baseline (those are {', '.join(sorted(widths))}).")
        if draws.dims != ("chain", "draw", channel_dim(layer)) or draws.shape[-1] != widths[layer]:
            raise RunDirectoryError(f"{path}: {name} has dimensions {dict(draws.sizes)}, but layer {layer!r} has "
                                    f"{widths[layer]} channels.")
        values = np.asarray(draws.values, dtype=np.float64)
        if not np.isfinite(values).all() or (values < 0).any() or not np.allclose(values.sum(-1), 1.0, atol=1e-3):
            raise RunDirectoryError(f"{path}: the draws of {name} are not all points of the simplex (finite, "
                                    "non-negative, summing to 1): refit with `pyro-dirichlet fit`.")
    return posterior


def _check_finite(network: nn.Module, path: Path) -> None:
    """Non-finite weights make every later number meaningless (a fit diverges at its first step)."""
    for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunDirectoryError(f"{path} holds non-finite values in {name!r}: train the baseline again "
                                    "(`pyro-dirichlet train`) or restore the file.")


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
