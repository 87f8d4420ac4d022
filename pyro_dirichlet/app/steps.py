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
import os
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pyro_dirichlet.cpu_threads import step_threads
from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.data.catalog import is_user_source
from pyro_dirichlet.io.factories import is_factory_path
from pyro_dirichlet.repair.train import TrainConfig, finetune, train_classifier
from pyro_dirichlet.data.imagefolder import ImageFolderSplits
from pyro_dirichlet.app.sources import FactoryBaseline, check_outputs, check_recorded_dataset, load_data, run_model, train_model
from pyro_dirichlet.app.user_inputs import data_notes
from pyro_dirichlet.app.data_identity import check_same_data, data_identity
from pyro_dirichlet.infer.distributed import DataParallel, init_from_environment
from pyro_dirichlet.devices import resolve_device
from pyro_dirichlet.infer.convergence import FitNotConvergedWarning
from pyro_dirichlet.infer.fit import FitDivergedError, fit
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, count_parameters
from pyro_dirichlet.planning.plan import per_layer
from pyro_dirichlet.precision import resolve_precision
from pyro_dirichlet.posterior import LayerSummary, layer_summaries, load_posterior, save_posterior
from pyro_dirichlet.pruner import Pruner
from pyro_dirichlet.pruning import switch_scales
from pyro_dirichlet.app.prior_model import load_prior_model
from pyro_dirichlet.app.rundir import RunDirectory, RunDirectoryError, check_writable, file_sha256, reading, writing
from pyro_dirichlet.io.regular_files import check_regular
from pyro_dirichlet.io.serialization import load_pruned, save_pruned
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.structure import COUPLING_POLICIES, PrunableLayer
from pyro_dirichlet.structure.naming import CLI_SPELLING

if TYPE_CHECKING:
    import xarray as xr

    from pyro_dirichlet.infer.priors import PriorModel

__all__ = [
    "Runtime",
    "TrainOptions",
    "FitOptions",
    "PruneOptions",
    "FinetuneOptions",
    "BASELINE",
    "POSTERIOR",
    "PRUNED_BEFORE_FINETUNE",
    "PRUNED",
    "train_step",
    "fit_step",
    "prune_step",
    "finetune_step",
    "locked_step",
    "load_run_data",
    "load_baseline",
    "run_model",
    "load_run_pruned",
    "load_run_posterior",
    "format_layer_summary",
]

#: File names in the run directory, by the step that writes them.
BASELINE = "baseline.safetensors"  # train
POSTERIOR = "posterior.nc"  # fit
#: Written every this many SVI steps while ``fit`` runs, so Ctrl-C or a crash loses little.
FIT_CHECKPOINT_EVERY = 50
PRUNED_BEFORE_FINETUNE = "pruned-before-finetune"  # prune: .safetensors + .json
PRUNED = "pruned"  # finetune: .safetensors + .json
#: What ``prune`` keeps of each switched layer of a user's network when given neither --keep nor --budget.
FACTORY_KEEP_FRACTION = 0.5
from pyro_dirichlet.app.options import (  # noqa: E402 - the options live in their own module
    FinetuneOptions, FitOptions, PruneOptions, Runtime, TrainOptions,
)


def _cli_spelling(reason: str) -> str:
    """A structure message with its Python option spellings (``coupled='group'``) as CLI flags (``--coupled group``)."""
    for policy in COUPLING_POLICIES:
        reason = reason.replace(f"coupled='{policy}'", f"--coupled {policy}")
    return reason.replace("on_unsupported='skip'", "--on-unsupported skip")


def locked_step(step: Callable[[RunDirectory, Runtime, Any], dict[str, Any]]) -> Callable[[RunDirectory, Runtime, Any], dict[str, Any]]:
    """Run ``step`` holding the run directory's lock (no other command changes the directory
    meanwhile), on the threads :func:`~pyro_dirichlet.cpu_threads.step_threads` chooses as it starts."""

    @functools.wraps(step)
    def locked(run: RunDirectory, runtime: Runtime, *arguments: Any, **keywords: Any) -> dict[str, Any]:
        with run.lock(), step_threads(runtime.threads):
            return step(run, runtime, *arguments, **keywords)

    return locked


@locked_step
def train_step(run: RunDirectory, runtime: Runtime, options: TrainOptions) -> dict[str, Any]:
    """Train (or take from the cache, or from ``--weights``) the baseline; store it as ``baseline.safetensors``.

    Starts the run: the manifest records the model (a registered name, or a factory path
    with its arguments), the weights' SHA-256, the data set and the data cut every later step uses.
    """
    from pyro_dirichlet.baselines.trained import save_checkpoint

    factory, entry = train_model(options)
    check_writable(run.path)
    with Stopwatch() as watch:
        device = resolve_device(runtime.device)
        precision = resolve_precision(runtime.precision, device)
        # The model and its weights are checked before the data are read: a wrong path fails in a second.
        torch.manual_seed(runtime.seed)
        network = factory.build() if factory is not None else entry.build() if options.weights is not None else None
        weights = None if options.weights is None else _load_given_weights(network, options, runtime)
        data_record: dict[str, Any] = {"subset": options.subset, "subset_seed": runtime.seed}
        if is_user_source(options.dataset):
            data_record.update(image_size=options.image_size,
                               normalize=None if options.normalize is None else options.normalize.to_dict(),
                               **({"validation_dir": str(options.validation_dir.absolute())} if options.validation_dir else {}))
        data = load_data(options.dataset, runtime.data_dir, data_record)
        for note in data_notes(options, data):
            _say(runtime, note)
        example = data.train.images[:2].to(device)
        network, recipe, baseline = _baseline(network, entry, options, runtime, data, example, weights=weights,
                                              precision=precision, device=device)
        result = _baseline_result(network, data, example, weights=weights, baseline=baseline,
                                  precision=precision, device=device)
        if baseline is not None and baseline.train_result is not None:
            result["seconds_per_epoch"] = statistics.median(baseline.train_result.seconds_per_epoch)
            result["epochs"] = baseline.train_result.epochs
            result["training"] = baseline.train_result.to_dict()
        _say(runtime, f"baseline {options.model}: test accuracy {result['test_accuracy']:.4f}, "
                      f"{result['params']:,} parameters, {result['flops']:,} FLOPs")
        if isinstance(data, ImageFolderSplits) and data.normalization is not None:
            # What was used, measured or given: later steps normalise with exactly these values.
            data_record["normalize"] = data.normalization.to_dict()
        identity = {
            "model": options.model,
            "dataset": data.name if is_user_source(options.dataset) else options.dataset,
            # What was read (class list, file-list digest, label count, split sizes): later steps refuse other data.
            "data": {**data_record, "source": data.source or data.name, **data_identity(data)},
            **({"model_args": dict(factory.args)} if factory is not None else {}),
            **({"weights": weights} if weights is not None else {}),
        }
        metadata = {**(baseline.metadata if baseline is not None else {}), "model": options.model,
                    **{key: identity[key] for key in ("model_args", "weights") if key in identity}}
        with writing(run.path), run.stage() as staging:
            save_checkpoint(staging / BASELINE, network, metadata)
            config = {**_jsonable(options), **_jsonable(runtime), "train": None if recipe is None else recipe.to_dict()}
            return run.commit("train", staging, config=config, result=result, seconds=watch.elapsed,
                              identity=identity)["steps"]["train"]


def _load_given_weights(network: nn.Module, options: TrainOptions, runtime: Runtime) -> dict[str, str]:
    """Load ``--weights`` into ``network``, saying what the loading noticed; the file and its SHA-256."""
    from pyro_dirichlet.io.weights import load_weights

    notes: list[str] = []
    load_weights(network, options.weights, key=options.weights_key, notes=notes)
    for note in notes:
        _say(runtime, note)
    return {"file": str(Path(options.weights).absolute()), "sha256": file_sha256(Path(options.weights))}


def _baseline(
    network: nn.Module | None, entry: Any, options: TrainOptions, runtime: Runtime, data: Any, example: torch.Tensor,
    *, weights: dict[str, str] | None, precision: str, device: torch.device,
) -> tuple[nn.Module, TrainConfig | None, Any]:
    """The baseline network in eval mode on ``device``, the recipe it was trained with (``None`` for
    given weights) and, unless the weights were given, its baseline record (trained now or from the cache)."""
    from pyro_dirichlet.baselines import load_or_train_baseline  # the application layer: the pipeline stays model-agnostic

    recipe, baseline = None, None
    if network is not None:
        check_outputs(network.to(device), example, options, data)
        if weights is None:
            recipe = TrainConfig(**{"seed": runtime.seed, "precision": precision, "compile": runtime.compile,
                                    **({"epochs": options.train_epochs} if options.train_epochs else {})})
            trained = train_classifier(network, data, recipe, device=device, progress=runtime.progress)
            baseline = FactoryBaseline(trained)
    else:
        recipe = dataclasses.replace(entry.train, precision=precision, compile=runtime.compile,
                                     **({} if options.train_epochs is None else {"epochs": options.train_epochs}))
        baseline = load_or_train_baseline(
            options.model, data, device=str(device), cache_dir=options.cache_dir, seed=runtime.seed,
            progress=runtime.progress, train_config=recipe,
        )
        network = baseline.model
    return network.to(device).eval(), recipe, baseline


def _baseline_result(
    network: nn.Module, data: Any, example: torch.Tensor, *, weights: dict[str, str] | None, baseline: Any,
    precision: str, device: torch.device,
) -> dict[str, Any]:
    """What the train step records of the baseline: accuracies, costs, and where it came from."""
    return {
        "test_accuracy": accuracy(network, data.test, device=device, precision=precision),
        "validation_accuracy": accuracy(network, data.validation, device=device, precision=precision),
        "precision": precision,
        "params": count_parameters(network),
        "flops": count_flops(network, example),
        "trained_in_this_run": baseline is not None and baseline.trained_now,
        "baseline_source": "weights" if weights is not None else "trained" if baseline.trained_now else "cache",
    }


@locked_step
def fit_step(run: RunDirectory, runtime: Runtime, options: FitOptions, *, prior_model: PriorModel | None = None) -> dict[str, Any]:
    """Fit the switch posterior of the run's baseline; write ``posterior.nc``.

    The forest plots are drawn by ``report``, one per layer: drawing them here cost the fit
    about 2 s of matplotlib for a figure the report redraws anyway.

    ``prior_model``: ``options.prior_model`` already imported (``run`` imports it before training);
    else this step imports it. ``run.json`` records the prior the switches were given: the
    concentration, or ``prior`` null and the prior model's name.
    """
    with Stopwatch() as watch:
        run.record("train")
        check_writable(run.path)
        checkpoint = fit_checkpoint_path(run, options, runtime)
        if os.path.lexists(checkpoint):  # a link or a FIFO is refused before any work, never followed
            check_regular(checkpoint, what="fit checkpoint", follow_links=False)
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        network = load_baseline(run, runtime).to(device)
        example = data.train.images[:2].to(device)
        prior = options.prior if options.prior_model is None else prior_model or load_prior_model(options.prior_model)
        switches = DirichletSwitches(network, example, layers=options.layers, prior=prior,
                                     coupled=options.coupled, on_unsupported=options.on_unsupported,
                                     gain=options.gain)
        # Every layer left unswitched, and why, for the report (the classifier, coupled
        # channels, and under on_unsupported="skip" the layers the analysis cannot follow).
        # The reasons spell options the way the command line does (--coupled group).
        skipped = [{"layer": s.name, "reason": _cli_spelling(s.reason), "unsupported": s.unsupported}
                   for s in switches.layers.skipped]
        precision = resolve_precision(runtime.precision, device)
        fit_config = dataclasses.replace(options.fit, seed=runtime.seed, device=str(device), progress=runtime.progress, precision=precision)
        if fit_config.checkpoint_every is None:
            fit_config = dataclasses.replace(fit_config, checkpoint_every=FIT_CHECKPOINT_EVERY)
        if os.path.lexists(checkpoint):
            _usable_checkpoint(checkpoint)
        if checkpoint.exists():
            _say(runtime, f"resuming the fit from {checkpoint}")
        # Under torchrun every rank fits on its shard of each minibatch and ends with the
        # same guide; rank 0 alone writes the run directory.
        init_from_environment()
        parallel = DataParallel.current()
        try:
            with writing(checkpoint), warnings.catch_warnings():
                # The advice goes to stderr once, below, as the CLI's own sentence.
                warnings.simplefilter("ignore", FitNotConvergedWarning)
                result = fit(switches, data.train, fit_config, checkpoint=checkpoint)
        except FitDivergedError:
            # The same command would only resume into the same divergence.
            checkpoint.unlink(missing_ok=True)
            raise
        if parallel is not None and not parallel.is_main:
            return {"rank": parallel.rank, "result": result.to_dict()}
        posterior = result.posterior(seed=runtime.seed, validation=data.validation if options.predictive_images else None,
                                     predictive_draws=options.predictive_draws, validation_size=options.predictive_images)
        _say(runtime, f"SVI: {result.steps} steps in {result.seconds:.1f} s, final ELBO {result.elbo[-1]:.4g}")
        if result.convergence is not None:
            _say(runtime, result.convergence.describe())
            advice = result.convergence.advice()
            if advice is not None:
                print(f"pyro-dirichlet: warning: {advice}", file=sys.stderr, flush=True)
        if runtime.progress:
            # Only to print them: the HDIs need arviz_stats, whose import (scipy.stats with
            # it) was 0.7 s of a 21 s LeNet-5 refit, spent for nothing under --quiet.
            for summary in layer_summaries(posterior, ci_prob=options.ci_prob).values():
                _say(runtime, format_layer_summary(summary))
        with writing(run.path), run.stage() as staging:
            save_posterior(posterior, staging / POSTERIOR)
            config = {**_jsonable(dataclasses.replace(options, fit=fit_config)), **_jsonable(runtime),
                      **({"prior": None} if options.prior_model is not None else {})}  # a prior model replaced it
            record = run.commit("fit", staging, config=config, result={**result.to_dict(), "skipped_layers": skipped,
                                                                       "precision": precision},
                                seconds=watch.elapsed)["steps"]["fit"]
        # The posterior is in place; the checkpoint only served to resume this fit.
        checkpoint.unlink(missing_ok=True)
        return record


def _usable_checkpoint(path: Path) -> None:
    """Remove a checkpoint that cannot be read (a crash while it was written, a full disk) so the fit starts over.

    A warning on stderr says so: otherwise every rerun of ``fit`` would fail on it forever.
    """
    from pyro_dirichlet.infer.checkpoint import FitCheckpoint

    # A link or a FIFO someone put there is refused, neither followed nor removed.
    check_regular(path, what="fit checkpoint", follow_links=False)
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


@locked_step
def prune_step(run: RunDirectory, runtime: Runtime, options: PruneOptions) -> dict[str, Any]:
    """Prune the baseline by posterior mean to the target; write ``pruned-before-finetune.{safetensors,json}``."""
    from pyro_dirichlet.baselines import get_model_entry
    from pyro_dirichlet.posterior import layer_gains

    with Stopwatch() as watch:
        run.record("train")
        run.record("fit")
        check_writable(run.path)
        manifest = run.manifest()
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        network = load_baseline(run, runtime).to(device)
        example = data.train.images[:2].to(device)
        # The one trace of the network: its layers serve the posterior's check, the plan, the cut
        # and the decision check. Skip mode, as the posterior is checked: it names the switched layers.
        pruner = Pruner(network, example, coupled="group", on_unsupported="skip")
        posterior = load_run_posterior(run, network, example, pruner.layers)
        scores = pruner.score(posterior)
        if isinstance(options.keep, dict):
            target = dict(options.keep)  # its names are checked by the plan, in the CLI's spelling
        elif options.keep is not None:
            target = per_layer(options.keep, scores)
        elif options.budget is not None:
            target = pruner.counts(scores, budget=options.budget, cost=options.budget_cost)
        elif is_factory_path(manifest["model"]):
            # A user's network has no documented target: half of every switched layer's channels.
            target = {layer: FACTORY_KEEP_FRACTION for layer in scores}
        else:
            default = get_model_entry(manifest["model"]).default_keep
            target = {layer: count for layer, count in default.items() if layer in scores}
        keep = pruner.plan(scores, target, spelling=CLI_SPELLING)
        gains = layer_gains(posterior)
        pruned = pruner.cut(keep, switch_scales(scores, gains))
        precision = resolve_precision(runtime.precision, device)
        widths = {layer: len(score) for layer, score in scores.items()}
        architecture = {layer: len(keep.get(layer, range(width))) for layer, width in widths.items()}
        result = {
            "target": target,
            "architecture": architecture,
            "kept_channels": keep,
            "params": count_parameters(pruned),
            "flops": count_flops(pruned, example),
            "test_accuracy_before_finetune": accuracy(pruned, data.test, device=device, precision=precision),
            "precision": precision,
        }
        _say(runtime, f"pruned to {architecture}: {result['params']:,} parameters, {result['flops']:,} FLOPs, "
                      f"test accuracy {result['test_accuracy_before_finetune']:.4f} before fine-tuning")
        if options.check:
            from pyro_dirichlet.app.decision import check_prune_decision

            result["decision_check"] = check_prune_decision(network, keep, scores, gains, data, example, seed=runtime.seed,
                                                            say=functools.partial(_say, runtime), layers=pruner.layers)
        with writing(run.path), run.stage() as staging:
            save_pruned(pruned.cpu(), staging / PRUNED_BEFORE_FINETUNE, metadata=_pruned_metadata(manifest, architecture, data),
                        factory=run_model(run, runtime)[1])
            return run.commit("prune", staging, config={**_jsonable(options), **_jsonable(runtime)},
                              result=result, seconds=watch.elapsed)["steps"]["prune"]


@locked_step
def finetune_step(run: RunDirectory, runtime: Runtime, options: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune the pruned network; write ``pruned.{safetensors,json}`` (loadable with :func:`load_pruned`)."""
    with Stopwatch() as watch:
        pruned_record = run.record("prune")
        try:  # read now: a record edited by hand must fail before the fine-tune's work, not after it
            architecture = pruned_record["result"]["architecture"]
            before = float(pruned_record["result"]["test_accuracy_before_finetune"])
        except (KeyError, TypeError, ValueError):
            raise RunDirectoryError(f"{run.manifest_path}'s prune step lacks its 'architecture' or test accuracy: "
                                    f"redo it with `pyro-dirichlet prune --run {run.path}`.") from None
        check_writable(run.path)
        manifest = run.manifest()
        device = resolve_device(runtime.device)
        data = load_run_data(run, runtime)
        model = load_run_pruned(run, PRUNED_BEFORE_FINETUNE, runtime).to(device)
        # The teacher is the network the pruned one was cut from, read afresh: it shares no weight with it.
        teacher = load_baseline(run, runtime) if options.distillation > 0 else None
        precision = resolve_precision(runtime.precision, device)
        tuning = finetune(model, data, epochs=options.epochs, lr=options.lr, seed=runtime.seed, device=str(device),
                          progress=runtime.progress, teacher=teacher, distillation=options.distillation, precision=precision,
                          compile=runtime.compile)
        model.eval()
        result = {
            "params": count_parameters(model),
            "flops": count_flops(model, data.train.images[:2].to(device)),
            "test_accuracy": accuracy(model, data.test, device=device, precision=precision),
            "validation_accuracy": accuracy(model, data.validation, device=device, precision=precision),
            "precision": precision,
            "finetune_epochs": options.epochs,
            "finetune_lr": options.lr,
            "finetune_distillation": options.distillation,
            "finetune": tuning.to_dict(),
        }
        _say(runtime, f"fine-tuned for {options.epochs} epochs: test accuracy {before:.4f} -> {result['test_accuracy']:.4f}")
        with writing(run.path), run.stage() as staging:
            save_pruned(model.cpu(), staging / PRUNED, metadata=_pruned_metadata(manifest, architecture, data),
                        factory=run_model(run, runtime)[1])
            return run.commit("finetune", staging, config={**_jsonable(options), **_jsonable(runtime)},
                              result=result, seconds=watch.elapsed)["steps"]["finetune"]


def load_run_data(run: RunDirectory, runtime: Runtime) -> DataSplits:
    """The run's data set, cut (and for a user's images resized and normalised) as the train step did.

    Raises:
        RunDirectoryError: the data are not those the train step read (:func:`check_same_data`).
    """
    manifest = check_recorded_dataset(run)
    data = load_data(manifest["dataset"], runtime.data_dir, manifest["data"])
    check_same_data(manifest["dataset"], manifest["data"], data)
    return data


def load_run_pruned(run: RunDirectory, stem: str, runtime: Runtime | None = None) -> nn.Module:
    """A pruned network the run holds (``stem``.json and .safetensors), checked against the manifest's SHA-256."""
    _, factory = run_model(run, runtime)
    run.input(f"{stem}.json")
    path = run.input(f"{stem}.safetensors")
    with reading(f"{run.path / stem}.json (with {stem}.safetensors)"):
        network = load_pruned(run.path / stem, factory=None if factory is None else factory.function)
    _check_finite(network, path)
    return network


def load_baseline(run: RunDirectory, runtime: Runtime | None = None) -> nn.Module:
    """The run's trained baseline, in eval mode on the CPU, its weights checked to be finite.

    A user's model is built by the factory ``runtime.factory`` names (see :func:`run_model`).
    """
    from pyro_dirichlet.baselines.trained import load_checkpoint

    build, _ = run_model(run, runtime)
    path = run.input(BASELINE)
    with reading(path):
        state, _ = load_checkpoint(path)
        network = build()
        network.load_state_dict(state)
    _check_finite(network, path)
    return network.eval()


def load_run_posterior(
    run: RunDirectory, network: nn.Module, example: torch.Tensor, layers: Sequence[PrunableLayer] | None = None
) -> xr.DataTree:
    """The run's posterior, checked against the network it was fitted to.

    Every variable must be ``LAYER.switch`` of a prunable layer of ``network`` with one
    channel coordinate per output channel, and every draw a point of the simplex (finite,
    non-negative, summing to 1), or a latent site of the prior (a variable of the ``prior``
    group too). ``layers``: the network's prunable layers as ``find_prunable_layers(network,
    example, coupled="group", on_unsupported="skip")`` finds them, if the caller has them
    (the prune step's :class:`~pyro_dirichlet.Pruner`); None traces the network here.

    Raises:
        RunDirectoryError: naming ``posterior.nc`` and what is wrong with it.
    """
    from pyro_dirichlet.posterior import channel_dim
    from pyro_dirichlet.structure import find_prunable_layers

    path = run.input(POSTERIOR)
    with reading(path):
        posterior = load_posterior(path)
        variables = dict(posterior["posterior"].data_vars)
    # A prior model's own latent sites (a shared concentration) sit beside the switches, in
    # the prior group as well; any other variable is no part of a fit.
    prior = set(posterior["prior"].data_vars) if "prior" in posterior.children else set()
    variables = {name: draws for name, draws in variables.items() if name.endswith(".switch") or name not in prior}
    if not variables:
        raise RunDirectoryError(f"{path} holds no switch variables.")
    # Skip mode: the posterior names the layers; one the analysis cannot follow is not among them.
    if layers is None:
        layers = find_prunable_layers(network, example, coupled="group", on_unsupported="skip")
    widths = {layer.name: layer.channels for layer in layers}
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
    from pyro_dirichlet.posterior.fitted import check_variational

    try:
        check_variational(posterior)
    except ValueError as error:
        raise RunDirectoryError(f"{path}: {str(error).rstrip('.')}: refit with `pyro-dirichlet fit`.") from None
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


def _pruned_metadata(manifest: dict[str, Any], architecture: dict[str, int], data: DataSplits) -> dict[str, Any]:
    """What pruned.json records: the model, its widths, and what a deployment needs (:mod:`pyro_dirichlet.io.deployment`)."""
    from pyro_dirichlet.io.deployment import deployment_metadata

    return {"model": manifest["model"], "dataset": manifest["dataset"], "architecture": architecture,
            **deployment_metadata(manifest, tuple(data.input_shape))}


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
