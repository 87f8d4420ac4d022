"""The ``pyro-dirichlet`` command line: one subcommand per step of a run, and ``run`` for all of them.

Every subcommand takes the same flags for the same things (``--out``/``--run``,
``--data-dir``, ``--device``, ``--seed``, ``--quiet``, ``--config``); a value comes from the
command line, else from the ``--config`` TOML file, else from the defaults shown by
``--help``. Bad input ends with a one-sentence error and exit status 2.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import errno
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_dirichlet.app.config import TRUST_FLAG, config_values, read_config
from pyro_dirichlet.app.source_values import DeferredClass, source_value
from pyro_dirichlet.io.user_code import describe_failure

if TYPE_CHECKING:
    from pyro_dirichlet.app.pipeline import RunConfig

# The options dataclasses live in modules that import torch, Pyro and ArviZ (seconds); `--help`
# and argument errors read their defaults from the source instead and import them only to run a step.
Runtime, TrainOptions, FitOptions, PruneOptions, FinetuneOptions = (
    DeferredClass("pyro_dirichlet.app.options", name)
    for name in ("Runtime", "TrainOptions", "FitOptions", "PruneOptions", "FinetuneOptions"))
ReportOptions = DeferredClass("pyro_dirichlet.app.report", "ReportOptions")
FitConfig = DeferredClass("pyro_dirichlet.infer.fit_config", "FitConfig")
HYPER_GUIDES = source_value("pyro_dirichlet.infer.guide", "HYPER_GUIDES")
OPTIMIZERS = source_value("pyro_dirichlet.infer.objective", "OPTIMIZERS")
GAINS = source_value("pyro_dirichlet.infer.switches", "GAINS")
COUPLING_POLICIES = source_value("pyro_dirichlet.structure.layers", "COUPLING_POLICIES")
UNSUPPORTED_POLICIES = source_value("pyro_dirichlet.structure.layers", "UNSUPPORTED_POLICIES")
BUDGET_COSTS = source_value("pyro_dirichlet.planning.allocation", "COSTS")
DISTILLATION_TEMPERATURE = source_value("pyro_dirichlet.repair.distillation", "DEFAULT_TEMPERATURE")

__all__ = ["main", "build_parser", "parse_target", "parse_layers", "options_from", "DEFAULTS", "OPTION_FIELDS"]

COMMANDS = ("train", "fit", "prune", "finetune", "report", "run")

#: Where each option's default is written: the field of the options dataclass the option
#: sets. The CLI copies these defaults (and shows them in ``--help``) rather than restating them.
OPTION_FIELDS: dict[str, tuple[type, str]] = {
    "data_dir": (Runtime, "data_dir"), "device": (Runtime, "device"), "seed": (Runtime, "seed"),
    "precision": (Runtime, "precision"), "threads": (Runtime, "threads"),
    "compile": (Runtime, "compile"),
    "subset": (TrainOptions, "subset"), "train_epochs": (TrainOptions, "train_epochs"),
    "cache_dir": (TrainOptions, "cache_dir"), "weights": (TrainOptions, "weights"),
    "image_size": (TrainOptions, "image_size"), "normalize": (TrainOptions, "normalize"),
    "weights_key": (TrainOptions, "weights_key"), "validation_dir": (TrainOptions, "validation_dir"),
    "layers": (FitOptions, "layers"), "coupled": (FitOptions, "coupled"), "prior": (FitOptions, "prior"),
    "on_unsupported": (FitOptions, "on_unsupported"), "layer_gain": (FitOptions, "layer_gain"), "gain": (FitOptions, "gain"),
    "ci_prob": (FitOptions, "ci_prob"), "prior_model": (FitOptions, "prior_model"),
    "predictive_draws": (FitOptions, "predictive_draws"), "predictive_images": (FitOptions, "predictive_images"),
    "epochs": (FitConfig, "epochs"), "lr": (FitConfig, "lr"), "effective_data_size": (FitConfig, "effective_data_size"),
    "hyper_guide": (FitConfig, "hyper_guide"), "optimizer": (FitConfig, "optimizer"),
    "keep": (PruneOptions, "keep"), "budget": (PruneOptions, "budget"), "budget_cost": (PruneOptions, "budget_cost"),
    "check": (PruneOptions, "check"),
    "finetune_epochs": (FinetuneOptions, "epochs"), "finetune_lr": (FinetuneOptions, "lr"),
    "finetune_distillation": (FinetuneOptions, "distillation"),
    "latency_batch": (ReportOptions, "latency_batch"),
}


def _field_default(kind: DeferredClass, name: str) -> Any:
    return kind.default(name)


# Options with no dataclass field: --out has no default, --model and --dataset default to
# what the run directory holds (later steps) or to TrainOptions' (train, run), --quiet is
# the opposite of Runtime.progress.
DEFAULTS: dict[str, Any] = {
    "out": None, "model": None, "dataset": None, "model_args": None, "quiet": not _field_default(Runtime, "progress"),
    **{dest: _field_default(*where) for dest, where in OPTION_FIELDS.items()},
}


def _help(text: str, dest: str) -> str:
    """``text`` with the option's default, read from its dataclass field, e.g. ``"SVI epochs (default 1)"``."""
    return f"{text} (default {DEFAULTS[dest]:g})" if isinstance(DEFAULTS[dest], float) else f"{text} (default {DEFAULTS[dest]})"


def parse_target(text: str) -> dict[str, int | float] | float:
    """Parse ``"conv1=5,conv2=0.25"`` into ``{"conv1": 5, "conv2": 0.25}`` (counts or fractions),
    or a bare ``"0.5"`` into ``0.5``: one fraction of every switched layer (or coupling group)."""
    if "=" not in text:
        try:
            fraction = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--keep expects one fraction such as 0.5, or LAYER=COUNT or LAYER=FRACTION items, got {text!r}.") from None
        if not 0 < fraction <= 1:
            raise argparse.ArgumentTypeError(f"--keep {text}: a global fraction must be in (0, 1].")
        return fraction
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


def model_name(text: str) -> str:
    """A registered model's name or a factory path ``package.module:callable`` (imported only when a step runs)."""
    models = source_value("pyro_dirichlet.baselines.registry", "MODELS")
    if text in models:
        return text
    if source_value("pyro_dirichlet.io.factories", "FACTORY_PATH").fullmatch(text):  # factories.is_factory_path, without torch
        return text
    # Not in the source: a model registered at run time (by code that imported the registry) is
    # only in the imported registry; a fresh process never imports torch just to refuse a name.
    registry = sys.modules.get("pyro_dirichlet.baselines.registry")
    if registry is not None and text in registry.MODELS:
        return text
    raise argparse.ArgumentTypeError(f"unknown model {text!r}; valid choices: {', '.join(sorted(models))}, "
                                     "or your own factory as package.module:callable.")


def dataset_name(text: str) -> str:
    """A data set's name, ``imagefolder:DIR`` (made absolute, so every step reads the same folder) or ``torchvision:NAME``."""
    from pyro_dirichlet.data.catalog import check_dataset_name

    try:
        check_dataset_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--dataset: {error}") from None
    if text.startswith("imagefolder:"):
        folder = text.partition(":")[2]
        if not folder.strip() or "\0" in folder:
            raise argparse.ArgumentTypeError(f"--dataset imagefolder:DIR must name a folder, got {text!r}.")
        return f"imagefolder:{Path(folder).expanduser().absolute()}"
    return text


def model_arg(text: str) -> tuple[str, Any]:
    """``--model-arg key=value``: one keyword argument of the model factory."""
    from pyro_dirichlet.io.factories import parse_model_arg

    try:
        return parse_model_arg(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def normalize(text: str) -> Any:
    """``--normalize MEAN,STD`` or ``--normalize MEAN_R,MEAN_G,MEAN_B/STD_R,STD_G,STD_B``."""
    from pyro_dirichlet.data.normalization import parse_normalize

    try:
        return parse_normalize(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _path(flag: str) -> Callable[[str], Path]:
    """An argparse type for a path that refuses the empty string (``Path("")`` would mean the current directory)."""

    def convert(text: str) -> Path:
        if not text.strip() or "\0" in text:
            raise argparse.ArgumentTypeError(f"{flag} must name a path, got {text!r}.")
        return Path(text)

    convert.__name__ = "path"
    return convert


def _common(parser: argparse.ArgumentParser, command: str) -> None:
    MODELS = source_value("pyro_dirichlet.baselines.registry", "MODELS")
    DATASETS = source_value("pyro_dirichlet.data.catalog", "DATASETS")

    group = parser.add_argument_group("run directory and environment (every subcommand)")
    group.add_argument("--config", type=_path("--config"), metavar="FILE",
                       help="TOML file of option values, e.g. 'prior = 0.5'; command-line flags override it")
    group.add_argument(TRUST_FLAG, dest="trust_config", action="store_true",
                       help="let the --config file name code to import and run (model = \"MODULE:FACTORY\", "
                            "prior-model): only for a file you wrote; without it such a key is refused")
    if command in ("train", "run"):
        group.add_argument("--out", type=_path("--out"), metavar="DIR", help="run directory to write (required)")
    else:
        group.add_argument("--out", "--run", dest="out", type=_path("--run"), metavar="DIR",
                           help="run directory of an earlier `train` (required)")
    starts = command in ("train", "run")
    models = ", ".join(sorted(MODELS))
    group.add_argument("--model", type=model_name, metavar="NAME|MODULE:FACTORY",
                       help=f"network: {models}, or your own as package.module:callable returning an nn.Module "
                            f"(default: {TrainOptions.model})" if starts else
                       "check that the run directory holds this model (default: the one it holds); a run of your "
                       "own factory needs it named again, since a path read from a file is never imported")
    group.add_argument("--model-arg", dest="model_args", type=model_arg, action="append", metavar="KEY=VALUE",
                       help="keyword argument of the --model factory, repeatable; values are read as int, float, "
                            "true/false or text" if starts else
                       "check that the run's model factory had this keyword argument (default: the recorded ones)")
    group.add_argument("--dataset", type=dataset_name, metavar="NAME|imagefolder:DIR|torchvision:NAME",
                       help=f"data set: {', '.join(sorted(DATASETS))}, imagefolder:DIR (your images, DIR/CLASS/IMAGE "
                            "or DIR/{train,val,test}/CLASS/IMAGE) or torchvision:NAME, e.g. torchvision:FashionMNIST "
                            "(default: the model's)" if starts else
                       "check that the run directory holds this data set (default: the one it holds)")
    group.add_argument("--data-dir", type=_path("--data-dir"), metavar="DIR",
                       help="folder holding the data sets (default: $PYRO_DIRICHLET_DATA, then ./data with download)")
    group.add_argument("--device", help=_help("auto (CUDA when available), cpu or cuda", "device"))
    group.add_argument("--seed", type=int, help=_help("seed of this step's randomness: training, SVI, fine-tuning", "seed"))
    group.add_argument("--precision", choices=source_value("pyro_dirichlet.precision", "PRECISIONS"),
                       help=_help("forward passes of every step (training, SVI, fine-tuning, accuracy, latency): "
                                  "auto (bf16 autocast where the device has native bfloat16 units: CUDA compute "
                                  "capability 8.0+, CPUs with AMX or AVX-512 BF16; else fp32), fp32 or bf16; "
                                  "weights, losses, the ELBO and BatchNorm statistics stay float32", "precision"))
    group.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads of each step (default: the CPUs other processes leave idle as the step "
                            "starts, or $OMP_NUM_THREADS when set)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction,
                       help=_help("train and fine-tune through torch.compile: about 20 s of compiling per network, "
                                  "then faster steps (a bf16 ResNet-20 epoch 0.74x as long on a 2-core AMX CPU); "
                                  "for runs of several epochs", "compile"))
    group.add_argument("--quiet", action="store_true", help="no progress bars or summaries")


def _train(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("baseline (train)")
    group.add_argument("--subset", type=int, metavar="N",
                       help="smoke run: train on N examples (validation and test N/4 each); later steps use the same cut")
    group.add_argument("--train-epochs", type=int, metavar="N", help="baseline training epochs (default: the model's recipe)")
    group.add_argument("--cache-dir", type=_path("--cache-dir"), metavar="DIR",
                       help="baseline cache: a baseline trained before on the same data and recipe is reused "
                            "(default: $PYRO_DIRICHLET_CACHE, then ~/.cache/pyro-dirichlet/baselines)")
    group.add_argument("--weights", type=_path("--weights"), metavar="FILE",
                       help="the baseline's trained weights instead of training: a safetensors file or a state dict "
                            "saved with torch.save(model.state_dict(), FILE) (read with weights_only=True; a "
                            "'module.' prefix from DataParallel is stripped)")
    group.add_argument("--weights-key", metavar="KEY",
                       help="the entry of a --weights checkpoint dict that holds the state dict, e.g. model_state_dict")
    group.add_argument("--validation-dir", type=_path("--validation-dir"), metavar="DIR",
                       help="validation images for an imagefolder: data set, DIR/CLASS/IMAGE (default: DIR/val, else "
                            "a tenth carved from the training images)")
    group.add_argument("--image-size", type=int, metavar="N",
                       help="resize the images of imagefolder:/torchvision: data sets to N x N pixels")
    group.add_argument("--normalize", type=normalize, metavar="MEAN,STD|MEANS/STDS",
                       help="normalise imagefolder:/torchvision: images (in [0, 1]) with one mean and std, or one per "
                            "channel as MEAN_R,MEAN_G,MEAN_B/STD_R,STD_G,STD_B: the values your network was trained "
                            "with (default: each channel's mean and std over the training images, said in one line)")


def _fit(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prior and fit (fit)")
    group.add_argument("--prior", type=float, metavar="ALPHA",
                       help=_help("symmetric Dirichlet prior concentration of every switch", "prior"))
    group.add_argument("--effective-data-size", type=int, metavar="N",
                       help="temper the likelihood to N examples, giving the prior more weight (default: the training set's size)")
    group.add_argument("--layers", type=parse_layers, metavar="L1,L2",
                       help="layers to switch and prune, e.g. conv1,fc1 (default: every conv and hidden linear layer)")
    group.add_argument("--coupled", choices=list(COUPLING_POLICIES),
                       help=_help("channels coupled through residual adds, concatenations and depthwise convs: "
                                  "group (one shared switch, pruned together) or skip (leave unpruned)", "coupled"))
    group.add_argument("--on-unsupported", choices=list(UNSUPPORTED_POLICIES),
                       help=_help("layers whose channels the analysis cannot follow: raise (refuse, listing them all) "
                                  "or skip (prune the others; the report lists them)", "on_unsupported"))
    group.add_argument("--gain", choices=list(GAINS),
                       help="learned scales beside each switch: channel (one per channel, the default: the posterior mean "
                            "then ranks channels by how much the loss depends on them; see docs/method.md), layer (one per "
                            "layer, the earlier default) or none (the paper's model)")
    group.add_argument("--layer-gain", action=argparse.BooleanOptionalAction,
                       help="the older spelling of --gain layer (--no-layer-gain: --gain none)")
    group.add_argument("--epochs", type=int, metavar="N",
                       help="SVI epochs; the paper's setting is 1 (default: fit until the posterior has converged -- "
                            "the ELBO levelled off and the half-width kept sets settled -- at least 600 steps)")
    group.add_argument("--lr", type=float, help=_help("SVI Adam learning rate", "lr"))
    group.add_argument("--optimizer", choices=list(OPTIMIZERS),
                       help=_help("optimiser of the concentrations: layer-adam (one Adam step scale per layer, so a channel "
                                  "moves in proportion to its pull) or adam (one per channel, the earlier default)", "optimizer"))
    group.add_argument("--predictive-draws", type=int, metavar="N",
                       help=_help("posterior draws of the posterior predictive on the validation split "
                                  "(posterior.nc's log_likelihood for az.loo wants 30 or more)", "predictive_draws"))
    group.add_argument("--predictive-images", type=int, metavar="N",
                       help=_help("validation images of the posterior predictive; 0 skips it", "predictive_images"))
    group.add_argument("--hyper-guide", choices=sorted(HYPER_GUIDES),
                       help=_help("guide of the prior model's own latent sites: normal (AutoNormal) or delta "
                                  "(AutoDelta, a point estimate: empirical Bayes)", "hyper_guide"))


def _prior_model_name(text: str) -> str:
    from pyro_dirichlet.app.prior_model import check_prior_model_name

    try:
        return check_prior_model_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("prior_model", "--prior-model", 1)) from None


_prior_model_name.__name__ = "MODULE:FUNCTION"


def _prior_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("prior model (fit, report)").add_argument(
        "--prior-model", type=_prior_model_name, metavar="MODULE:FUNCTION",
        help="a Pyro model of every layer's prior, prior_model(layers) -> {layer: distribution}, imported from "
             "MODULE (MODULE.py in the current directory first); replaces --prior. Command line only (a config "
             "file only with --trust-config); the run directory records it and `report` needs it named again")


def _ci(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("credible intervals (fit, report)").add_argument(
        "--ci-prob", type=float, metavar="P", help=_help("probability mass of the HDI credible intervals", "ci_prob"))


def _prune(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("budget (prune): --keep or --budget; default: the model's documented target")
    group.add_argument("--keep", type=parse_target, metavar="F|L=N,...",
                       help="channels to keep: one fraction of every layer, e.g. 0.5, or per layer, e.g. "
                            "conv1=5,conv2=12,fc1=40 (counts) or conv1=0.25 (fractions)")
    group.add_argument("--budget", type=float, metavar="FRACTION",
                       help="keep at most this fraction of the baseline's FLOPs (or --budget-cost params); "
                            "one threshold on the posterior means picks every layer's width")
    group.add_argument("--budget-cost", choices=list(BUDGET_COSTS), help=_help("what --budget limits", "budget_cost"))
    parser.add_argument_group("decision check (prune)").add_argument(
        "--no-check", dest="check", action="store_false",
        help="skip comparing the posterior's channels with L1-norm and random ones at the same counts after the same "
             "calibration on the validation split (on by default: a few seconds on small networks)")


def _finetune(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fine-tuning (finetune)")
    group.add_argument("--finetune-epochs", type=int, metavar="N", help=_help("fine-tune epochs after pruning; 0 skips", "finetune_epochs"))
    group.add_argument("--finetune-lr", type=float, metavar="LR", help=_help("peak Adam learning rate of fine-tuning", "finetune_lr"))
    group.add_argument("--finetune-distillation", type=float, metavar="SHARE",
                       help=_help("share of the fine-tune loss that matches the baseline's class probabilities "
                                  f"(knowledge distillation, temperature {DISTILLATION_TEMPERATURE:g}), in [0, 1]",
                                  "finetune_distillation"))


def _report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("report").add_argument(
        "--latency-batch", type=int, metavar="N", help=_help("images per forward pass when timing inference", "latency_batch"))


_STEPS: dict[str, tuple[str, str, list[Callable[[argparse.ArgumentParser], None]]]] = {
    "train": ("train (or take from the cache) the baseline", "Train the baseline network, or take it from the baseline "
              "cache, and store it in the run directory as baseline.safetensors. Starts a run.", [_train]),
    "fit": ("fit the Dirichlet switch posterior", "Fit the Dirichlet switches of the run's baseline by SVI and write "
            "posterior.nc (the report draws its forest plots). Refitting (e.g. with another --prior) keeps the baseline and forgets the "
            "later steps.", [_fit, _prior_model, _ci]),
    "prune": ("prune by posterior mean", "Prune the baseline by posterior mean to --keep, --budget or the model's "
              "default target and write pruned-before-finetune.{safetensors,json}.", [_prune]),
    "finetune": ("fine-tune the pruned network", "Fine-tune the pruned network (best epoch on the validation split) "
                 "and write pruned.{safetensors,json}.", [_finetune]),
    "report": ("write report.html, report.md and report.json", "Compare the baseline with the pruned network layer by "
               "layer (widths, parameters, FLOPs, accuracy, latency), plot the ELBO, the forest plots and mass curves, "
               "check the switched network's predictions against the validation split, draw the model, "
               "flag the keep decisions the posterior is unsure of; write report.html (self-contained), report.md "
               "with its PNGs, and report.json.", [_prior_model, _ci, _report]),
    "run": ("all steps in sequence: train, fit, prune, finetune, report", "Run every step into --out; the directory "
            "is written all at once when every step has succeeded.", [_train, _fit, _prior_model, _ci, _prune, _finetune, _report]),
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
        options[command] = {action.dest: action for action in sub._actions
                            if action.dest not in ("help", "config", "trust_config")}
    from pyro_dirichlet.app.layer_listing import add_layers_command

    add_layers_command(commands, model_name, model_arg, _path)
    return parser, options


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-dirichlet`` argument parser with its subcommands."""
    return _build()[0]


def _settings(command: str, args: argparse.Namespace, options: dict[str, dict[str, argparse.Action]]) -> dict[str, Any]:
    """Defaults, overridden by the config file, overridden by the command line."""
    settings = {dest: DEFAULTS[dest] for dest in options[command]}
    given = vars(args)
    chosen = {dest: value for dest, value in given.items() if dest in options[command]}
    if "config" in given:
        every = [action for table in options.values() for action in table.values()]
        table = read_config(given["config"])
        chosen = {**config_values(table, every, set(options[command]), source=f"config file {str(given['config'])!r}",
                                  trusted=given.get("trust_config", False)), **chosen}
    # Refused whatever the value: --prior equal to its default would otherwise pass unnoticed.
    if "prior" in chosen and "prior_model" in chosen:
        raise ValueError(source_value("pyro_dirichlet.app.options", "PRIOR_AND_PRIOR_MODEL"))
    settings.update(chosen)
    if settings["out"] is None:
        flag = "--out DIR" if command in ("train", "run") else "--run DIR"
        raise ValueError(f"no run directory given: pass {flag} or set 'out' in the config file.")
    return settings


def options_from(settings: dict[str, Any]) -> RunConfig:
    """Every step's options from the settings of a command (defaults, config file, flags).

    Settings a command does not have keep their dataclass defaults.
    """
    from pyro_dirichlet.app.pipeline import RunConfig
    from pyro_dirichlet.baselines import get_model_entry

    def pick(kind: type, **renamed: str) -> dict[str, Any]:
        """The settings that are fields of ``kind`` (``renamed``: field -> setting name)."""
        names = {f.name: renamed.get(f.name, f.name) for f in dataclasses.fields(kind)}
        return {name: settings[setting] for name, setting in names.items() if setting in settings}

    from pyro_dirichlet.io.factories import is_factory_path

    model = settings.get("model") or TrainOptions.model
    factory = model if is_factory_path(model) else None
    # A factory has no data set of its own: train refuses a missing --dataset, later steps never read this one.
    dataset = settings.get("dataset") or (None if factory else get_model_entry(model).dataset)
    model_args = dict(settings["model_args"]) if settings.get("model_args") else None
    return RunConfig(
        out=Path(settings["out"]),
        runtime=_flagged(Runtime, progress=not settings.get("quiet", False), factory=factory, **pick(Runtime)),
        train=_flagged(TrainOptions, **{**pick(TrainOptions), "model": model, "dataset": dataset, "model_args": model_args}),
        # FitConfig's seed, device and progress are the runtime's; the command line sets only these.
        fit=_flagged(FitOptions, fit=_flagged(FitConfig, **{name: settings[name] for name in
                                                            ("epochs", "lr", "optimizer", "effective_data_size", "hyper_guide")
                                                            if name in settings}),
                     **pick(FitOptions)),
        prune=_flagged(PruneOptions, **pick(PruneOptions)),
        finetune=_flagged(FinetuneOptions, **pick(FinetuneOptions, epochs="finetune_epochs", lr="finetune_lr",
                                                                  distillation="finetune_distillation")),
        report=_flagged(ReportOptions, **pick(ReportOptions)),
    )


def _flagged(kind: type, **values: Any) -> Any:
    """``kind(**values)``, its validation errors speaking of the command-line flag (``--finetune-lr``) rather than the field (``lr``)."""
    try:
        return kind(**values)
    except ValueError as error:
        flags = {name: "--" + dest.replace("_", "-") for dest, (owner, name) in OPTION_FIELDS.items() if owner is kind}
        match = re.match(rf"(?:{kind.__name__}\.)?(\w+)\b", str(error))
        if match is None or match.group(1) not in flags:
            raise
        raise ValueError(flags[match.group(1)] + str(error)[match.end():]) from None


def _dispatch(command: str, settings: dict[str, Any]) -> None:
    # Imported here so `--help` and argument errors stay fast.
    from pyro_dirichlet.app.pipeline import run
    from pyro_dirichlet.app.report import report_step
    from pyro_dirichlet.app.rundir import RunDirectory
    from pyro_dirichlet.app.steps import finetune_step, fit_step, prune_step, train_step

    config = options_from(settings)
    if command == "run":
        run(config)
        return
    directory = RunDirectory(config.out)
    if command == "train":
        train_step(directory, config.runtime, config.train)
    else:
        _check_identity(directory, settings)
        step = {"fit": (fit_step, config.fit), "prune": (prune_step, config.prune),
                "finetune": (finetune_step, config.finetune), "report": (report_step, config.report)}[command]
        step[0](directory, config.runtime, step[1])
    if config.runtime.progress:
        record = directory.manifest()["steps"][command]
        print(f"{command}: wrote {', '.join(record['files'])} into {directory.path}/ in {record['seconds']:.0f} s", flush=True)


def _check_identity(directory, settings: dict[str, Any]) -> None:
    """A later step given --model or --dataset checks them against what the run directory holds."""
    from pyro_dirichlet.app.rundir import RunDirectoryError

    manifest = directory.manifest()
    for key in ("model", "dataset"):
        if settings[key] is not None and key in manifest and manifest[key] != settings[key]:
            raise RunDirectoryError(f"run directory {str(directory.path)!r} holds {key} {manifest[key]!r}, not "
                                    f"{settings[key]!r}: start a new run with `pyro-dirichlet train --out NEWDIR --{key} {settings[key]}`.")
    given = dict(settings.get("model_args") or ())
    recorded = manifest.get("model_args") or {}
    if given and given != recorded:
        raise RunDirectoryError(f"run directory {str(directory.path)!r} holds a model built with arguments {recorded!r}, "
                                f"not {given!r}: leave out --model-arg to use the recorded ones.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-dirichlet`` command."""
    parser, options = _build()
    args = parser.parse_args(argv)
    command = args.command
    del args.command
    settings: dict[str, Any] = {}
    if command == "layers":
        return _layers(args)
    try:
        settings = _settings(command, args, options)
        _dispatch(command, settings)
    except KeyboardInterrupt:
        # fit() has just written a checkpoint of its last completed step next to run.json.
        print(f"pyro-dirichlet: interrupted; run the same `pyro-dirichlet {command}` command again to "
              "resume (an interrupted fit continues from its last checkpoint).", file=sys.stderr)
        return 130
    except Exception as error:
        message = error_message(error, command, settings)
        if message is None:
            raise
        print(f"pyro-dirichlet: error: {message}", file=sys.stderr)
        return 2
    except BaseException as error:  # noqa: B036 - SystemExit and the like from user code (a factory, a prior model)
        print(f"pyro-dirichlet: error: code named on the command line (a --model factory or a --prior-model) "
              f"stopped the command with {describe_failure(error)}; the run directory is unchanged.", file=sys.stderr)
        return 2
    return 0


def console_main() -> None:
    """The installed ``pyro-dirichlet`` command (and ``python -m pyro_dirichlet``): :func:`main`, then a quick exit.

    Once the command has returned, its files are written and closed (atomically), and the
    interpreter's own finalisation, tearing down torch's thousands of module objects, costs
    0.4 s after a bare ``import torch`` and 0.65 s after a step on this project's CPU (7%
    of a 10 s LeNet-5 refit). So the streams are flushed and the exit handlers run
    (logging, multiprocessing, weakref finalisers), then the process ends without the
    teardown. :func:`main` itself returns normally, for callers in Python.
    """
    code = main()
    if _observed():
        # A profiler, a debugger or coverage (``python -m cProfile -m pyro_dirichlet``) may
        # write its results after the command returns: leave it the normal exit.
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing left to say
            pass
    os._exit(code)


def _observed() -> bool:
    """Whether a profiler, debugger or coverage tool watches this process (``sys.settrace`` /
    ``sys.setprofile``, or a ``sys.monitoring`` tool, as Python 3.12's cProfile is)."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(tool) is not None for tool in range(6))


def _layers(args: argparse.Namespace) -> int:
    """``pyro-dirichlet layers``: print the listing, or one sentence and exit status 2."""
    from pyro_dirichlet.app.layer_listing import layers_command

    try:
        print(layers_command(args))
    except ValueError as error:
        print(f"pyro-dirichlet: error: {error}", file=sys.stderr)
        return 2
    return 0


#: Write failures that mean the disk (or a quota, or RLIMIT_FSIZE) is full, not that the input was bad.
_FULL = {errno.ENOSPC: "no space left on", errno.EDQUOT: "disk quota exceeded on", errno.EFBIG: "file size limit reached on"}


def error_message(error: Exception, command: str, settings: dict[str, Any]) -> str | None:
    """The one sentence ``main`` prints for an error a user can cause, or ``None`` for a bug (which keeps its traceback)."""
    from pyro_dirichlet.infer.fit import FitDivergedError

    if isinstance(error, OSError) and error.errno in _FULL:
        where = error.filename or settings.get("out") or "the run directory"
        return (f"{_FULL[error.errno]} the device holding {str(where)!r}: free some space and run "
                f"`pyro-dirichlet {command}` again; the run directory is unchanged.")
    if isinstance(error, FitDivergedError):
        return _divergence_advice(error, settings)
    if isinstance(error, (ValueError, OSError)):  # bad input of every kind: data, run directory, config, budget
        # Pyro appends its table of trace shapes (dozens of lines) to an error raised inside a model.
        return " ".join(str(error).split("\nTrace Shapes:")[0].split("\n"))
    return None


def _divergence_advice(error: Exception, settings: dict[str, Any]) -> str:
    """Advice that fits the cause: a learning rate far above the default, an extreme prior, else the data."""
    lr, prior = settings.get("lr", DEFAULTS["lr"]), settings.get("prior", DEFAULTS["prior"])
    step = getattr(error, "step", "?")
    if lr > 10 * DEFAULTS["lr"]:
        advice = f"lower --lr (it is {lr:g}; the default is {DEFAULTS['lr']:g})"
    elif not 1e-3 <= prior <= 1e3:
        advice = f"choose a --prior concentration nearer 1 (it is {prior:g})"
    else:
        advice = "check the baseline and the data for extreme values, or lower --lr"
    return f"the fit diverged at SVI step {step} (the ELBO became NaN or infinite): {advice}; the run directory is unchanged."


if __name__ == "__main__":
    sys.exit(main())
