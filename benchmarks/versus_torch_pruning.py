"""Head to head with Torch-Pruning at equal FLOPs and equal fine-tuning (issue 29, item 3).

Every row prunes the same trained network to a share of its FLOPs (as
:func:`pyro_dirichlet.measure.count_flops` counts them), then goes through the same
calibration (:func:`pyro_dirichlet.repair.calibrate.calibrate`: BatchNorm statistics and per-channel
scales, on the same training images) and the same fine-tune recipe (SGD, Nesterov, cosine,
best validation epoch kept). The rows:

- ``dirichlet``: the project's default pipeline, what ``pyro-dirichlet run --budget B``
  does: ``DirichletSwitches(net, x)`` (every default: coupled groups pruned, the default
  prior), :func:`pyro_dirichlet.fit` with :class:`~pyro_dirichlet.infer.fit.FitConfig`'s
  defaults, then ``prune_by_posterior_mean(net, posterior, budget=B)``.
- ``tp-magnitude``, ``tp-taylor``, ``tp-lamp``, ``tp-hessian``: Torch-Pruning's
  ``MetaPruner`` with ``global_pruning=True`` and ``GroupMagnitudeImportance(p=2)``,
  ``GroupTaylorImportance()``, ``LAMPImportance(p=2)`` or ``GroupHessianImportance()``, the
  classifier ignored, its ``pruning_ratio`` bisected until the pruned network's FLOPs are at
  most the budget (the largest network that fits, as the project's allocation does).

Reported per row: accuracy right after pruning, after calibration, after fine-tuning (test
and validation), parameters, FLOPs, latency at batch 1 and 64 (:func:`latency_seconds`),
and the wall time to a pruned network (the fit and the allocation for ``dirichlet``; the
ratio search, gradients included, for Torch-Pruning).

    python -m benchmarks.versus_torch_pruning                      # everything (GPU-sized)
    OMP_NUM_THREADS=1 python -m benchmarks.versus_torch_pruning --reduced   # ~30 min, 1 CPU thread

Torch-Pruning is an optional analysis dependency (``pip install -e '.[analysis]'``),
imported only here. Networks without a trained baseline (ResNet-56, MobileNetV2 unless
``--train-epochs`` trains one) are listed under ``"skipped"`` with the reason.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from analysis.results_pages import markers, replace_section
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.repair.calibrate import CalibrationConfig, calibrate
from pyro_dirichlet.data import DataSplits, iterate_batches, load_dataset
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, count_parameters, latency_seconds
from pyro_dirichlet.structure import find_prunable_layers
from pyro_dirichlet.repair.train import TrainConfig, train_classifier

__all__ = ["Protocol", "REDUCED", "METHODS", "NETWORKS", "tp_prune_to_flops", "run_network", "readme_table", "main"]

RESULTS = Path(__file__).parent / "results" / "versus_torch_pruning.json"
#: The page whose table (between the markers) :func:`write_readme_table` rewrites.
RESULTS_PAGE = Path(__file__).parent.parent / "docs" / "results.md"
TABLE_START, TABLE_END = markers("versus-torch-pruning")
BASELINES = Path(__file__).parent.parent / "analysis" / "baselines"

#: Row name -> Torch-Pruning importance factory (``None``: the project's own pipeline).
METHODS: dict[str, Callable | None] = {
    "dirichlet": None,
    "tp-magnitude": lambda tp: tp.importance.GroupMagnitudeImportance(p=2),
    "tp-taylor": lambda tp: tp.importance.GroupTaylorImportance(),
    "tp-lamp": lambda tp: tp.importance.LAMPImportance(p=2),
    "tp-hessian": lambda tp: tp.importance.GroupHessianImportance(),
}
NETWORKS = ("small-resnet", "resnet20", "mobilenetv2", "resnet56")


@dataclass(frozen=True)
class Protocol:
    """What is run; every row of a network shares it.

    Attributes:
        networks: from :data:`NETWORKS`.
        budgets: shares of the baseline's FLOPs.
        seeds: one fit, gradient draw, calibration and fine-tune order each.
        methods: from :data:`METHODS`.
        train_images / validation_images / test_images: seeded subsets (``None``: whole split);
            the training subset is what the fit, the gradients, calibration and fine-tuning see.
        finetune_epochs / finetune_lr / finetune_batch_size: the one fine-tune recipe.
        calibration_steps: Adam steps on the calibration scales (``None``: one pass).
        calibration_batchnorm_batches / calibration_check_batches: the calibration's
            BatchNorm-statistics and loss-check minibatches (:class:`CalibrationConfig`).
        gradient_batches: minibatches of 64 for Taylor's gradients; Hessian uses as many single examples.
        train_epochs: epochs to train a missing MobileNetV2/ResNet-56 baseline (0: skip the network).
    """

    networks: tuple[str, ...] = NETWORKS
    budgets: tuple[float, ...] = (0.5, 0.3)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    train_images: int | None = None
    validation_images: int | None = None
    test_images: int | None = None
    finetune_epochs: int = 30
    finetune_lr: float = 0.05
    finetune_batch_size: int = 128
    calibration_steps: int | None = None
    calibration_batchnorm_batches: int = 50
    calibration_check_batches: int = 8
    gradient_batches: int = 8
    train_epochs: int = 0

    def __post_init__(self) -> None:
        for name in self.networks:
            if name not in NETWORKS:
                raise ValueError(f"networks: unknown network {name!r}; choose from {', '.join(NETWORKS)}.")
        for name in self.methods:
            if name not in METHODS:
                raise ValueError(f"methods: unknown method {name!r}; choose from {', '.join(METHODS)}.")
        if not self.budgets or not all(0 < b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be fractions in (0, 1], got {self.budgets!r}.")


#: What fits on one shared CPU thread in well under an hour: the small BN ResNet and ResNet-20,
#: one seed, 2,000 training images (the fit, the gradients, calibration and fine-tuning),
#: 500 validation and 1,000 test images, one fine-tune epoch, a short calibration.
REDUCED = Protocol(networks=("small-resnet", "resnet20"), seeds=(0,),
                   methods=("dirichlet", "tp-magnitude", "tp-taylor", "tp-lamp"),
                   train_images=2000, validation_images=500, test_images=1000,
                   finetune_epochs=1, finetune_lr=0.01, calibration_steps=10, calibration_batchnorm_batches=10,
                   calibration_check_batches=2, gradient_batches=2)


# --- Torch-Pruning -------------------------------------------------------------------------------


def _classifier(network: nn.Module) -> nn.Module:
    return [m for m in network.modules() if isinstance(m, nn.Linear)][-1]


def _gradients(tp, model: nn.Module, importance, data: DataSplits, batches: int, seed: int) -> None:
    """What Taylor (a summed minibatch loss) and Hessian (one example at a time) read."""
    generator = torch.Generator().manual_seed(seed)
    model.zero_grad()
    hessian = isinstance(importance, tp.importance.GroupHessianImportance)
    if hessian:
        importance.zero_grad()
    for step, (images, labels, _) in enumerate(iterate_batches(data.train, 64, shuffle=True, generator=generator)):
        if step == batches:
            break
        if not hessian:
            F.cross_entropy(model(images), labels).backward()
            continue
        for k in range(min(32, len(images))):  # Torch-Pruning's recipe: each example's squared gradient
            model.zero_grad()
            F.cross_entropy(model(images[k:k + 1]), labels[k:k + 1]).backward()
            importance.accumulate_grad(model)
        break


class BrokenPruning(RuntimeError):
    """Torch-Pruning returned a network that no longer runs (a coupling its graph did not see)."""


def tp_prune_to_flops(
    network: nn.Module, method: str, budget: float, example: torch.Tensor, *, data: DataSplits | None = None,
    gradient_batches: int = 4, seed: int = 0, iterations: int = 8, only: set[str] | None = None,
) -> tuple[nn.Module, float]:
    """Torch-Pruning's global pruning of a copy of ``network`` to at most ``budget`` of its FLOPs.

    The channel ratio is bisected (``iterations`` times) for the largest network whose FLOPs
    fit; each try prunes a fresh copy (gradients drawn again for Taylor and Hessian).
    ``only``: prune only these Conv2d/Linear layers (the others are Torch-Pruning's
    ``ignored_layers``); ``None``: every layer but the classifier.

    Returns:
        ``(pruned network, the pruning ratio used)``.

    Raises:
        BrokenPruning: a pruned copy fails to run on ``example``.
    """
    import torch_pruning as tp  # the optional analysis dependency

    limit = budget * count_flops(network, example)

    def prune(ratio: float) -> nn.Module:
        model = copy.deepcopy(network).eval()
        importance = METHODS[method](tp)
        ignored = [_classifier(model)]
        if only is not None:
            ignored += [m for name, m in model.named_modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in only]
        pruner = tp.pruner.MetaPruner(model, example, importance=importance, global_pruning=True,
                                      pruning_ratio=ratio, max_pruning_ratio=0.95, ignored_layers=ignored)
        if method in ("tp-taylor", "tp-hessian"):
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            _gradients(tp, model, importance, data, gradient_batches, seed)
        pruner.step()
        model.zero_grad(set_to_none=True)
        try:
            with torch.no_grad():
                model(example)
        except RuntimeError as error:
            raise BrokenPruning(f"Torch-Pruning's {method} network at ratio {ratio:.3f} fails to run: "
                                f"{str(error).splitlines()[0]}") from error
        return model

    low, high, best = 0.0, 0.95, None
    for _ in range(iterations):
        middle = (low + high) / 2
        model = prune(middle)
        if count_flops(model, example) <= limit:
            best, high = (model, middle), middle
        else:
            low = middle
    if best is None:
        best = (prune(high), high)
    return best


# --- the project's pipeline ----------------------------------------------------------------------


def dirichlet_fit(network: nn.Module, data: DataSplits, seed: int):
    """``DirichletSwitches`` and ``fit`` with every default: ``(switches, posterior)``."""
    from pyro_dirichlet import DirichletSwitches, fit
    from pyro_dirichlet.infer.fit import FitConfig

    switches = DirichletSwitches(copy.deepcopy(network), data.train.images[:2])
    result = fit(switches, data.train, FitConfig(seed=seed, progress=False))
    return switches, result.posterior(seed=seed)


# --- networks ------------------------------------------------------------------------------------


def _cifar(protocol: Protocol, data_dir: str | None) -> DataSplits:
    data = load_dataset("cifar10", data_dir)
    return data.subset(train=protocol.train_images, validation=protocol.validation_images, test=protocol.test_images, seed=0)


def _trained_or_train(name: str, network: nn.Module, data: DataSplits, protocol: Protocol) -> tuple[nn.Module | None, str]:
    """``network`` with committed weights ``analysis/baselines/<name>-cifar10.safetensors``, else trained here."""
    from pyro_dirichlet.baselines.trained import load_checkpoint, save_checkpoint

    path = BASELINES / f"{name}-cifar10.safetensors"
    if path.exists():
        network.load_state_dict(load_checkpoint(path)[0])
        return network.eval(), str(path.relative_to(BASELINES.parent.parent))
    if protocol.train_epochs <= 0:
        return None, f"no trained baseline ({path.relative_to(BASELINES.parent.parent)} is missing; --train-epochs N trains one)"
    config = TrainConfig(epochs=protocol.train_epochs, lr=0.1, batch_size=128, optimizer="sgd", momentum=0.9,
                         nesterov=True, weight_decay=5e-4, schedule="cosine", label_smoothing=0.1)
    train_classifier(network, data, config, progress=False, device=_device())
    network = network.cpu().eval()
    save_checkpoint(path, network, {"model": name, "recipe": dataclasses.asdict(config)})
    return network, f"trained here ({protocol.train_epochs} epochs), saved to {path.name}"


def load_network(name: str, protocol: Protocol, data_dir: str | None, log=print) -> tuple[nn.Module | None, DataSplits | None, str]:
    """``(network in eval mode, its data cut to the protocol, where it came from)``; network None: skipped, with why."""
    if name == "small-resnet":
        from benchmarks.small_resnet import load_or_train_small_resnet

        network, data, record = load_or_train_small_resnet(data_dir=data_dir, log=log)
        data = data.subset(train=protocol.train_images, validation=protocol.validation_images,
                           test=protocol.test_images, seed=0)
        return network, data, f"trained by benchmarks.small_resnet {record['recipe']}"
    data = _cifar(protocol, data_dir)
    if name == "resnet20":
        from analysis.resnet20_cifar10 import load_weights

        network, _ = load_weights(BASELINES / "resnet20-cifar10.safetensors")
        return network, data, "analysis/baselines/resnet20-cifar10.safetensors"
    if name == "resnet56":
        from pyro_dirichlet.baselines import get_model_entry

        network, source = _trained_or_train(name, get_model_entry("resnet56").build(), data, protocol)
    else:
        from torchvision.models import mobilenet_v2

        network, source = _trained_or_train(name, mobilenet_v2(num_classes=10), data, protocol)
    return network, (data if network is not None else None), source


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- one network ---------------------------------------------------------------------------------


def _latency(network: nn.Module, example: torch.Tensor) -> dict[str, float]:
    network = copy.deepcopy(network).cpu().eval()
    return {f"latency_b{n}_ms": 1e3 * latency_seconds(network, example[:1].expand(n, -1, -1, -1).contiguous(), repeats=5)
            for n in (1, 64)}


def run_network(network: nn.Module, data: DataSplits, protocol: Protocol, *, log=print) -> dict:
    """Every (seed, budget, method) row of one network; the network is never modified."""
    network = copy.deepcopy(network).cpu().eval()
    example = data.train.images[:2]
    baseline = {"test_accuracy": accuracy(network, data.test), "validation_accuracy": accuracy(network, data.validation),
                "params": count_parameters(network), "flops": count_flops(network, example), **_latency(network, example)}
    recipe = TrainConfig(epochs=protocol.finetune_epochs, lr=protocol.finetune_lr, batch_size=protocol.finetune_batch_size,
                         optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine")
    rows = []
    for seed in protocol.seeds:
        fitted = None
        for method in protocol.methods:
            for budget in protocol.budgets:
                from pyro_dirichlet import prune_by_posterior_mean

                if method == "dirichlet" and fitted is None:  # one fit serves every budget
                    with Stopwatch() as fit_watch:
                        fitted = dirichlet_fit(network, data, seed)
                    fit_seconds = fit_watch.seconds
                with Stopwatch() as watch:
                    if method == "dirichlet":
                        switches, posterior = fitted
                        pruned, _ = prune_by_posterior_mean(network, posterior, budget=budget, example_inputs=example,
                                                            layers=switches.layers)
                        ratio = None
                    else:
                        options = dict(data=data, gradient_batches=protocol.gradient_batches, seed=seed)
                        try:
                            pruned, ratio = tp_prune_to_flops(network, method, budget, example, **options)
                            restricted = None
                        except BrokenPruning as error:
                            # Its graph misses a coupling (ResNet-20's zero-padded shortcuts): give
                            # it the layers the project switches, which it then prunes soundly.
                            restricted = str(error)
                            only = {m for layer in find_prunable_layers(network, example) for m in layer.members}
                            pruned, ratio = tp_prune_to_flops(network, method, budget, example, only=only, **options)
                seconds = watch.seconds + (fit_seconds if method == "dirichlet" else 0.0)
                pruned = pruned.eval()
                row = {"seed": seed, "budget": budget, "method": method, "seconds_to_pruned": seconds,
                       "fit_seconds": fit_seconds if method == "dirichlet" else None, "tp_ratio": ratio,
                       "tp_restricted_to_project_sites": None if method == "dirichlet" else restricted,
                       "params": count_parameters(pruned), "flops": count_flops(pruned, example),
                       "test_pruned": accuracy(pruned, data.test), "validation_pruned": accuracy(pruned, data.validation)}
                calibration = CalibrationConfig(steps=protocol.calibration_steps, seed=seed,
                                                batchnorm_batches=protocol.calibration_batchnorm_batches,
                                                check_batches=protocol.calibration_check_batches)
                calibrated = calibrate(pruned, data.train, example, calibration).network.eval()
                row.update({"test_calibrated": accuracy(calibrated, data.test),
                            "validation_calibrated": accuracy(calibrated, data.validation)})
                if protocol.finetune_epochs > 0:
                    with Stopwatch() as tune:
                        train_classifier(calibrated, data, dataclasses.replace(recipe, seed=seed), progress=False,
                                         keep_initial=True, device=_device())
                    calibrated = calibrated.cpu().eval()
                    row.update({"test_finetuned": accuracy(calibrated, data.test),
                                "validation_finetuned": accuracy(calibrated, data.validation),
                                "finetune_seconds": tune.seconds})
                row.update(_latency(calibrated, example))
                rows.append(row)
                log(f"  seed {seed} {budget:.0%} FLOPs {method}: {row['flops'] / baseline['flops']:.3f} of the FLOPs, "
                    f"pruned {row['test_pruned']:.4f}, calibrated {row['test_calibrated']:.4f}, "
                    f"fine-tuned {row.get('test_finetuned', float('nan')):.4f} ({seconds:.1f} s to prune)")
    return {"protocol": dataclasses.asdict(protocol), "baseline": baseline, "rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean (and sd over seeds) of each (budget, method)."""
    out = []
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            group = [r for r in rows if r["budget"] == budget and r["method"] == method]
            if not group:
                continue
            entry = {"budget": budget, "method": method, "seeds": len(group)}
            for key in ("test_pruned", "test_calibrated", "test_finetuned", "params", "flops", "seconds_to_pruned",
                        "latency_b1_ms", "latency_b64_ms"):
                values = [r[key] for r in group if r.get(key) is not None]
                if values:
                    entry[key] = statistics.fmean(values)
                    entry[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            out.append(entry)
    return out


# --- the results page's table --------------------------------------------------------------------


def readme_table(result: dict) -> str:
    """The Markdown table docs/results.md shows, from the JSON alone."""
    lines = [
        "| network | FLOPs budget | method | seeds | after pruning | after calibration | after fine-tuning | params | FLOPs | "
        "latency b1 / b64 (ms) | s to pruned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["networks"].items():
        base = entry["baseline"]
        lines.append(f"| {name} | 100% | unpruned | | {base['test_accuracy']:.2%} | | | {base['params']:,} | "
                     f"{base['flops'] / 1e6:.1f} M | {base['latency_b1_ms']:.2f} / {base['latency_b64_ms']:.1f} | |")
        for row in entry["summary"]:
            def pct(key):
                return f"{row[key]:.2%}" + (f" ± {row[key + '_sd']:.2%}" if row["seeds"] > 1 else "") if key in row else "—"
            lines.append(
                f"| {name} | {row['budget']:.0%} | {row['method']} | {row['seeds']} | {pct('test_pruned')} | "
                f"{pct('test_calibrated')} | {pct('test_finetuned')} | {row['params']:,.0f} | {row['flops'] / 1e6:.1f} M | "
                f"{row['latency_b1_ms']:.2f} / {row['latency_b64_ms']:.1f} | "
                + (f"{row['seconds_to_pruned']:.1f} |" if "seconds_to_pruned" in row else "— |"))
    for name, why in result.get("skipped", {}).items():
        lines.append(f"| {name} | | not run: {why} | | | | | | | | |")
    return "\n".join(lines)


def write_readme_table(result: dict, readme: Path = RESULTS_PAGE) -> None:
    """Replace the table between the markers of docs/results.md by :func:`readme_table` of ``result``."""
    readme.write_text(replace_section(readme.read_text(), "versus-torch-pruning", readme_table(result)))


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versus_torch_pruning", description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="the ~30-minute CPU configuration (REDUCED)")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS))
    parser.add_argument("--budgets", nargs="+", type=float)
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--finetune-epochs", type=int)
    parser.add_argument("--finetune-lr", type=float)
    parser.add_argument("--train-images", type=int)
    parser.add_argument("--train-epochs", type=int, help="train a missing MobileNetV2/ResNet-56 baseline this many epochs")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--add", action="store_true", help="keep the networks already in --out, replacing those run now")
    parser.add_argument("--readme", action="store_true", help="also write the table into docs/results.md")
    parser.add_argument("--table-only", action="store_true", help="only regenerate the table in docs/results.md from --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_only:
        write_readme_table(json.loads(args.out.read_text()))
        return 0
    protocol = REDUCED if args.reduced else Protocol()
    overrides = {key: (tuple(value) if isinstance(value, list) else value) for key, value in {
        "networks": args.networks, "methods": args.methods, "budgets": args.budgets, "seeds": args.seeds,
        "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr, "train_images": args.train_images,
        "train_epochs": args.train_epochs}.items() if value is not None}
    protocol = dataclasses.replace(protocol, **overrides)
    import torch_pruning  # noqa: F401  fail early, before hours of work, if the optional dependency is missing

    command = "python -m benchmarks.versus_torch_pruning " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"commands": [], "environment": {}, "networks": {}, "skipped": {}}
    if args.add and args.out.exists():
        result.update(json.loads(args.out.read_text()))
    result["commands"] = [*result["commands"], command]
    result["environment"] = {"torch": torch.__version__, "torch_pruning": importlib.metadata.version("torch-pruning"),
                             "threads": torch.get_num_threads(), "device": _device(), "machine": platform.machine()}
    for name in protocol.networks:
        print(f"{name}:", flush=True)
        network_started = time.perf_counter()
        network, data, source = load_network(name, protocol, args.data_dir)
        if network is None:
            result["skipped"][name] = source
            print(f"  skipped: {source}", flush=True)
            continue
        result["skipped"].pop(name, None)
        result["networks"][name] = {"source": source, "data": f"{len(data.train)} train / {len(data.validation)} validation / "
                                                              f"{len(data.test)} test", **run_network(network, data, protocol)}
        result["networks"][name]["seconds"] = time.perf_counter() - network_started
        atomic_write_json(args.out, result)
    atomic_write_json(args.out, result)
    if args.readme:
        write_readme_table(result)
    print(readme_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
