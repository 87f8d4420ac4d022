"""The ``pyro-dirichlet`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_dirichlet.fitting import FitConfig
from pyro_dirichlet.pipeline import RunConfig, run

__all__ = ["main", "build_parser", "parse_target"]


def parse_target(text: str) -> dict[str, int | float]:
    """Parse ``"conv1=5,conv2=0.25"`` into ``{"conv1": 5, "conv2": 0.25}`` (counts or fractions)."""
    target: dict[str, int | float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"--keep expects LAYER=COUNT or LAYER=FRACTION items, got {item!r}.")
        try:
            target[name.strip()] = int(value) if value.strip().isdigit() else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--keep value for {name.strip()!r} is not a number: {value!r}.") from None
    if not target:
        raise argparse.ArgumentTypeError("--keep is empty.")
    return target


def build_parser() -> argparse.ArgumentParser:
    from models import MODELS
    from pyro_dirichlet.data import DATASETS

    parser = argparse.ArgumentParser(prog="pyro-dirichlet", description="Dirichlet pruning of trained networks with Pyro.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser(
        "run",
        help="train (or reuse) a baseline, fit the switches, prune by posterior mean, fine-tune, report",
        description="Train or reuse the baseline, fit the Dirichlet switches by SVI, prune by posterior mean, "
        "fine-tune, and write report.json, posterior.nc, forest.png and the pruned model into --out.",
    )
    run_parser.add_argument("--model", default="lenet5", choices=sorted(MODELS), help="network architecture (default: lenet5)")
    run_parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS), help="data set (default: mnist)")
    run_parser.add_argument("--out", type=Path, required=True, help="run directory to write")
    run_parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="folder holding the data sets (default: $PYRO_DIRICHLET_DATA, then ./data with download)",
    )
    run_parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    run_parser.add_argument("--seed", type=int, default=0, help="seed for training, SVI and fine-tuning")
    run_parser.add_argument(
        "--keep", type=parse_target, default=None,
        help="channels to keep per layer, e.g. conv1=5,conv2=12,fc1=40 (counts) or conv1=0.25 (fractions); "
        "default: the model's documented target",
    )
    run_parser.add_argument(
        "--layers", type=lambda text: tuple(filter(None, (n.strip() for n in text.split(",")))), default=None,
        help="comma-separated layers to switch and prune, e.g. conv1,fc1 (default: every conv and hidden linear layer)",
    )
    run_parser.add_argument(
        "--coupled", choices=["skip", "group"], default="skip",
        help="channels coupled through residual adds: skip (leave unpruned, default) or group (one shared switch)",
    )
    run_parser.add_argument("--prior", type=float, default=1.0, help="symmetric Dirichlet prior concentration (default 1)")
    run_parser.add_argument("--epochs", type=int, default=1, help="SVI epochs (default 1)")
    run_parser.add_argument("--lr", type=float, default=FitConfig.lr, help=f"SVI Adam learning rate (default {FitConfig.lr})")
    run_parser.add_argument("--finetune-epochs", type=int, default=3, help="fine-tune epochs after pruning (default 3)")
    run_parser.add_argument(
        "--finetune-lr", type=float, default=RunConfig.finetune_lr,
        help=f"peak Adam learning rate of fine-tuning (default {RunConfig.finetune_lr})",
    )
    run_parser.add_argument("--cache-dir", type=Path, default=None, help="where trained baselines are cached")
    run_parser.add_argument(
        "--subset", type=int, default=None,
        help="smoke run: train on this many examples (validation and test a quarter each); not comparable with full runs",
    )
    run_parser.add_argument("--train-epochs", type=int, default=None, help="baseline training epochs (default: the model's recipe)")
    run_parser.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-dirichlet`` command."""
    args = build_parser().parse_args(argv)
    try:
        config = RunConfig(
            model=args.model,
            dataset=args.dataset,
            out=args.out,
            data_dir=args.data_dir,
            layers=args.layers,
            coupled=args.coupled,
            target=args.keep,
            prior=args.prior,
            fit=FitConfig(epochs=args.epochs, lr=args.lr),
            finetune_epochs=args.finetune_epochs,
            finetune_lr=args.finetune_lr,
            seed=args.seed,
            device=args.device,
            cache_dir=args.cache_dir,
            subset=args.subset,
            train_epochs=args.train_epochs,
            progress=not args.quiet,
        )
        run(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"pyro-dirichlet: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
