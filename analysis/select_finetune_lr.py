"""Choose the fine-tuning learning rate of the main job on the validation split (never the test set).

Fits the switches of the cached LeNet-5 baseline once per seed, prunes to the default target,
fine-tunes with each candidate peak learning rate, and ranks the candidates by mean best
validation accuracy. Test accuracy is printed for information only.

    python -m analysis.select_finetune_lr --seeds 2 --json analysis/results/select_finetune_lr.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from pyro_dirichlet.baselines import get_model_entry, load_or_train_baseline
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.data import load_dataset
from pyro_dirichlet.repair.train import finetune
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.pruning import prune_by_posterior_mean
from pyro_dirichlet.infer.switches import DirichletSwitches

CANDIDATES = (1e-3, 3e-3, 1e-2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    entry = get_model_entry(args.model)
    data = load_dataset(entry.dataset, args.data_dir)
    example = data.train.images[:2]
    rows = []
    for seed in range(args.seeds):
        network = load_or_train_baseline(args.model, data, seed=seed, progress=False).model
        result = fit(DirichletSwitches(network, example), data.train, FitConfig(seed=seed, device="cpu", progress=False))
        posterior = result.posterior(seed=seed)
        for lr in CANDIDATES:
            pruned, _ = prune_by_posterior_mean(network, posterior, entry.default_keep, example)
            tuning = finetune(pruned, data, epochs=args.epochs, lr=lr, seed=seed, progress=False)
            rows.append({
                "seed": seed,
                "lr": lr,
                "validation_accuracy": tuning.best_validation_accuracy,
                "test_accuracy": accuracy(pruned, data.test),
            })
            print(json.dumps(rows[-1]), flush=True)
    summary = {
        lr: statistics.mean(r["validation_accuracy"] for r in rows if r["lr"] == lr) for lr in CANDIDATES
    }
    chosen = max(summary, key=summary.get)
    print(f"{'lr':>8s} {'mean validation accuracy':>26s}")
    for lr, value in summary.items():
        print(f"{lr:8g} {value:26.4f}{'  <- chosen' if lr == chosen else ''}")
    result = {"model": args.model, "target": entry.default_keep, "rows": rows,
              "mean_validation_accuracy": {str(k): v for k, v in summary.items()}, "chosen_lr": chosen,
              "torch": torch.__version__}
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
