"""CPU smoke runs of the CIFAR-10 architectures: train, fit, prune and fine-tune each end to end on a subset.

The accuracies are those of networks trained for one or two epochs on 2,000 images, so they
only show that every stage runs; the timings show what each stage costs on this CPU. A
model whose ``<out>/<model>/report.json`` exists is not run again (``--force`` reruns it).

    python -m analysis.smoke_cifar --out runs/smoke --json analysis/results/smoke_cifar.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.app.pipeline import FinetuneOptions, RunConfig, Runtime, TrainOptions, run

#: Baseline epochs per model: WRN-28-10 costs 10.5 GFLOPs per image, so it gets one.
TRAIN_EPOCHS = {"vgg16": 2, "resnet56": 2, "wrn_28_10": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TRAIN_EPOCHS), choices=list(TRAIN_EPOCHS))
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/smoke"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    rows = []
    for model in args.models:
        out = args.out / model
        if args.force or not (out / "report.json").exists():
            run(RunConfig(out=out, runtime=Runtime(data_dir=args.data_dir),
                          train=TrainOptions(model=model, dataset="cifar10", subset=args.subset,
                                             train_epochs=TRAIN_EPOCHS[model]),
                          finetune=FinetuneOptions(epochs=1)))
        report = json.loads((out / "report.json").read_text())
        rows.append({
            "model": model,
            "data": report["data"],
            "baseline_params": report["baseline"]["params"],
            "baseline_flops": report["baseline"]["flops"],
            "baseline_epochs": report["baseline"].get("epochs"),
            "baseline_seconds_per_epoch": report["baseline"].get("seconds_per_epoch"),
            "baseline_test_accuracy": report["baseline"]["test_accuracy"],
            "svi_seconds": report["svi"]["seconds"],
            "pruned_params": report["pruned"]["params"],
            "pruned_flops": report["pruned"]["flops"],
            "pruned_test_accuracy_before_finetune": report["pruned"]["test_accuracy_before_finetune"],
            "pruned_test_accuracy": report["pruned"]["test_accuracy"],
            "total_seconds": report["total_seconds"],
        })
    print(f"{'model':10s} {'params':>12s} {'pruned':>10s} {'FLOPs':>14s} {'pruned':>12s} {'SVI s':>7s} {'total s':>8s}")
    for r in rows:
        print(f"{r['model']:10s} {r['baseline_params']:12,d} {r['pruned_params']:10,d} {r['baseline_flops']:14,d} "
              f"{r['pruned_flops']:12,d} {r['svi_seconds']:7.1f} {r['total_seconds']:8.1f}")
    result = {"note": "CIFAR-10 (JPEG copy) when data.source is cifar10-jpeg; smoke runs on a subset, "
                      "accuracies are not comparable with full runs", "rows": rows}
    print(json.dumps(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
