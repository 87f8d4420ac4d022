"""External check of the baseline criteria: the project's L1 / BN-gamma / Taylor against Torch-Pruning's.

Torch-Pruning 1.6.0 (an optional analysis dependency, ``pip install -e '.[analysis]'``; the
library never imports it) scores a channel through its *dependency group*: the layer's
filters, the BatchNorm after it and the input channels of every layer that reads it. Here
each of its importances scores every prunable layer the project finds, the scores go
through the project's own plan (same per-layer keep counts) and surgery, and the keep sets
are compared with the project's criteria: Jaccard overlap per layer and test accuracy right
after pruning. Two diagnostic variants isolate *why* they differ: ``own layer`` rows
(``group_reduction="first"``, no normaliser) score only the layer's own weights, as the
project does, so they must agree with it exactly where the criterion is the same quantity.

    python -m analysis.external_baselines --out analysis/results/external

What each pair compares (higher = keep; all normalisers Torch-Pruning applies are per
layer and monotone, so at fixed per-layer counts they never change a keep set):

- ``l1-norm`` vs ``tp magnitude p=1``: sum |w| of the layer's filter vs the mean over the
  group of sum |w| (filter, BatchNorm |gamma|, consumers' input-channel weights).
- ``batchnorm-scale`` vs ``tp bn-scale``: |gamma| of the BatchNorm after the layer, both.
- ``taylor`` vs ``tp taylor``: the project's is Molchanov et al. 2017 on *activations*,
  ``E_x |sum_hw a dL/da|`` with the absolute value per example; Torch-Pruning's is
  Molchanov et al. 2019 on *weights*, ``sum_w |w dL/dw|`` on the gradient summed over all
  batches (the absolute value after summing over examples, before summing over weights),
  averaged over the group; its BatchNorm term is never used in 1.6.0 (the branch tests for
  ``prune_groupnorm_out_channels``).
- ``l1-norm`` vs ``tp lamp``: LAMP (Lee et al. 2021) rescales squared-L2 group magnitudes by
  the mass of the larger ones, a monotone map within a layer: at fixed per-layer counts it
  keeps what group L2 keeps; it differs from L1 only by p and the grouping.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyro_dirichlet.io.atomic import atomic_write_json, atomic_write_text
from pyro_dirichlet.data import BatchSource, DataSplits, iterate_batches, load_dataset
from pyro_dirichlet.criteria import Scores, get_criterion
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.pruner import Pruner
from pyro_dirichlet.structure import PrunableLayer

__all__ = ["ExternalCriterion", "EXTERNAL", "PAIRS", "jaccard", "torch_pruning_scores", "compare_keep_sets", "main"]


@dataclass(frozen=True)
class ExternalCriterion:
    """One Torch-Pruning importance, built lazily so importing this module does not need the package.

    Attributes:
        build: ``torch_pruning module -> importance object`` (called once per network).
        gradients: whether the importance reads ``.grad`` of the weights (Taylor).
        note: what it scores, for the tables.
    """

    build: Callable[[object], object]
    gradients: bool
    note: str


#: Torch-Pruning's importances and the two own-layer diagnostics, by row name.
EXTERNAL: dict[str, ExternalCriterion] = {
    "tp magnitude p=1": ExternalCriterion(
        lambda tp: tp.importance.MagnitudeImportance(p=1), False,
        "MagnitudeImportance(p=1): mean over the dependency group of sum |w|, normalised by its mean"),
    "tp magnitude p=1, own layer": ExternalCriterion(
        lambda tp: tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None), False,
        "MagnitudeImportance(p=1, group_reduction='first', normalizer=None): the layer's own filters only"),
    "tp bn-scale": ExternalCriterion(
        lambda tp: tp.importance.BNScaleImportance(), False,
        "BNScaleImportance(): |gamma| of the group's BatchNorms, normalised by its mean"),
    "tp taylor": ExternalCriterion(
        lambda tp: tp.importance.TaylorImportance(), True,
        "TaylorImportance(): mean over the group of sum_w |w dL/dw|, gradient summed over the batches"),
    "tp taylor, own layer": ExternalCriterion(
        lambda tp: tp.importance.TaylorImportance(group_reduction="first", normalizer=None), True,
        "TaylorImportance(group_reduction='first', normalizer=None): the layer's own filters only"),
    "tp lamp": ExternalCriterion(
        lambda tp: tp.importance.LAMPImportance(), False,
        "LAMPImportance(): LAMP-normalised squared-L2 group magnitude"),
}

#: (project criterion, Torch-Pruning row) pairs whose keep sets are compared.
PAIRS: tuple[tuple[str, str], ...] = (
    ("l1-norm", "tp magnitude p=1"),
    ("l1-norm", "tp magnitude p=1, own layer"),
    ("l1-norm", "tp lamp"),
    ("batchnorm-scale", "tp bn-scale"),
    ("taylor", "tp taylor"),
    ("taylor", "tp taylor, own layer"),
)


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two keep sets (1.0: the same channels).

    Example:
        >>> jaccard([0, 1, 2], [1, 2, 3])
        0.5
    """
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def torch_pruning_scores(
    network: nn.Module,
    layers: Sequence[PrunableLayer],
    names: Sequence[str],
    example: torch.Tensor,
    *,
    data: BatchSource | None = None,
    batches: int | None = 10,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, Scores]:
    """``{row name: {layer: scores}}`` of the Torch-Pruning rows ``names`` on a copy of ``network``.

    Each layer is scored through the group Torch-Pruning's dependency graph builds for
    pruning its output channels. Gradient-based rows read the weight gradients of the
    cross-entropy summed over the same minibatches the project's Taylor criterion sees
    (same ``batches``, ``batch_size`` and shuffle ``seed``), in eval mode as there. A row
    with nothing to score in a layer's group (BN-scale without a BatchNorm) is left out.
    """
    import torch_pruning as tp  # the optional analysis dependency; only this function needs it

    model = copy.deepcopy(network).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    if any(EXTERNAL[name].gradients for name in names):
        if data is None:
            raise TypeError("Torch-Pruning's Taylor importance needs data: a Split or an iterable of (inputs, targets) batches.")
        _accumulate_gradients(model, data, batches=batches, batch_size=batch_size, seed=seed)
    modules = dict(model.named_modules())
    found: dict[str, Scores] = {}
    for name in names:
        importance = EXTERNAL[name].build(tp)
        scores = {}
        for layer in layers:
            module = modules[layer.name]
            prune = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
            group = graph.get_pruning_group(module, prune, idxs=list(range(layer.channels)))
            score = importance(group)
            if score is not None:
                scores[layer.name] = score.detach().to(torch.float64).cpu()
        if len(scores) == len(layers):
            found[name] = scores
    return found


def _accumulate_gradients(model: nn.Module, data: BatchSource, *, batches: int | None, batch_size: int, seed: int) -> None:
    # Torch-Pruning's recipe: loss.backward() per batch, gradients accumulating in .grad.
    for parameter in model.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for step, (images, labels, _) in enumerate(iterate_batches(data, batch_size, shuffle=True, generator=generator)):
        if step == batches:
            break
        F.cross_entropy(model(images.to(device)), labels.to(device), reduction="sum").backward()


def compare_keep_sets(
    network: nn.Module,
    data: DataSplits,
    budgets: Mapping[str, Mapping[str, int]],
    *,
    taylor_batches: int | None = 10,
    seed: int = 0,
    evaluate: bool = True,
) -> dict:
    """Keep sets of the project's criteria and Torch-Pruning's at every budget, their overlap and accuracy.

    Returns ``{"layers", "budgets": {budget: {"keep": {row: {layer: indices}}, "test_pruned":
    {row: accuracy}, "jaccard": [{"project", "external", "per_layer", "mean"}]}}}``.
    Accuracies (right after pruning, cut by :meth:`pyro_dirichlet.Pruner.cut`)
    are left out when ``evaluate`` is false.
    """
    example = data.train.images[:2]
    pruner = Pruner(network, example)
    layers = pruner.layers
    project_names = sorted({project for project, _ in PAIRS})
    project = {}
    for name in project_names:
        options = {"batches": taylor_batches, "seed": seed} if name == "taylor" else {}
        try:
            project[name] = get_criterion(name, **options)(network, layers, data.train)
        except ValueError:  # batchnorm-scale on a network without BatchNorms
            continue
    external = torch_pruning_scores(network, layers, list(EXTERNAL), example, data=data.train,
                                    batches=taylor_batches, seed=seed)
    rows = {**project, **external}
    out = {"layers": [layer.name for layer in layers], "budgets": {}}
    for budget, target in budgets.items():
        keep = {row: pruner.plan(scores, dict(target)) for row, scores in rows.items()}
        entry: dict = {"target": dict(target), "keep": keep, "jaccard": []}
        for mine, theirs in PAIRS:
            if mine in keep and theirs in keep:
                per_layer = {layer: jaccard(keep[mine][layer], keep[theirs][layer]) for layer in target}
                entry["jaccard"].append({"project": mine, "external": theirs, "per_layer": per_layer,
                                         "mean": sum(per_layer.values()) / len(per_layer)})
        if evaluate:
            entry["test_pruned"] = {row: accuracy(pruner.cut(indices), data.test)
                                    for row, indices in keep.items()}
        out["budgets"][budget] = entry
    return out


def markdown(result: dict) -> str:
    lines = ["# External check: the project's criteria against Torch-Pruning 1.6.0", ""]
    for case in result["cases"]:
        lines += [f"## {case['name']}", "", f"{case['description']} Baseline test accuracy "
                  f"{100 * case['baseline_test_accuracy']:.2f}%. Taylor rows: {case['taylor_batches']} minibatches of 128.", ""]
        for budget, entry in case["budgets"].items():
            lines += [f"### {budget}", "", "| project | Torch-Pruning | mean Jaccard | per layer | test acc. project | test acc. TP |",
                      "|---|---|---|---|---|---|"]
            accuracies = entry.get("test_pruned", {})
            for pair in entry["jaccard"]:
                per_layer = ", ".join(f"{j:.2f}" for j in pair["per_layer"].values())
                mine, theirs = (accuracies.get(pair[k]) for k in ("project", "external"))
                cells = " | ".join("-" if a is None else f"{100 * a:.2f}%" for a in (mine, theirs))
                lines.append(f"| {pair['project']} | {pair['external']} | {pair['mean']:.3f} | {per_layer} | {cells} |")
            lines.append("")
    lines += ["Rows: " + "; ".join(f"**{name}** {c.note}" for name, c in EXTERNAL.items()) + ".", ""]
    return "\n".join(lines)


def _lenet5_case(data_dir: str | None, seed: int, taylor_batches: int | None) -> dict:
    from analysis.compare import BUDGETS
    from analysis.study import baseline

    data = load_dataset("mnist", data_dir)
    network = baseline("lenet5", data, seed)
    result = compare_keep_sets(network, data, BUDGETS["lenet5"], taylor_batches=taylor_batches, seed=seed)
    return {"name": "LeNet-5 / MNIST", "description": f"The trained LeNet-5-Caffe baseline of seed {seed} (registry recipe), "
            f"{len(data.test):,} test images.", "baseline_test_accuracy": accuracy(network, data.test),
            "taylor_batches": taylor_batches, **result}


def _resnet20_case(data_dir: str | None, seed: int, taylor_batches: int | None, subset: int, epochs: int) -> dict:
    from analysis.compare import BUDGETS
    from analysis.study import baseline

    data = load_dataset("cifar10", data_dir).subset(train=subset, validation=max(2, subset // 10), test=1000, seed=0)
    network = baseline("resnet20", data, seed, train_epochs=epochs)
    result = compare_keep_sets(network, data, BUDGETS["resnet20"], taylor_batches=taylor_batches, seed=seed)
    return {"name": "ResNet-20 / CIFAR-10 (JPEG copy)", "description": f"ResNet-20 briefly trained ({epochs} epochs on "
            f"{subset:,} training images, registry recipe otherwise, seed {seed}): keep-set agreement, not accuracy, is the "
            f"point; {len(data.test):,} test images.", "baseline_test_accuracy": accuracy(network, data.test),
            "taylor_batches": taylor_batches, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for external.json and external.md")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--taylor-batches", type=int, default=40, help="minibatches of 128 both Taylor criteria see")
    parser.add_argument("--resnet-subset", type=int, default=5000, help="CIFAR-10 training images for ResNet-20")
    parser.add_argument("--resnet-epochs", type=int, default=4, help="ResNet-20 training epochs")
    parser.add_argument("--cases", nargs="+", choices=("lenet5", "resnet20"), default=["lenet5", "resnet20"])
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cases = []
    if "lenet5" in args.cases:
        cases.append(_lenet5_case(args.data_dir, args.seed, args.taylor_batches))
    if "resnet20" in args.cases:
        cases.append(_resnet20_case(args.data_dir, args.seed, args.taylor_batches, args.resnet_subset, args.resnet_epochs))
    import torch_pruning

    result = {"torch_pruning": getattr(torch_pruning, "__version__", _distribution_version("torch-pruning")),
              "cases": cases, "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "external.json", result)
    atomic_write_text(args.out / "external.md", markdown(result))
    print(markdown(result), flush=True)
    return 0


def _distribution_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    raise SystemExit(main())
