"""Train (or fetch from the cache) the baseline of a registered model with its registry recipe.

The full recipes are meant for a GPU; ``--epochs``, ``--subset`` and ``--eval-subset`` cut
them down to a CPU smoke run. Prints the baseline's metadata as JSON and writes it to
``--json`` when given. A recipe changed by these flags is a different cache entry.

    python -m analysis.train_baseline --model vgg16 --dataset cifar10 --device cuda
    python -m analysis.train_baseline --model resnet56 --epochs 1 --subset 2000 --eval-subset 500
    python -m analysis.train_baseline --model resnet20 --device cuda --epochs 100 --batch-size 512 --lr 0.4
    python -m analysis.train_baseline --model resnet56 --precision bf16 --channels-last --compile   # CPU, hours: rerun resumes

A killed run resumes from the cache's ``<entry>.resume.pt`` at its last finished epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from pyro_dirichlet.baselines.trained import load_or_train_baseline
from pyro_dirichlet.baselines.registry import MODELS, get_model_entry
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.data import load_dataset


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--dataset", help="data set name; defaults to the model's own")
    parser.add_argument("--data-dir", help="folder holding the data sets")
    parser.add_argument("--cache-dir", help="baseline cache folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=_positive, help="replace the recipe's epoch count")
    parser.add_argument("--lr", type=float, help="replace the recipe's peak learning rate (a warm restart wants less)")
    parser.add_argument(
        "--batch-size", type=_positive, help="replace the recipe's batch size (a GPU wants larger batches, and a larger --lr)"
    )
    parser.add_argument("--subset", type=_positive, help="train on a seeded subset of this size")
    parser.add_argument(
        "--eval-subset", type=_positive, help="cut validation and test to this size (smoke runs)"
    )
    parser.add_argument("--json", type=Path, help="also write the metadata here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=_positive, help="torch CPU threads")
    parser.add_argument(
        "--init-from", type=Path, help="start from this checkpoint (a warm restart) instead of a seeded init"
    )
    parser.add_argument("--channels-last", action="store_true", help="train in channels-last memory format")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile (a bf16 ResNet-20 epoch 0.74x as long on a CPU with AMX, "
                             "after about 20 s of compiling; not part of the recipe, so the same cache entry)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                        help="replace the recipe's precision: bf16 autocast is 2x faster on a CPU with AMX "
                             "(benchmarks/results/precision.json); part of the recipe, so another cache entry")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    entry = get_model_entry(args.model)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda":
        # Every training batch has one shape: cuDNN's autotuner pays once and wins each step.
        torch.backends.cudnn.benchmark = True
    dataset = args.dataset or entry.dataset
    started = time.perf_counter()
    data = load_dataset(dataset, args.data_dir)
    load_seconds = time.perf_counter() - started
    data = data.subset(train=args.subset, validation=args.eval_subset, test=args.eval_subset, seed=0)
    changes = {
        name: value
        for name, value in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size),
                            ("precision", args.precision))
        if value is not None
    }
    config = dataclasses.replace(entry.train, **changes, compile=args.compile)
    baseline = load_or_train_baseline(
        args.model,
        data,
        device=args.device,
        cache_dir=args.cache_dir,
        seed=args.seed,
        progress=not args.no_progress,
        train_config=config,
        channels_last=args.channels_last,
        init_from=args.init_from,
    )
    report = {
        **baseline.metadata,
        "trained_now": baseline.trained_now,
        "data_load_seconds": load_seconds,
        "sizes": [len(data.train), len(data.validation), len(data.test)],
    }
    print(json.dumps(report, indent=2, sort_keys=True))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
