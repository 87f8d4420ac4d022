"""One command that regenerates every table and figure of the method studies (issue 4).

    python -m analysis.compare --model lenet5 --dataset mnist --seeds 3 --out analysis/results/lenet5-mnist

Each part writes ``DIR/<part>.json``, ``DIR/<part>.md`` and its figures as soon as it
finishes; ``DIR/comparison.json`` gathers every part's JSON found in ``DIR`` and
``DIR/README.md`` strings their tables together, so ``--parts`` can rerun one part without
losing the others. Parts: criteria (importance criteria at equal keep counts), allocation
(automatic vs uniform at equal FLOPs), uncertainty (straddling channels, mass curves,
ranking stability), ablation (what makes one epoch work), tempering (the prior's effect),
interpret (per-digit filters), reproduction (LeNet-5 table against quoted results).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from analysis import ablation, allocation_study, criteria, interpret, reproduction, tempering, uncertainty_report
from analysis.study import Study
from pyro_dirichlet.baselines import get_model_entry
from pyro_dirichlet.baselines.registry import resnet_inner_keep
from pyro_dirichlet.models.vgg import VGG16_CONV_NAMES, VGG16_WIDTHS
from pyro_dirichlet.io.atomic import atomic_write_json, atomic_write_text
from pyro_dirichlet.repair.calibrate import CalibrationConfig
from pyro_dirichlet.data import load_dataset
from pyro_dirichlet.devices import resolve_device

PARTS = {
    "criteria": criteria,
    "allocation": allocation_study,
    "uncertainty": uncertainty_report,
    "ablation": ablation,
    "tempering": tempering,
    "interpret": interpret,
    "reproduction": reproduction,
}

#: Named per-layer keep counts for the criteria comparison and the ablation.
BUDGETS = {
    "lenet5": {
        "tight (5-12-40)": {"conv1": 5, "conv2": 12, "fc1": 40},
        "medium (8-20-80)": {"conv1": 8, "conv2": 20, "fc1": 80},
    },
    "vgg16": {
        "Dirichlet paper widths": dict(get_model_entry("vgg16").default_keep),
        "quarter widths": {**{name: width // 4 for name, width in zip(VGG16_CONV_NAMES, VGG16_WIDTHS)}, "fc1": 128},
    },
    "resnet56": {"half inner": resnet_inner_keep(blocks=9, divisor=2), "quarter inner": resnet_inner_keep(blocks=9, divisor=4)},
    "resnet20": {"half inner": resnet_inner_keep(blocks=3, divisor=2), "quarter inner": resnet_inner_keep(blocks=3, divisor=4)},
}

#: Parts that make sense per data set (per-digit interpretation is an MNIST study).
DEFAULT_PARTS = {"mnist": list(PARTS), "cifar10": ["criteria", "allocation", "uncertainty"]}


def make_study(args: argparse.Namespace) -> Study:
    entry = get_model_entry(args.model)
    if args.dataset != entry.dataset:
        raise ValueError(f"model {args.model!r} is trained on {entry.dataset!r}, not dataset {args.dataset!r}.")
    if args.model not in BUDGETS:
        raise ValueError(f"no budgets are defined for model {args.model!r}; models with budgets: {sorted(BUDGETS)}.")
    data = load_dataset(args.dataset, args.data_dir)
    if args.subset is not None:
        # A seeded cut for CPU runs of the big models; its numbers are labelled with the sizes.
        data = data.subset(train=args.subset, validation=max(2, args.subset // 4), test=max(2, args.subset // 4), seed=0)
    return Study(
        model=args.model,
        data=data,
        seeds=tuple(range(args.seeds)),
        budgets=BUDGETS[args.model],
        finetune_lr=args.finetune_lr,
        out=args.out,
        log=lambda line: print(line, flush=True),
        train_epochs=args.train_epochs,
        device=str(resolve_device(args.device)),
        fit_options={} if args.fit_epochs is None else {"epochs": args.fit_epochs},
        finetune_epochs=tuple(n for n in args.finetune_epochs if n > 0),
        criteria=None if args.criteria is None else tuple(args.criteria),
        calibration=CalibrationConfig() if args.calibrate else None,
    )


def gather(out: Path) -> dict:
    """Every part's JSON in ``out``, plus the index README made of their tables."""
    found = {name: json.loads((out / f"{name}.json").read_text()) for name in PARTS if (out / f"{name}.json").exists()}
    tables = [(out / f"{name}.md").read_text() for name in found if (out / f"{name}.md").exists()]
    atomic_write_text(out / "README.md", "\n".join(tables))
    combined = {"parts": found, "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()}}
    atomic_write_json(out / "comparison.json", combined)
    return combined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", help="registry model name (default lenet5)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seeds", type=int, default=3, help="baselines and fits per study (seeds 0..N-1)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--finetune-lr", type=float, default=1e-2)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=None, help="default: every part for the data set")
    parser.add_argument("--subset", type=int, default=None, help="train on this many examples (validation and test a quarter each)")
    parser.add_argument("--train-epochs", type=int, default=None, help="baseline epochs (default: the registry recipe)")
    parser.add_argument("--fit-epochs", type=int, default=None, help="SVI epochs (default: FitConfig's, one)")
    parser.add_argument("--finetune-epochs", type=int, nargs="+", default=[1, 3], help="fine-tune lengths reported (default 1 3; 0 alone: none)")
    parser.add_argument("--criteria", nargs="+", default=None, help="criteria to compare (default: every one that applies)")
    parser.add_argument("--calibrate", action="store_true",
                        help="also report every criterion after calibration (BatchNorm statistics and per-channel scales "
                             "fitted on one pass of the training split, as the SVI fit sees)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    study = make_study(args)
    for name in args.parts or DEFAULT_PARTS[args.dataset]:
        started = time.perf_counter()
        result = PARTS[name].run(study)
        result["seconds"] = time.perf_counter() - started
        study.write(name, result, PARTS[name].markdown(result))
        print(PARTS[name].markdown(result), flush=True)
    gather(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
