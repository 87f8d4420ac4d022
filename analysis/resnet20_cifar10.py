"""Equal-budget comparison of the criteria on a trained ResNet-20 / CIFAR-10 (JPEG copy): issue 15, item 4.

One trained network (a weights file), several seeds (each its own SVI fit, Taylor and
calibration shuffle, random scores and fine-tune order). Every criterion keeps the same
per-layer counts at each budget -- a share of the FLOPs (the largest uniform ratio of every
inner conv that fits, :func:`pyro_dirichlet.planning.allocation.uniform_counts`) or a per-layer keep
ratio -- and goes through the same plan and surgery; the Dirichlet row folds ``E[s]*C``
into the kept weights, as the library does. A second Dirichlet row comes from a fit with
``DirichletSwitches(layer_gain=True)`` (issue 15, item 3: the gain is what ranks planted
dead channels below every useful one, see ``analysis/planted.py``). Each pruned network is scored right after
pruning and after :func:`pyro_dirichlet.repair.calibrate.calibrate` (BatchNorm statistics and one
scale per kept channel, on the data the fit sees), then fine-tuned from the calibrated
network (SGD, Nesterov, cosine, best validation epoch kept). The fit, Taylor and the
calibration all see the same training images. Writes ``comparison.json`` and
``comparison.md``: the baseline accuracy, one row per (seed, budget, criterion), the
summary and the paired differences (Dirichlet minus each other criterion, same seed) with
standard errors.

    python -m analysis.resnet20_cifar10 --weights resnet20.safetensors --out analysis/results/resnet20-cifar10
    python -m analysis.resnet20_cifar10 --weights resnet20.safetensors --reduced --out ...   # ~45 min on 2 CPU cores

``--reduced`` fits (one epoch, 118 steps), calibrates (as many steps) and scores Taylor on
15,000 training images, tests on 2,000 and validates on 1,000, compares at 50% and 30% of
the FLOPs and a keep ratio of 0.5, and fine-tunes (2 epochs on the 15,000) only at 50% of
the FLOPs, only the default Dirichlet row and the two other rows with the best validation
accuracy after calibration. (5,000 images, 40 steps, leave a fit mid-way: on the planted
MLP the dead units then rank *highest*.)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from analysis.study import fit_switches, mean_sd, stage_summary
from pyro_dirichlet.planning.allocation import uniform_counts
from pyro_dirichlet.io.atomic import atomic_write_json, atomic_write_text
from pyro_dirichlet.repair.calibrate import CalibrationConfig, calibrate
from pyro_dirichlet.data import DataSplits, load_dataset
from pyro_dirichlet.criteria import get_criterion
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, count_parameters
from pyro_dirichlet.baselines import get_model_entry
from pyro_dirichlet.baselines.trained import load_checkpoint
from pyro_dirichlet.pruner import Pruner
from pyro_dirichlet.pruning import switch_scales
from pyro_dirichlet.structure import PrunableLayer
from pyro_dirichlet.repair.train import TrainConfig, train_classifier

__all__ = ["Protocol", "REDUCED", "ROWS", "METHOD", "GAIN_METHOD", "readme_tables", "load_weights", "budget_counts_by_name", "run", "main"]

MODEL = "resnet20"
#: The method's row; every paired difference is it minus another row.
METHOD = "dirichlet mean + fold"
#: The row of the fit with a learned gain per layer (``DirichletSwitches(layer_gain=True)``).
GAIN_METHOD = "dirichlet mean + gain + fold"
#: ``{row: (registered criterion, fold E[s]*C into the kept weights)}``.
ROWS: dict[str, tuple[str, bool]] = {
    METHOD: ("posterior-mean", True),
    GAIN_METHOD: ("posterior-mean", True),
    "dirichlet mean, no fold": ("posterior-mean", False),
    "l1-norm": ("l1-norm", False),
    "batchnorm |gamma|": ("batchnorm-scale", False),
    "taylor": ("taylor", False),
    "random": ("random", False),
}
STAGES = ("pruned", "calibrated", "finetuned")
#: The rows every paired difference is taken from (each against every non-Dirichlet row).
DIRICHLET_ROWS = (METHOD, GAIN_METHOD)


@dataclass(frozen=True)
class Protocol:
    """The sizes of one comparison.

    Attributes:
        seeds: one fit (and Taylor, calibration, random, fine-tune seed) each.
        fit_images: training images the fit, Taylor and calibration see (``None``: all 45,000).
        validation_images, test_images: sizes of the seeded validation and test subsets (``None``: whole).
        flop_budgets: shares of the baseline's FLOPs.
        keep_ratios: per-layer keep ratios of every inner conv.
        criteria: rows of :data:`ROWS` to compare (without a Dirichlet row there are no paired
            differences: e.g. how far the best cheap criterion recovers after fine-tuning).
        finetune_epochs, finetune_lr, finetune_batch_size: the fine-tune recipe (SGD, momentum
            0.9, Nesterov, weight decay 5e-4, cosine, best validation epoch), on the fit's images.
        finetune_distillation: share of the fine-tune loss that matches the unpruned
            network's class probabilities at temperature 4 (``TrainConfig.distillation``);
            0 fine-tunes on the labels alone.
        finetune_label_smoothing: label smoothing of the fine-tune's cross-entropy on the
            labels (``TrainConfig.label_smoothing``), as the baseline was trained with; 0: none.
        finetune_only: ``(budget name, n)``: fine-tune only at that budget, only the Dirichlet
            rows and the ``n`` other rows with the best mean validation accuracy after
            calibration (so the paired difference after fine-tuning is against the strongest
            competitors); ``None``: every row at every budget.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    fit_images: int | None = None
    validation_images: int | None = None
    test_images: int | None = None
    flop_budgets: tuple[float, ...] = (0.5, 0.3)
    keep_ratios: tuple[float, ...] = (0.5, 0.25)
    criteria: tuple[str, ...] = tuple(ROWS)
    finetune_epochs: int = 5
    finetune_lr: float = 0.01
    finetune_batch_size: int = 128
    finetune_distillation: float = 0.0
    finetune_label_smoothing: float = 0.0
    finetune_only: tuple[str, int] | None = None
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        unknown = [name for name in self.criteria if name not in ROWS]
        if unknown:
            raise ValueError(f"criteria {unknown} are not rows of the comparison; known rows: {list(ROWS)}.")
        if self.finetune_only is not None and self.finetune_only[0] not in self.budget_names:
            raise ValueError(f"finetune_only names budget {self.finetune_only[0]!r}, which is not one of {self.budget_names}.")

    @property
    def budget_names(self) -> tuple[str, ...]:
        """``"50% FLOPs"``... then ``"keep 0.5"``...: the keys of :func:`budget_counts_by_name`."""
        return (*(f"{round(100 * share)}% FLOPs" for share in self.flop_budgets), *(f"keep {ratio:g}" for ratio in self.keep_ratios))


#: ``--reduced``: sized for about 45 minutes of a 2-core CPU.
REDUCED = Protocol(fit_images=15000, validation_images=1000, test_images=2000, keep_ratios=(0.5,), finetune_epochs=2,
                   criteria=(METHOD, GAIN_METHOD, "l1-norm", "batchnorm |gamma|", "taylor", "random"),
                   finetune_only=("50% FLOPs", 2))


def load_weights(path: Path) -> tuple[nn.Module, dict]:
    """ResNet-20 with the weights of ``path`` (a safetensors checkpoint from ``analysis.train_baseline``), in eval mode.

    Raises:
        ValueError: the file is not a ResNet-20 checkpoint (names the file).
    """
    state, metadata = load_checkpoint(path)
    if metadata.get("model", MODEL) != MODEL:
        raise ValueError(f"weights file {path} holds a {metadata.get('model')!r} checkpoint, not {MODEL!r}.")
    network = get_model_entry(MODEL).build()
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"weights file {path} does not fit ResNet-20: {str(error).splitlines()[0]}") from error
    return network.eval(), metadata


def budget_counts_by_name(network: nn.Module, widths: Mapping[str, int], example: torch.Tensor, protocol: Protocol,
                          layers: Sequence[PrunableLayer] | None = None) -> dict[str, dict[str, int]]:
    """``{budget name: per-layer keep counts}``: ``"50% FLOPs"``... then ``"keep 0.5"``...

    ``layers``: the network's prunable layers, if the caller has them (no trace per budget).
    """
    counts = [uniform_counts(network, widths, example, budget=share, cost="flops", layers=layers) for share in protocol.flop_budgets]
    counts += [{name: max(1, round(ratio * width)) for name, width in widths.items()} for ratio in protocol.keep_ratios]
    return dict(zip(protocol.budget_names, counts, strict=True))


def _scores(name: str, network: nn.Module, layers, data: DataSplits, seed: int, fitted) -> dict[str, torch.Tensor]:
    registered, _ = ROWS[name]
    options = {"random": {"seed": seed}, "taylor": {"seed": seed, "batches": None}}.get(registered, {})
    if registered == "posterior-mean":
        options = {"posterior": fitted[name == GAIN_METHOD].posterior}
    return get_criterion(registered, **options)(network, layers, data.train)


def _on(device: torch.device, data: DataSplits) -> DataSplits:
    # Each split goes to the device once: the fit, Taylor, calibration and fine-tune then only slice.
    return dataclasses.replace(data, train=data.train.to(device), validation=data.validation.to(device), test=data.test.to(device))


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in tensors.items()}


def run(
    network: nn.Module,
    data: DataSplits,
    protocol: Protocol,
    *,
    log: Callable[[str], None] = print,
    device: torch.device | str = "cpu",
    partial: Callable[[dict], None] | None = None,
) -> dict:
    """The comparison on ``network`` (never modified) with ``data`` already cut to the protocol's sizes.

    ``device``: where the fits, Taylor, calibration, fine-tuning and scoring run; the surgery
    runs on a CPU copy (the pruned network then moves), so a pruned network is the same
    on any device. ``partial``, if given, receives the result so far (its ``"complete"`` is
    ``False``) after each seed and each fine-tune, so a run stopped early still leaves rows.
    """
    device = torch.device(device)
    network = copy.deepcopy(network).cpu().eval()
    on_device = copy.deepcopy(network).to(device)
    data = _on(device, data)
    example = data.train.images[:2].cpu()
    started = time.perf_counter()  # the whole comparison's wall time, reported as "seconds"
    baseline = {"test_accuracy": accuracy(on_device, data.test), "validation_accuracy": accuracy(on_device, data.validation),
                "params": count_parameters(network), "flops": count_flops(network, example)}
    rows, calibrated_networks = [], {}
    # The layers DirichletSwitches finds by default, so every row, fitted or not, prunes the same ones.
    pruner = Pruner(network, example)
    layers = pruner.layers
    widths = {layer.name: layer.channels for layer in layers}
    budgets = budget_counts_by_name(network, widths, example, protocol, layers)
    tuned: set[tuple[str, str]] = set()

    def result(complete: bool) -> dict:
        return {
            "model": MODEL, "protocol": _describe(protocol), "data": _describe_data(data), "device": str(device),
            "baseline": baseline, "budgets": budgets, "finetuned": sorted(map(list, tuned)),
            # Copies: the rows go on gaining fine-tuned scores after a partial result is reported.
            "rows": [dict(row) for row in rows], "summary": summarise(rows), "paired": paired_differences(rows),
            "seconds": time.perf_counter() - started, "complete": complete,
        }

    for seed in protocol.seeds:
        # {layer_gain: (fit, seconds)}, each fit only where a row of the protocol reads it.
        fits, fit_seconds = {}, {}
        for gain in sorted({name == GAIN_METHOD for name in protocol.criteria if ROWS[name][0] == "posterior-mean"}):
            with Stopwatch(device) as fit_watch:
                fits[gain] = fit_switches(on_device, data, seed=seed, layer_gain=gain, device=str(device))
            fit_seconds[gain] = fit_watch.seconds
        # Taylor's gradients on the device; every score to the CPU, where the plan and surgery run.
        scores = {name: _cpu(_scores(name, on_device if ROWS[name][0] == "taylor" else network, layers, data, seed, fits))
                  for name in protocol.criteria}
        for budget, counts in budgets.items():
            for name in protocol.criteria:
                fold = _cpu(fits[name == GAIN_METHOD].means) if ROWS[name][1] else None
                keep = pruner.plan(scores[name], counts)
                pruned = pruner.cut(keep, None if fold is None else switch_scales(fold))
                row = {"seed": seed, "budget": budget, "criterion": name, "params": count_parameters(pruned),
                       "flops": count_flops(pruned, example), "fit_seconds": fit_seconds.get(name == GAIN_METHOD)}
                pruned = pruned.to(device)
                row.update({"test_pruned": accuracy(pruned, data.test), "validation_pruned": accuracy(pruned, data.validation)})
                with Stopwatch(device) as watch:
                    calibrated = calibrate(pruned, data.train, example.to(device), dataclasses.replace(protocol.calibration, seed=seed))
                row.update({"test_calibrated": accuracy(calibrated.network, data.test),
                            "validation_calibrated": accuracy(calibrated.network, data.validation),
                            "calibration_seconds": watch.seconds,
                            "calibration_kept": {"batchnorm": calibrated.batchnorm_recalibrated, "scales": calibrated.scales_kept}})
                calibrated_networks[(seed, budget, name)] = calibrated.network
                rows.append(row)
                log(f"seed {seed} {budget} {name}: pruned {row['test_pruned']:.4f}, calibrated {row['test_calibrated']:.4f}")
        if partial is not None:
            partial(result(complete=False))
    tuned = _finetune_set(rows, protocol) if protocol.finetune_epochs > 0 else set()
    recipe = TrainConfig(epochs=protocol.finetune_epochs, lr=protocol.finetune_lr, batch_size=protocol.finetune_batch_size,
                         optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
                         distillation=protocol.finetune_distillation, label_smoothing=protocol.finetune_label_smoothing)
    # The unpruned network on the device; the pruned ones were cut from another copy, so none shares its weights.
    teacher = on_device if protocol.finetune_distillation > 0 else None
    # Seed by seed, so a run stopped early has whole seeds of every fine-tuned row.
    for row in sorted(rows, key=lambda r: r["seed"]):
        if (row["budget"], row["criterion"]) not in tuned:
            continue
        network_ = calibrated_networks[(row["seed"], row["budget"], row["criterion"])]
        with Stopwatch(device) as watch:
            train_classifier(network_, data, dataclasses.replace(recipe, seed=row["seed"]), device=device, progress=False,
                             keep_initial=True, teacher=teacher)
        network_.eval()
        row.update({"test_finetuned": accuracy(network_, data.test), "validation_finetuned": accuracy(network_, data.validation),
                    "finetune_seconds": watch.seconds})
        log(f"seed {row['seed']} {row['budget']} {row['criterion']}: fine-tuned {row['test_finetuned']:.4f}")
        if partial is not None:
            partial(result(complete=False))
    return result(complete=True)


def _finetune_set(rows: list[dict], protocol: Protocol) -> set[tuple[str, str]]:
    """(budget, criterion) pairs to fine-tune; chosen on validation, never on test."""
    every = {(row["budget"], row["criterion"]) for row in rows}
    if protocol.finetune_only is None:
        return every
    budget, count = protocol.finetune_only
    methods = [name for name in protocol.criteria if name in DIRICHLET_ROWS]
    means = {name: mean_sd(r["validation_calibrated"] for r in rows if r["budget"] == budget and r["criterion"] == name)[0]
             for name in protocol.criteria if name not in methods}
    best = sorted(means, key=lambda name: -means[name])[:count]
    return {(budget, name) for name in (*methods, *best)}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± sd over seeds per (budget, criterion) and stage (stages a row lacks are left out)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["budget"], row["criterion"]), []).append(row)
    table = []
    for (budget, criterion), members in groups.items():
        entry = {"budget": budget, "criterion": criterion, "params": members[0]["params"], "flops": members[0]["flops"]}
        entry.update(stage_summary(members, [stage for stage in STAGES if all(f"test_{stage}" in m for m in members)]))
        table.append(entry)
    return table


def paired_differences(rows: list[dict]) -> list[dict]:
    """Each Dirichlet row (:data:`METHOD`, :data:`GAIN_METHOD` where present) minus every
    non-Dirichlet row, per budget and stage, paired by seed: mean, sd, standard error, per seed.

    ``ahead`` / ``behind``: the mean difference is more than two standard errors above / below 0.
    """
    by = {(r["seed"], r["budget"], r["criterion"]): r for r in rows}
    present = dict.fromkeys(r["criterion"] for r in rows)
    methods = [name for name in DIRICHLET_ROWS if name in present]
    out = []
    for budget, method in ((b, m) for b in dict.fromkeys(r["budget"] for r in rows) for m in methods):
        for other in (name for name in present if ROWS[name][0] != "posterior-mean"):
            for stage in STAGES:
                key = f"test_{stage}"
                pairs = [(by[(s, budget, method)], by[(s, budget, other)]) for s in sorted({r["seed"] for r in rows})
                         if (s, budget, other) in by and (s, budget, method) in by]
                pairs = [(a[key], b[key]) for a, b in pairs if key in a and key in b]
                if not pairs:
                    continue
                differences = [a - b for a, b in pairs]
                mean, sd = mean_sd(differences)
                # One seed has no standard error: such a difference decides nothing.
                se = sd / math.sqrt(len(differences)) if len(differences) > 1 else None
                out.append({"budget": budget, "method": method, "versus": other, "stage": stage, "mean": mean, "sd": sd, "se": se,
                            "per_seed": differences, "ahead": se is not None and mean > 2 * se,
                            "behind": se is not None and mean < -2 * se})
    return out


def markdown(result: dict) -> str:
    lines = ["# ResNet-20 / CIFAR-10 (JPEG copy): criteria at equal budgets", "",
             f"Baseline test accuracy {100 * result['baseline']['test_accuracy']:.2f}% "
             f"({result['baseline']['flops']:,} FLOPs). Data: {result['data']}. Seeds {result['protocol']['seeds']}; "
             f"test accuracy (%), mean ± sd over seeds.", "",
             "| budget | criterion | FLOPs | right after pruning | after calibration | calibrated + fine-tuned |",
             "|---|---|---|---|---|---|"]
    for e in result["summary"]:
        cells = " | ".join(f"{100 * e[f'{s}_mean']:.2f} ± {100 * e[f'{s}_sd']:.2f}" if f"{s}_mean" in e else "-" for s in STAGES)
        lines.append(f"| {e['budget']} | {_cell(e['criterion'])} | {e['flops']:,} | {cells} |")
    lines += ["", "Paired differences, a Dirichlet row minus another row (points, mean ± standard error; "
              "ahead/behind: beyond 2 standard errors):", "", "| budget | row | vs | stage | difference | verdict |", "|---|---|---|---|---|---|"]
    for p in result["paired"]:
        verdict = "ahead" if p["ahead"] else "behind" if p["behind"] else "within noise" if p["se"] is not None else "one seed"
        se = "-" if p["se"] is None else f"{100 * p['se']:.2f}"
        lines.append(f"| {p['budget']} | {p['method']} | {_cell(p['versus'])} | {p['stage']} | {100 * p['mean']:+.2f} ± {se} | {verdict} |")
    return "\n".join(lines) + "\n"


#: The paired differences docs/results.md quotes: each Dirichlet row against these.
README_VERSUS = ("l1-norm", "random", "taylor")


def readme_tables(result: dict) -> str:
    """The two tables docs/results.md's "Does it work?" quotes, made from ``comparison.json`` (a test keeps them in sync).

    Test accuracy (%) per budget and row, mean over seeds ("-": not fine-tuned), then the
    paired differences (points, mean ± standard error) of both Dirichlet rows against
    :data:`README_VERSUS`; bold where beyond two standard errors of 0.
    """
    headers = "right after pruning | after calibration | calibrated + fine-tuned"
    lines = [f"| budget | criterion | {headers} |", "|---|---|---|---|---|"]
    for e in result["summary"]:
        cells = [f"{100 * e[f'{s}_mean']:.{2 if s == 'finetuned' else 1}f}" if f"{s}_mean" in e else "-" for s in STAGES]
        lines.append(f"| {e['budget']} | {_cell(e['criterion'])} | " + " | ".join(cells) + " |")
    lines += ["", f"| budget | difference | {headers} |", "|---|---|---|---|---|"]
    paired = {(p["budget"], p["method"], p["versus"], p["stage"]): p for p in result["paired"]}
    for budget in result["budgets"]:
        for method in DIRICHLET_ROWS:
            for other in README_VERSUS:
                if (budget, method, other, "pruned") not in paired:
                    continue
                cells = []
                for stage in STAGES:
                    p = paired.get((budget, method, other, stage))
                    if p is None or p["se"] is None:
                        cells.append("-")
                        continue
                    mark = "**" if p["ahead"] or p["behind"] else ""
                    digits = 2 if stage == "finetuned" else 1
                    cells.append(f"{mark}{100 * p['mean']:+.{digits}f} ± {100 * p['se']:.{digits}f}{mark}")
                lines.append(f"| {budget} | {method} − {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    # "batchnorm |gamma|" would split a Markdown table cell.
    return text.replace("|", "\\|")


def _describe(protocol: Protocol) -> dict:
    described = dataclasses.asdict(protocol)
    # Left out at its default, so runs made before the option stay comparable (merged, chosen among).
    for name in ("finetune_distillation", "finetune_label_smoothing"):
        if not getattr(protocol, name):
            del described[name]
    described["calibration"] = dataclasses.asdict(protocol.calibration)
    return described


def _describe_data(data: DataSplits) -> str:
    source = getattr(data, "source", "") or data.name
    return f"{source}, {len(data.train):,} train (fit, Taylor, calibration, fine-tune) / {len(data.validation):,} validation / {len(data.test):,} test"


def cut(data: DataSplits, protocol: Protocol) -> DataSplits:
    """The protocol's seeded subsets of ``data`` (sizes left ``None`` keep a split whole)."""
    return data.subset(train=protocol.fit_images, validation=protocol.validation_images, test=protocol.test_images, seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="trained ResNet-20 safetensors checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="folder for comparison.json and comparison.md")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--reduced", action="store_true", help="the CPU-sized protocol (see the module docstring)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, help="number of seeds: 0..N-1 (default 3)")
    seeds.add_argument("--seed", type=int, action="append", default=None,
                       help="run this seed only, repeatable (parts of one comparison run in parallel, then "
                            "analysis.merge_comparisons joins them)")
    parser.add_argument("--fit-images", type=int, default=None, help="training images for the fit, Taylor, calibration")
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--validation-images", type=int, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--finetune-lr", type=float, default=None, help="peak learning rate of the fine-tune (default 0.01)")
    parser.add_argument("--finetune-batch-size", type=int, default=None, help="default 128")
    parser.add_argument("--finetune-distillation", type=float, default=None, metavar="SHARE",
                        help="share of the fine-tune loss that matches the unpruned network (in [0, 1]; default 0)")
    parser.add_argument("--finetune-label-smoothing", type=float, default=None, metavar="EPS",
                        help="label smoothing of the fine-tune's cross-entropy (in [0, 1); default 0)")
    parser.add_argument("--finetune-only", default=None, metavar="BUDGET:N",
                        help="fine-tune only at BUDGET (e.g. '50%% FLOPs'), the Dirichlet rows and the N other rows best on "
                             "validation; 'all': every row at every budget")
    parser.add_argument("--criterion", action="append", choices=list(ROWS), default=None,
                        help="a row to compare, repeatable (default: every row; at least one Dirichlet row)")
    parser.add_argument("--flop-budgets", type=_shares, default=None, metavar="S,S", help="shares of the FLOPs, e.g. 0.5,0.3")
    parser.add_argument("--keep-ratios", type=_shares, default=None, metavar="R,R",
                        help="per-layer keep ratios, e.g. 0.5,0.25 ('' for none)")
    parser.add_argument("--device", default="cpu", help="where fits, calibration, fine-tuning and scoring run (cpu, cuda)")
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights} is not a file.")
    for name in ("seeds", "fit_images", "test_images", "validation_images", "finetune_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if args.seed is not None and min(args.seed) < 0:
        parser.error(f"--seed must be at least 0, got {min(args.seed)}.")
    if args.finetune_lr is not None and not (math.isfinite(args.finetune_lr) and args.finetune_lr > 0):
        parser.error(f"--finetune-lr must be a positive number, got {args.finetune_lr}.")
    if args.finetune_distillation is not None and not 0 <= args.finetune_distillation <= 1:
        parser.error(f"--finetune-distillation must be in [0, 1], got {args.finetune_distillation}.")
    if args.finetune_label_smoothing is not None and not 0 <= args.finetune_label_smoothing < 1:
        parser.error(f"--finetune-label-smoothing must be in [0, 1), got {args.finetune_label_smoothing}.")
    if args.finetune_epochs is not None and args.finetune_epochs < 0:
        parser.error(f"--finetune-epochs must be at least 0, got {args.finetune_epochs}.")
    finetune_only = None if args.finetune_only is None else _parse_finetune_only(parser, args.finetune_only)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no CUDA device.")
    protocol = REDUCED if args.reduced else Protocol()
    # None: the flag was not given. "all" is given, and sets finetune_only to None.
    seeds = tuple(dict.fromkeys(args.seed)) if args.seed is not None else None if args.seeds is None else tuple(range(args.seeds))
    overrides = {"seeds": seeds, "fit_images": args.fit_images,
                 "test_images": args.test_images, "validation_images": args.validation_images,
                 "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
                 "finetune_batch_size": args.finetune_batch_size, "finetune_distillation": args.finetune_distillation,
                 "finetune_label_smoothing": args.finetune_label_smoothing,
                 "criteria": None if args.criterion is None else tuple(dict.fromkeys(args.criterion)),
                 "flop_budgets": args.flop_budgets, "keep_ratios": args.keep_ratios}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if finetune_only is not None:
        overrides["finetune_only"] = None if finetune_only == "all" else finetune_only
    try:
        protocol = dataclasses.replace(protocol, **overrides)
    except ValueError as error:
        parser.error(f"the protocol the flags ask for: {error}")
    try:
        network, metadata = load_weights(args.weights)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    data = cut(load_dataset("cifar10", args.data_dir), protocol)
    weights = {"path": str(args.weights), "sha256": hashlib.sha256(args.weights.read_bytes()).hexdigest(), "metadata": metadata}
    args.out.mkdir(parents=True, exist_ok=True)
    partial_path = args.out / "comparison.partial.json"

    def write_partial(result: dict) -> None:
        atomic_write_json(partial_path, {**result, "weights": weights, "reduced": args.reduced})

    result = run(network, data, protocol, log=lambda line: print(line, flush=True), device=args.device, partial=write_partial)
    result["weights"] = weights
    result["reduced"] = args.reduced
    atomic_write_json(args.out / "comparison.json", result)
    atomic_write_text(args.out / "comparison.md", markdown(result))
    partial_path.unlink(missing_ok=True)
    print(markdown(result), flush=True)
    return 0


def _shares(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not all(0 < value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"every share must lie strictly between 0 and 1, got {text!r}")
    return values


def _parse_finetune_only(parser: argparse.ArgumentParser, text: str) -> tuple[str, int] | str:
    if text == "all":
        return "all"
    budget, _, count = text.rpartition(":")
    if not budget or not count.isdigit():
        parser.error(f"--finetune-only must be 'BUDGET:N' (e.g. '50% FLOPs:2') or 'all', got {text!r}.")
    return budget, int(count)


if __name__ == "__main__":
    raise SystemExit(main())
