"""Quality bars of the core workflow (issue 2), measured end to end on LeNet-5 / MNIST.

Runs the main job (``pyro-dirichlet run``) ``--repeats`` times, each with a fresh baseline
cache (so baseline training is included) and its own seed, then prints a table and one
JSON line, and writes the JSON to ``--json``. Every figure comes from the run's report,
whose numbers come from :mod:`pyro_dirichlet.measure`. The SVI / training ratio is
measured within each run (same network, batch size and data pipeline) and summarised by
its median over runs, since this machine is shared and noisy.

    python -m analysis.benchmark_core --repeats 3 --json analysis/results/benchmark_core.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.bars import CORE_BARS, bar_lines, judge
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.app.pipeline import RunConfig, Runtime, TrainOptions, run


def measure_run(seed: int, data_dir: str | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        report = run(RunConfig(out=Path(scratch) / "run", train=TrainOptions(cache_dir=Path(scratch) / "cache"),
                               runtime=Runtime(data_dir=data_dir, seed=seed, progress=False)))
    return {
        "seed": seed,
        "total_seconds": report["total_seconds"],
        "baseline_test_accuracy": report["baseline"]["test_accuracy"],
        "baseline_seconds_per_epoch": report["baseline"]["seconds_per_epoch"],
        "svi_seconds": report["svi"]["seconds"],
        "svi_over_train_epoch": report["svi"]["seconds"] / report["baseline"]["seconds_per_epoch"],
        "params_fraction": report["pruned"]["params_fraction"],
        "flops_fraction": report["pruned"]["flops_fraction"],
        "pruned_test_accuracy_before_finetune": report["pruned"]["test_accuracy_before_finetune"],
        "pruned_test_accuracy": report["pruned"]["test_accuracy"],
        "architecture": report["pruned"]["architecture"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="independent runs (seeds 0..N-1)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    runs = [measure_run(seed, args.data_dir) for seed in range(args.repeats)]
    medians = {bar.figure: statistics.median(r[bar.figure] for r in runs) for bar in CORE_BARS}
    print(f"LeNet-5 main job, median of {len(runs)} run(s):")
    print("\n".join(bar_lines(medians, CORE_BARS, per_run=runs)))
    verdicts = judge(medians, CORE_BARS)
    result = {
        "benchmark": "core",
        "hardware": f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "runs": runs,
        "medians": medians,
        "bars_met": verdicts,
    }
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, result)
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
