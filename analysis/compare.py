"""Dirichlet pruning against simple baselines at equal keep counts (issue 4's protocol).

For each seed: the seeded baseline network, one SVI fit of its switches, then for every
importance criterion and every budget the same per-layer keep counts; test accuracy right
after pruning and after 1 and 3 fine-tune epochs (each fine-tune keeps its best epoch on the
validation split; the test set is only reported). Writes ``DIR/comparison.json`` and
``DIR/comparison.md`` (mean and sd over seeds).

    python -m analysis.compare --model lenet5 --dataset mnist --seeds 3 --out analysis/results/lenet5-mnist
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models import get_model_entry, load_or_train_baseline
from pyro_dirichlet.atomic import atomic_write_json, atomic_write_text
from pyro_dirichlet.data import DataSplits, load_dataset
from pyro_dirichlet.finetuning import finetune
from pyro_dirichlet.fitting import FitConfig, fit
from pyro_dirichlet.importance import l1_norm, posterior_lower_bound, posterior_mean, random_scores, taylor
from pyro_dirichlet.measure import accuracy, count_flops, count_parameters
from pyro_dirichlet.plan import plan_keep
from pyro_dirichlet.pruning import switch_scales
from pyro_dirichlet.surgery import fold_scales, prune_channels
from pyro_dirichlet.switches import DirichletSwitches

#: Budgets for LeNet-5-Caffe: keep counts of conv1 (20), conv2 (50), fc1 (500).
BUDGETS = {
    "lenet5": {
        "tight (5-12-40)": {"conv1": 5, "conv2": 12, "fc1": 40},
        "medium (8-20-80)": {"conv1": 8, "conv2": 20, "fc1": 80},
    },
}
STAGES = ("pruned", "finetune_1", "finetune_3")


def criteria(network: nn.Module, switches: DirichletSwitches, posterior, data: DataSplits, seed: int) -> dict[str, tuple[dict, bool]]:
    """``{name: (scores, fold)}``: fold says whether the posterior-mean scales are folded in."""
    layers = switches.layers
    dirichlet = posterior_mean(posterior)
    return {
        "dirichlet mean + fold": (dirichlet, True),
        "dirichlet mean": (dirichlet, False),
        "dirichlet HDI lower": (posterior_lower_bound(posterior), True),
        "random": (random_scores(layers, seed=seed), False),
        "l1-norm": (l1_norm(network, layers), False),
        "taylor": (taylor(network, layers, data.train, seed=seed), False),
    }


def evaluate(network, example, scores, fold, posterior_means, target, data, seed, finetune_lr) -> dict:
    keep = plan_keep(scores, target)
    source = network
    if fold:
        source = fold_scales(network, switch_scales(posterior_means), example)
    pruned = prune_channels(source, keep, example)
    row = {"params": count_parameters(pruned), "flops": count_flops(pruned, example), "pruned": accuracy(pruned, data.test)}
    # Each fine-tune length starts from the same pruned network with its own cosine schedule.
    for stage, epochs in (("finetune_1", 1), ("finetune_3", 3)):
        tuned = prune_channels(source, keep, example)
        finetune(tuned, data, epochs=epochs, lr=finetune_lr, seed=seed, progress=False)
        tuned.eval()
        row[stage] = accuracy(tuned, data.test)
    return row


def run(model: str, dataset: str, seeds: int, data_dir, finetune_lr: float, log: Callable[[str], None]) -> dict:
    entry = get_model_entry(model)
    if dataset != entry.dataset:
        raise ValueError(f"model {model!r} is trained on {entry.dataset!r}, not dataset {dataset!r}.")
    data = load_dataset(dataset, data_dir)
    example = data.train.images[:2]
    rows = []
    for seed in range(seeds):
        network = load_or_train_baseline(model, data, seed=seed, progress=False).model
        baseline = {"test_accuracy": accuracy(network, data.test), "params": count_parameters(network), "flops": count_flops(network, example)}
        switches = DirichletSwitches(copy.deepcopy(network), example)
        result = fit(switches, data.train, FitConfig(seed=seed, device="cpu", progress=False))
        posterior = result.posterior(seed=seed)
        means = posterior_mean(posterior)
        for name, (scores, fold) in criteria(network, switches, posterior, data, seed).items():
            for budget, target in BUDGETS[model].items():
                row = {"seed": seed, "criterion": name, "budget": budget, "baseline": baseline, "svi_seconds": result.seconds}
                row.update(evaluate(network, example, scores, fold, means, target, data, seed, finetune_lr))
                rows.append(row)
                log(json.dumps({k: v for k, v in row.items() if k != "baseline"}))
    return {"model": model, "dataset": dataset, "seeds": seeds, "budgets": BUDGETS[model], "finetune_lr": finetune_lr, "rows": rows}


def summarise(result: dict) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in result["rows"]:
        groups.setdefault((row["budget"], row["criterion"]), []).append(row)
    table = []
    for (budget, criterion), rows in groups.items():
        entry = {"budget": budget, "criterion": criterion, "params": rows[0]["params"], "flops": rows[0]["flops"]}
        for stage in STAGES:
            values = [r[stage] for r in rows]
            entry[f"{stage}_mean"] = statistics.mean(values)
            entry[f"{stage}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def markdown(result: dict, table: list[dict]) -> str:
    base = result["rows"][0]["baseline"]
    lines = [
        f"# {result['model']} on {result['dataset']}: criteria at equal keep counts",
        "",
        f"Test accuracy, mean ± sd over {result['seeds']} seeds (baseline networks {base['params']:,} parameters, "
        f"{base['flops']:,} FLOPs). Fine-tuning: Adam, peak lr {result['finetune_lr']}, cosine, best epoch on validation.",
        "",
        "| budget | criterion | params | FLOPs | right after pruning | 1 fine-tune epoch | 3 fine-tune epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in table:
        cells = " | ".join(f"{100 * e[f'{s}_mean']:.2f} ± {100 * e[f'{s}_sd']:.2f}" for s in STAGES)
        lines.append(f"| {e['budget']} | {e['criterion']} | {e['params']:,} | {e['flops']:,} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", choices=sorted(BUDGETS))
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--finetune-lr", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args.model, args.dataset, args.seeds, args.data_dir, args.finetune_lr, log=lambda line: print(line, flush=True))
    table = summarise(result)
    result["summary"] = table
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "comparison.json", result)
    atomic_write_text(args.out / "comparison.md", markdown(result, table))
    print(markdown(result, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
