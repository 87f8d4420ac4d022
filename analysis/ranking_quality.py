"""Does the posterior mean rank channels by importance? Measured against the removal-cost oracle.

For one trained network, every criterion ranks every channel of every prunable layer:
the posterior mean of each fit variant (:data:`VARIANTS`), L1-norm, Taylor, BatchNorm
|gamma| (where every layer has one) and random scores. Each ranking is judged by

- its Spearman correlation with the *removal cost* of each channel
  (:func:`pyro_dirichlet.criteria.removal_cost.removal_effects`: the validation-loss increase when
  that channel alone is zeroed), per layer and averaged over layers;
- its dead-unit recall: of the ``k`` inert channels (removing them changes no logit of any
  validation image), the share among its ``k`` lowest-ranked ones (1.0: all ranked last);
- the validation accuracy of the network pruned to 50% and 30% of its FLOPs (uniform
  per-layer counts, the same for every criterion) after the same calibration
  (:func:`pyro_dirichlet.repair.calibrate.calibrate`); test accuracy is recorded, never chosen on;

and each fit by its steps, wall time (also in units of one baseline training epoch on the
same data), ELBO change over its last fifth, and the overlap of its half-width kept sets
with those of a fit twice as long (the default variant only).

Networks: ``head-resnet`` (a BN ResNet with a ReLU MLP head, :mod:`pyro_dirichlet.models.head_resnet`,
trained here on 1,500 images of 5 CIFAR-10 classes: its head grows never-firing units),
``lenet5`` (MNIST, the demo's network), ``resnet20`` (CIFAR-10 JPEG copy, the committed
88.04% weights).

    python -m analysis.ranking_quality --network head-resnet --out analysis/results/ranking-quality
    python -m analysis.ranking_quality --network resnet20 --variants default paper --out ...

Each network writes ``<out>/<network>.json`` after every fit (a stopped run keeps what it measured).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pyro_dirichlet.planning.allocation import uniform_counts
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.io.cache import resolve_cache_dir
from pyro_dirichlet.repair.calibrate import CalibrationConfig, calibrate
from pyro_dirichlet.data import DataSplits, Split, load_dataset
from pyro_dirichlet.criteria import get_criterion
from pyro_dirichlet.infer.convergence import (
    FitNotConvergedWarning,
    StoppingRule,
    kept_overlap,
    kept_sets,
)
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer.switches import DirichletSwitches, gain_param
from pyro_dirichlet.measure import Stopwatch, accuracy
from pyro_dirichlet.pruner import Pruner
from pyro_dirichlet.pruning import switch_scales
from pyro_dirichlet.criteria.removal_cost import removal_effects
from pyro_dirichlet.repair.train import TrainConfig, train_classifier

__all__ = ["VARIANTS", "Variant", "dead_recall", "main", "spearman", "study"]


@dataclass(frozen=True)
class Variant:
    """One way to fit the switches: ``DirichletSwitches`` options and ``FitConfig`` overrides
    (``None``: the library's default)."""

    prior: float | None = None
    gain: str | None = None
    fit: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"prior": self.prior, "gain": self.gain, **self.fit}


#: The fit variants compared. ``default`` is the library's default model and fit at the
#: command line's precision (``auto``: bf16 autocast on this CPU); ``layer-gain-adam`` the
#: default before it (one gain per layer, Adam; fp32); ``paper`` the paper's one epoch (flat
#: prior, no gain). The others change one thing, and name every option that differs between
#: the two defaults, so each row stays what it was when the default changes.
_LAYER_ADAM = {"precision": "bf16", "optimizer": "layer-adam"}
VARIANTS: dict[str, Variant] = {
    "default": Variant(fit={"precision": "auto"}),
    "layer-gain-adam": Variant(gain="layer", fit={"optimizer": "adam"}),
    "paper": Variant(prior=1.0, gain="none", fit={"epochs": 1, "init_concentration": 1.0, "optimizer": "adam"}),
    # One learned scale per channel instead of per layer (bf16 autocast, as --precision auto here).
    "channel-gain": Variant(gain="channel", fit={"precision": "auto", "optimizer": "adam"}),
    # The earlier default's fit in bfloat16 autocast (2-3x faster here): does the ranking survive it?
    "layer-gain-adam-bf16": Variant(gain="layer", fit={"precision": "bf16", "optimizer": "adam"}),
    # Less gradient noise per step: four vectorised ELBO particles.
    "particles-4": Variant(gain="layer", fit={"precision": "bf16", "num_particles": 4, "optimizer": "adam"}),
    # The KL ten times heavier (the likelihood scaled to a tenth of the data): if the ranking
    # signal were the prior's pull against the likelihood, this would strengthen it. Not the real ELBO.
    "tempered-0.1": Variant(gain="layer", fit={"precision": "bf16", "effective_data_fraction": 0.1, "optimizer": "adam"}),
    # One step scale per layer instead of per channel (LayerAdam): channels move in
    # proportion to their pull, not all at about lr (bf16 autocast, as layer-gain-adam-bf16).
    "layer-adam": Variant(gain="layer", fit=_LAYER_ADAM),
    # Both changes: the default since they won (the default's configuration, named).
    "channel-gain-layer-adam": Variant(gain="channel", fit=_LAYER_ADAM),
    # Is layer-adam's ranking limited by the fit? The same fit for a fixed 3,000 steps (the same
    # total lr decay, spread), with a larger step, and from a noisier start.
    "layer-adam-3000": Variant(gain="layer", fit={**_LAYER_ADAM, "steps": 3000, "lr_decay": 0.1 ** (1 / 3000)}),
    "layer-adam-lr0.3": Variant(gain="layer", fit={**_LAYER_ADAM, "lr": 0.3}),
    "layer-adam-init3": Variant(gain="layer", fit={**_LAYER_ADAM, "init_concentration": 3.0}),
    "flat-gain-converged": Variant(prior=1.0, gain="layer", fit={"epochs": None, "init_concentration": 1.0, "optimizer": "adam"}),
    "sparse-gain-converged": Variant(prior=0.1, gain="layer", fit={"epochs": None, "init_concentration": 1.0, "optimizer": "adam"}),
    "sparse-gain-init10": Variant(prior=0.1, gain="layer", fit={"epochs": None, "init_concentration": 10.0, "optimizer": "adam"}),
    "flat-gain-init10": Variant(prior=1.0, gain="layer", fit={"epochs": None, "init_concentration": 10.0, "optimizer": "adam"}),
}

FLOP_BUDGETS = (0.5, 0.3)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties are not needed: scores are continuous)."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty(len(x), dtype=torch.float64)
        r[x.double().argsort()] = torch.arange(len(x), dtype=torch.float64)
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


#: A channel whose removal raises the validation loss by less than this (nats) is not a
#: useful one (as :data:`analysis.planted.NEGLIGIBLE_COST`).
NEGLIGIBLE_COST = 1e-3


def dead_recall(scores: torch.Tensor, inert: torch.Tensor, cost: torch.Tensor) -> float | None:
    """Share of the inert channels ranked below every useful one; ``None`` without inert channels.

    Useful: removal cost at least :data:`NEGLIGIBLE_COST`. The inert channels count as
    ranked below the useful ones when they are among the ``u`` lowest scores, ``u`` the
    number of channels that are not useful (inert, negligible or harmful): a ranking that
    puts a negligible live channel below an inert one is not wrong.
    """
    if not inert.any():
        return None
    useless = int(((cost < NEGLIGIBLE_COST) | inert).sum())
    lowest = scores.double().argsort(stable=True)[:useless]
    return float(inert[lowest].sum() / inert.sum())


def five_class_cifar(data_dir: str | None, *, train: int = 1500, validation: int = 500, test: int = 2000) -> DataSplits:
    """The first five CIFAR-10 classes (JPEG copy), cut to a small user's data set."""
    data = load_dataset("cifar10", data_dir)

    def cut(split: Split, size: int) -> Split:
        mask = split.labels < 5
        return Split(split.images[mask], split.labels[mask]).subset(size, seed=0)

    return dataclasses.replace(data, train=cut(data.train, train), validation=cut(data.validation, validation),
                               test=cut(data.test, test), num_classes=5, augment=None)


def head_resnet_baseline(data: DataSplits) -> tuple[nn.Module, TrainConfig]:
    """The study's BN ResNet with an MLP head, trained once (30 epochs, SGD) and cached."""
    from pyro_dirichlet.models.head_resnet import HeadResNet

    recipe = TrainConfig(epochs=30, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine")
    path = resolve_cache_dir("baselines") / "ranking-quality-head-resnet.pt"
    torch.manual_seed(0)
    network = HeadResNet(num_classes=5)
    if path.is_file():
        network.load_state_dict(torch.load(path, weights_only=True))
    else:
        train_classifier(network, data, recipe, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), path)
    return network.eval(), recipe


def load_network(name: str, data_dir: str | None) -> tuple[nn.Module, DataSplits, TrainConfig]:
    """The trained network, its data (validation 500-2,000 images) and its training recipe."""
    if name == "head-resnet":
        data = five_class_cifar(data_dir)
        network, recipe = head_resnet_baseline(data)
        return network, data, recipe
    from pyro_dirichlet.baselines import get_model_entry, load_or_train_baseline

    if name == "lenet5":
        data = load_dataset("mnist", data_dir)
        return load_or_train_baseline("lenet5", data, progress=False).model.eval(), data, get_model_entry("lenet5").train
    if name == "resnet20":
        from analysis.resnet20_cifar10 import load_weights

        data = load_dataset("cifar10", data_dir)
        network, _ = load_weights(Path(__file__).parent / "baselines" / "resnet20-cifar10.safetensors")
        return network, data, get_model_entry("resnet20").train
    raise ValueError(f"unknown network {name!r}; known: head-resnet, lenet5, resnet20.")


def epoch_seconds(network: nn.Module, data: DataSplits, recipe: TrainConfig, steps: int = 20) -> float:
    """Seconds of one baseline training epoch on ``data.train``, timed over ``steps`` steps of a copy."""
    import torch.nn.functional as F

    trained = copy.deepcopy(network).train()
    optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3)
    batch = recipe.batch_size
    per_epoch = math.ceil(len(data.train) / batch)
    steps = min(steps, per_epoch)
    with Stopwatch() as watch:
        for step in range(steps):
            images = data.train.images[step * batch:(step + 1) * batch]
            labels = data.train.labels[step * batch:(step + 1) * batch]
            optimizer.zero_grad()
            F.cross_entropy(trained(images), labels).backward()
            optimizer.step()
    return watch.seconds / steps * per_epoch


def fit_variant(network: nn.Module, data: DataSplits, variant: Variant, *, seed: int) -> dict:
    """Fit one variant on a copy of ``network``; the posterior means and the fit's record."""
    options = {}
    if variant.prior is not None:
        options["prior"] = variant.prior
    if variant.gain is not None:
        options["gain"] = variant.gain
    fit_options = dict(variant.fit)
    switches = DirichletSwitches(copy.deepcopy(network), data.train.images[:2], **options)
    if "steps" in fit_options:  # a fixed length: the stopping rule pinned there
        steps = fit_options.pop("steps")
        fit_options.update(epochs=None, stopping=StoppingRule(min_steps=steps, max_steps=steps))
    if "effective_data_fraction" in fit_options:
        fit_options["effective_data_size"] = max(1, round(fit_options.pop("effective_data_fraction") * len(data.train)))
    config = FitConfig(**{"seed": seed, "device": "cpu", "progress": False, **fit_options})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitNotConvergedWarning)
        result = fit(switches, data.train, config)
    means = {name: phi / phi.sum() for name, phi in result.concentrations.items()}
    # The parameters are stored unconstrained: a positive gain as its logarithm.
    gains = {name: result.parameters[gain_param(name)].detach().float().exp() for name in means if gain_param(name) in result.parameters}
    # Folded as the library folds (gain * E[s] * C); rows recorded before this folded E[s] * C.
    fold = {name: means[name] * gains.get(name, 1.0) for name in means}
    return {"result": result, "means": means, "fold": fold}


def calibrated_network(network, layers, scores, counts, data, example, *, seed: int, fold=None) -> nn.Module:
    """``network`` pruned to ``counts`` by ``scores`` (the fold's scales folded in), then calibrated."""
    pruner = Pruner(network, example, layers=layers)
    pruned = pruner.cut(pruner.plan(scores, counts), None if fold is None else switch_scales(fold))
    return calibrate(pruned, data.train, example, CalibrationConfig(steps=200, seed=seed)).network


def calibrated_accuracy(network, layers, scores, counts, data, example, *, seed: int, fold=None) -> dict:
    calibrated = calibrated_network(network, layers, scores, counts, data, example, seed=seed, fold=fold)
    return {"validation": accuracy(calibrated, data.validation), "test": accuracy(calibrated, data.test)}


#: The criteria fine-tuned after calibration (``--fine-tune``): the posterior against the cheap choices.
FINE_TUNED = ("default", "layer-gain-adam", "layer-adam", "l1-norm", "random", "taylor")


def fine_tuned_accuracy(network, layers, scores, counts, data, example, *, seed: int, epochs: int, fold=None) -> dict:
    """Accuracy after the same calibration and the same fine-tune (``epochs``, the library's
    :func:`~pyro_dirichlet.repair.train.finetune` recipe, bf16 where the CPU has it; the epoch is
    chosen on the validation split, the test split only recorded)."""
    from pyro_dirichlet.repair.train import finetune

    tuned = calibrated_network(network, layers, scores, counts, data, example, seed=seed, fold=fold)
    result = finetune(tuned, data, epochs=epochs, seed=seed, progress=False, precision="auto")
    tuned.eval()
    return {"validation": accuracy(tuned, data.validation), "test": accuracy(tuned, data.test),
            "epochs": epochs, "best_epoch": result.best_epoch}


def record_path(out: Path, network_name: str, seed: int) -> Path:
    """Seed 0 writes ``<network>.json``, seed ``k`` ``<network>-seed<k>.json``."""
    return out / (f"{network_name}.json" if seed == 0 else f"{network_name}-seed{seed}.json")


def study(network_name: str, variants: list[str], *, data_dir: str | None, seed: int, out: Path,
          removal_examples: int, stability: bool = True, fine_tune: int = 0, fine_tuned: tuple[str, ...] = FINE_TUNED,
          log: Callable[[str], None] = print) -> dict:
    network, data, recipe = load_network(network_name, data_dir)
    example = data.train.images[:2]
    layers = Pruner(network, example).layers
    widths = {layer.name: layer.channels for layer in layers}
    record: dict = {"network": network_name, "seed": seed, "layers": widths, "data": {
        "train": len(data.train), "validation": len(data.validation), "test": len(data.test), "source": data.source},
        "baseline": {"validation": accuracy(network, data.validation), "test": accuracy(network, data.test)},
        "criteria": {}}
    path = record_path(out, network_name, seed)
    existing = _read(path) or _read(record_path(out, network_name, 0))  # the removal cost does not depend on the seed
    if existing.get("layers") == widths:
        if existing.get("seed") == seed:
            record["criteria"] = existing.get("criteria", {})
        record.update({key: existing[key] for key in ("removal", "epoch_seconds") if key in existing})

    if "removal" not in record:
        with Stopwatch() as watch:
            effects = removal_effects(network, layers, data.validation, max_examples=removal_examples)
        record["removal"] = {"cost": {k: v.tolist() for k, v in effects.cost.items()},
                             "inert": {k: v.nonzero().flatten().tolist() for k, v in effects.inert.items()},
                             "examples": effects.examples, "seconds": watch.seconds}
        record["epoch_seconds"] = epoch_seconds(network, data, recipe)
        atomic_write_json(path, record)
    log(f"removal cost on {record['removal']['examples']} images in {record['removal']['seconds']:.0f} s; "
        f"inert: { {k: len(v) for k, v in record['removal']['inert'].items()} }")
    cost = {k: torch.tensor(v) for k, v in record["removal"]["cost"].items()}
    inert = {k: torch.zeros(len(cost[k]), dtype=torch.bool).index_fill_(0, torch.tensor(v, dtype=torch.long), True)
             for k, v in record["removal"]["inert"].items()}
    counts = {f"{round(100 * b)}% FLOPs": uniform_counts(network, widths, example, budget=b, layers=layers) for b in FLOP_BUDGETS}

    def judge(name: str, scores: Mapping[str, torch.Tensor], extra: dict, fold=None) -> None:
        per_layer = {k: spearman(scores[k], cost[k]) for k in cost}
        row = {"spearman": per_layer, "spearman_mean": statistics.fmean(per_layer.values()),
               "dead_recall": {k: dead_recall(scores[k], inert[k], cost[k]) for k in cost if inert[k].any()},
               "scores": {k: [float(x) for x in scores[k]] for k in cost}, **extra}
        row["calibrated"] = {budget: calibrated_accuracy(network, layers, scores, c, data, example, seed=seed, fold=fold)
                             for budget, c in counts.items()}
        record["criteria"][name] = row
        atomic_write_json(path, record)
        log(f"{name}: spearman {row['spearman_mean']:+.3f} dead recall {row['dead_recall']} "
            + " ".join(f"{b} {v['validation']:.4f}" for b, v in row["calibrated"].items()))

    for name, options in (("l1-norm", {}), ("taylor", {"seed": seed}), ("random", {"seed": seed}), ("batchnorm-scale", {})):
        if name in record["criteria"]:
            continue
        try:
            scores = get_criterion(name, **options)(network, layers, data.train)
        except ValueError as error:  # BN |gamma| needs a BatchNorm after every layer
            log(f"{name}: {error}")
            continue
        judge(name, scores, {})

    for name in variants:
        if name in record["criteria"]:
            continue
        variant = VARIANTS[name]
        fitted = fit_variant(network, data, variant, seed=seed)
        result = fitted["result"]
        extra = {"variant": variant.describe(), "steps": result.steps, "fit_seconds": result.seconds,
                 "fit_in_epochs": result.seconds / record["epoch_seconds"],
                 "convergence": None if result.convergence is None else result.convergence.to_dict()}
        if name == "default" and stability:
            # Stability: the same fit run twice as many steps, with a fixed length.
            twice = _twice(network, data, variant, result.steps, seed)
            extra["overlap_with_twice_as_long"] = kept_overlap(kept_sets(twice["means"]), kept_sets(fitted["means"]))
            extra["steps_twice"] = twice["result"].steps
        judge(name, fitted["means"], extra, fold=fitted["fold"])

    if fine_tune:
        for name in fine_tuned:
            row = record["criteria"].get(name)
            if row is None or row.get("fine_tuned", {}).get("epochs") == fine_tune:
                continue
            scores = {k: torch.tensor(v) for k, v in row["scores"].items()}
            fold = scores if "variant" in row else None  # a posterior's means are folded, as when pruning
            tuned = {budget: fine_tuned_accuracy(network, layers, scores, c, data, example, seed=seed,
                                                 epochs=fine_tune, fold=fold) for budget, c in counts.items()}
            row["fine_tuned"] = {"epochs": fine_tune, **tuned}
            atomic_write_json(path, record)
            log(f"{name} fine-tuned {fine_tune} epochs: " + " ".join(f"{b} {v['validation']:.4f}" for b, v in tuned.items()))
    return record


#: Rows of :func:`markdown`, in this order, where a network's record has them.
ROW_ORDER = ("default", "layer-gain-adam", "layer-adam", "channel-gain", "channel-gain-layer-adam", "paper", "l1-norm", "taylor", "batchnorm-scale", "random")


def markdown(records: list[dict]) -> str:
    """The table of docs/results.md: one row per (network, criterion): Spearman with removal cost (mean over
    layers), dead-unit recall, validation accuracy after calibration at each FLOPs budget, and
    for fits their steps and wall time in baseline training epochs."""
    lines = ["| network | criterion | Spearman vs removal cost | dead-unit recall | 50% FLOPs | 30% FLOPs | fit steps | fit time (epochs) |",
             "|---|---|---|---|---|---|---|---|"]
    for record in records:
        criteria = record["criteria"]
        for name in ROW_ORDER:
            if name not in criteria:
                continue
            row = criteria[name]
            recall = [v for v in row["dead_recall"].values() if v is not None]
            cells = [record["network"], name, f"{row['spearman_mean']:+.2f}", f"{recall[0]:.2f}" if recall else "-",
                     *(f"{100 * row['calibrated'][b]['validation']:.1f}%" for b in ("50% FLOPs", "30% FLOPs")),
                     str(row.get("steps", "-")), f"{row['fit_in_epochs']:.1f}" if "fit_in_epochs" in row else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _twice(network, data, variant: Variant, steps: int, seed: int) -> dict:
    """The variant fitted for exactly ``2 * steps`` steps (the stopping rule pinned there)."""
    rule = StoppingRule(min_steps=2 * steps, max_steps=2 * steps, check_every=2 * steps)
    fit_options = {**variant.fit, "epochs": None, "stopping": rule}
    return fit_variant(network, data, dataclasses.replace(variant, fit=fit_options), seed=seed)


def _read(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=["head-resnet", "lenet5", "resnet20"], required=True)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one record per seed")
    parser.add_argument("--fine-tune", type=int, default=0, metavar="EPOCHS",
                        help="also fine-tune the calibrated networks of the --fine-tuned criteria this many epochs")
    parser.add_argument("--fine-tuned", nargs="+", default=list(FINE_TUNED), metavar="CRITERION",
                        help="the criteria --fine-tune fine-tunes (default: %(default)s)")
    parser.add_argument("--removal-examples", type=int, default=1000)
    parser.add_argument("--no-stability", dest="stability", action="store_false",
                        help="skip the default fit's second run twice as long (its kept-set overlap)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, default=Path("analysis/results/ranking-quality"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for seed in args.seed:
        study(args.network, args.variants, data_dir=args.data_dir, seed=seed, out=args.out,
              removal_examples=args.removal_examples, stability=args.stability and seed == 0, fine_tune=args.fine_tune,
              fine_tuned=tuple(args.fine_tuned))
        print(f"done in {time.perf_counter() - started:.0f} s -> {record_path(args.out, args.network, seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
