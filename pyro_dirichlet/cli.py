"""The ``pyro-dirichlet`` command line: one subcommand per step of a run, and ``run`` for all of them.

Every subcommand takes the same flags for the same things (``--out``/``--run``,
``--data-dir``, ``--device``, ``--seed``, ``--quiet``, ``--config``); a value comes from the
command line, else from the ``--config`` TOML file, else from the defaults shown by
``--help``. Bad input ends with a one-sentence error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_dirichlet.config import config_values, read_config
from pyro_dirichlet.finetuning import DEFAULT_EPOCHS, DEFAULT_LR
from pyro_dirichlet.fitting import FitConfig

__all__ = ["main", "build_parser", "parse_target", "parse_layers"]

COMMANDS = ("train", "fit", "prune", "finetune", "report", "run")

# Defaults of every option; a step's own dataclass holds the reasons for them.
DEFAULTS: dict[str, Any] = {
    "out": None, "model": None, "dataset": None, "data_dir": None, "device": "auto", "seed": 0, "quiet": False,
    "subset": None, "train_epochs": None, "cache_dir": None,
    "layers": None, "coupled": "skip", "prior": 1.0, "epochs": 1, "lr": FitConfig.lr, "effective_data_size": None,
    "ci_prob": 0.95,
    "keep": None, "budget": None, "budget_cost": "flops",
    "finetune_epochs": DEFAULT_EPOCHS, "finetune_lr": DEFAULT_LR,
    "latency_batch": 256,
}


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


def parse_layers(text: str) -> tuple[str, ...]:
    """Parse ``"conv1, fc1"`` into ``("conv1", "fc1")``."""
    layers = tuple(filter(None, (name.strip() for name in text.split(","))))
    if not layers:
        raise argparse.ArgumentTypeError("--layers is empty.")
    return layers


def _common(parser: argparse.ArgumentParser, command: str) -> None:
    from models import MODELS
    from pyro_dirichlet.data import DATASETS

    group = parser.add_argument_group("run directory and environment (every subcommand)")
    group.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML file of option values, e.g. 'prior = 0.5'; command-line flags override it")
    if command in ("train", "run"):
        group.add_argument("--out", type=Path, metavar="DIR", help="run directory to write (required)")
    else:
        group.add_argument("--out", "--run", dest="out", type=Path, metavar="DIR",
                           help="run directory of an earlier `train` (required)")
    starts = command in ("train", "run")
    group.add_argument("--model", choices=sorted(MODELS),
                       help="network architecture (default: lenet5)" if starts else
                       "check that the run directory holds this model (default: the one it holds)")
    group.add_argument("--dataset", choices=sorted(DATASETS),
                       help="data set (default: the model's)" if starts else
                       "check that the run directory holds this data set (default: the one it holds)")
    group.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="folder holding the data sets (default: $PYRO_DIRICHLET_DATA, then ./data with download)")
    group.add_argument("--device", help="auto (CUDA when available; default), cpu or cuda")
    group.add_argument("--seed", type=int, help="seed of this step's randomness: training, SVI, fine-tuning (default 0)")
    group.add_argument("--quiet", action="store_true", help="no progress bars or summaries")


def _train(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("baseline (train)")
    group.add_argument("--subset", type=int, metavar="N",
                       help="smoke run: train on N examples (validation and test N/4 each); later steps use the same cut")
    group.add_argument("--train-epochs", type=int, metavar="N", help="baseline training epochs (default: the model's recipe)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="baseline cache: a baseline trained before on the same data and recipe is reused "
                            "(default: $PYRO_DIRICHLET_CACHE, then ~/.cache/pyro-dirichlet/baselines)")


def _fit(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prior and fit (fit)")
    group.add_argument("--prior", type=float, metavar="ALPHA",
                       help="symmetric Dirichlet prior concentration of every switch (default 1)")
    group.add_argument("--effective-data-size", type=int, metavar="N",
                       help="temper the likelihood to N examples, giving the prior more weight (default: the training set's size)")
    group.add_argument("--layers", type=parse_layers, metavar="L1,L2",
                       help="layers to switch and prune, e.g. conv1,fc1 (default: every conv and hidden linear layer)")
    group.add_argument("--coupled", choices=["skip", "group"],
                       help="channels coupled through residual adds: skip (leave unpruned; default) or group (one shared switch)")
    group.add_argument("--epochs", type=int, metavar="N", help="SVI epochs (default 1)")
    group.add_argument("--lr", type=float, help=f"SVI Adam learning rate (default {FitConfig.lr})")


def _ci(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("credible intervals (fit, report)").add_argument(
        "--ci-prob", type=float, metavar="P", help="probability mass of the HDI credible intervals (default 0.95)")


def _prune(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("budget (prune): --keep or --budget; default: the model's documented target")
    group.add_argument("--keep", type=parse_target, metavar="L=N,...",
                       help="channels to keep per layer, e.g. conv1=5,conv2=12,fc1=40 (counts) or conv1=0.25 (fractions)")
    group.add_argument("--budget", type=float, metavar="FRACTION",
                       help="keep at most this fraction of the baseline's FLOPs (or --budget-cost params); "
                            "one threshold on the posterior means picks every layer's width")
    group.add_argument("--budget-cost", choices=["flops", "params"], help="what --budget limits (default flops)")


def _finetune(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fine-tuning (finetune)")
    group.add_argument("--finetune-epochs", type=int, metavar="N", help=f"fine-tune epochs after pruning; 0 skips (default {DEFAULT_EPOCHS})")
    group.add_argument("--finetune-lr", type=float, metavar="LR", help="peak Adam learning rate of fine-tuning (default 0.01)")


def _report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("report").add_argument(
        "--latency-batch", type=int, metavar="N", help="images per forward pass when timing inference (default 256)")


_STEPS: dict[str, tuple[str, str, list[Callable[[argparse.ArgumentParser], None]]]] = {
    "train": ("train (or take from the cache) the baseline", "Train the baseline network, or take it from the baseline "
              "cache, and store it in the run directory as baseline.safetensors. Starts a run.", [_train]),
    "fit": ("fit the Dirichlet switch posterior", "Fit the Dirichlet switches of the run's baseline by SVI and write "
            "posterior.nc and forest.png. Refitting (e.g. with another --prior) keeps the baseline and forgets the "
            "later steps.", [_fit, _ci]),
    "prune": ("prune by posterior mean", "Prune the baseline by posterior mean to --keep, --budget or the model's "
              "default target and write pruned-before-finetune.{safetensors,json}.", [_prune]),
    "finetune": ("fine-tune the pruned network", "Fine-tune the pruned network (best epoch on the validation split) "
                 "and write pruned.{safetensors,json}.", [_finetune]),
    "report": ("write report.html, report.md and report.json", "Compare the baseline with the pruned network layer by "
               "layer (widths, parameters, FLOPs, accuracy, latency), plot the ELBO, the forest plots and mass curves, "
               "flag the keep decisions the posterior is unsure of; write report.html (self-contained), report.md "
               "with its PNGs, and report.json.", [_ci, _report]),
    "run": ("all steps in sequence: train, fit, prune, finetune, report", "Run every step into --out; the directory "
            "is written all at once when every step has succeeded.", [_train, _fit, _ci, _prune, _finetune, _report]),
}


def _build() -> tuple[argparse.ArgumentParser, dict[str, dict[str, argparse.Action]]]:
    parser = argparse.ArgumentParser(
        prog="pyro-dirichlet",
        description="Dirichlet pruning of trained networks with Pyro. A run directory is built by the steps "
                    "train -> fit -> prune -> finetune -> report, each reading what the one before wrote; "
                    "`run` does them all.",
        epilog="`pyro-dirichlet COMMAND --help` lists a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    options: dict[str, dict[str, argparse.Action]] = {}
    for command in COMMANDS:
        short, description, groups = _STEPS[command]
        # SUPPRESS: only flags actually given land in the namespace, so they can override the config file.
        sub = commands.add_parser(command, help=short, description=description, argument_default=argparse.SUPPRESS)
        _common(sub, command)
        for add in groups:
            add(sub)
        options[command] = {action.dest: action for action in sub._actions if action.dest not in ("help", "config")}
    return parser, options


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-dirichlet`` argument parser with its subcommands."""
    return _build()[0]


def _settings(command: str, args: argparse.Namespace, options: dict[str, dict[str, argparse.Action]]) -> dict[str, Any]:
    """Defaults, overridden by the config file, overridden by the command line."""
    settings = {dest: DEFAULTS[dest] for dest in options[command]}
    given = vars(args)
    if "config" in given:
        every = [action for table in options.values() for action in table.values()]
        table = read_config(given["config"])
        settings.update(config_values(table, every, set(options[command]), source=f"config file {str(given['config'])!r}"))
    settings.update({dest: value for dest, value in given.items() if dest in options[command]})
    if settings["out"] is None:
        flag = "--out DIR" if command in ("train", "run") else "--run DIR"
        raise ValueError(f"no run directory given: pass {flag} or set 'out' in the config file.")
    return settings


def _dispatch(command: str, settings: dict[str, Any]) -> None:
    # Imported here so `--help` and argument errors stay fast.
    from models import get_model_entry
    from pyro_dirichlet.pipeline import RunConfig, run
    from pyro_dirichlet.report import ReportOptions, report_step
    from pyro_dirichlet.rundir import RunDirectory
    from pyro_dirichlet.steps import (FinetuneOptions, FitOptions, PruneOptions, Runtime, TrainOptions,
                                      finetune_step, fit_step, prune_step, train_step)

    def pick(*names: str) -> dict[str, Any]:
        return {name: settings[name] for name in names}

    progress = not settings["quiet"]
    runtime = Runtime(progress=progress, **pick("data_dir", "device", "seed"))
    model = settings["model"] or "lenet5"
    dataset = settings["dataset"] or get_model_entry(model).dataset
    directory = RunDirectory(Path(settings["out"]))
    fit_config = FitConfig(**pick("epochs", "lr", "effective_data_size")) if "prior" in settings else None

    if command == "run":
        run(RunConfig(
            model=model, dataset=dataset, out=directory.path, target=settings["keep"], fit=fit_config, progress=progress,
            **pick("data_dir", "layers", "coupled", "budget", "budget_cost", "prior", "finetune_epochs", "finetune_lr",
                   "ci_prob", "seed", "device", "cache_dir", "subset", "train_epochs", "latency_batch"),
        ))
        return
    if command == "train":
        train_step(directory, runtime, TrainOptions(model=model, dataset=dataset, **pick("subset", "train_epochs", "cache_dir")))
    else:
        _check_identity(directory, settings)
        if command == "fit":
            fit_step(directory, runtime, FitOptions(fit=fit_config, **pick("layers", "coupled", "prior", "ci_prob")))
        elif command == "prune":
            prune_step(directory, runtime, PruneOptions(keep=settings["keep"], **pick("budget", "budget_cost")))
        elif command == "finetune":
            finetune_step(directory, runtime, FinetuneOptions(epochs=settings["finetune_epochs"], lr=settings["finetune_lr"]))
        else:
            report_step(directory, runtime, ReportOptions(**pick("ci_prob", "latency_batch")))
    if progress:
        record = directory.manifest()["steps"][command]
        print(f"{command}: wrote {', '.join(record['files'])} into {directory.path}/ in {record['seconds']:.0f} s", flush=True)


def _check_identity(directory, settings: dict[str, Any]) -> None:
    """A later step given --model or --dataset checks them against what the run directory holds."""
    from pyro_dirichlet.rundir import RunDirectoryError

    manifest = directory.manifest()
    for key in ("model", "dataset"):
        if settings[key] is not None and key in manifest and manifest[key] != settings[key]:
            raise RunDirectoryError(f"run directory {str(directory.path)!r} holds {key} {manifest[key]!r}, not "
                                    f"{settings[key]!r}: start a new run with `pyro-dirichlet train --out NEWDIR --{key} {settings[key]}`.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-dirichlet`` command."""
    parser, options = _build()
    args = parser.parse_args(argv)
    command = args.command
    del args.command
    try:
        _dispatch(command, _settings(command, args, options))
    except (ValueError, OSError) as error:  # bad input of every kind: data, run directory, config, budget
        print(f"pyro-dirichlet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # fit() has just written a checkpoint of its last completed step next to run.json.
        print(f"pyro-dirichlet: interrupted; run the same `pyro-dirichlet {command}` command again to "
              "resume (an interrupted fit continues from its last checkpoint).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
