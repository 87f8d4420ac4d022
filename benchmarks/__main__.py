"""``python -m benchmarks``: run the suite once, print a table and one JSON line, optionally write the JSON.

Threads default to 1: this project's machine has 2 shared cores, and with 2 threads
whatever else runs steals one, which slows large element-wise kernels by several times
and turns ratios into noise. ``--threads 0`` leaves torch's default.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from benchmarks.bars import SUITE_BARS, bar_lines, judge
from benchmarks.epochs import measure_epochs
from benchmarks.inference import measure_inference
from benchmarks.overhead import measure_overhead
from benchmarks.posterior_time import measure_posterior
from benchmarks.workloads import lenet5_workload, vgg16_workload
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.devices import resolve_device

SECTIONS = ("epochs", "overhead", "posterior", "inference")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default (default 1)")
    parser.add_argument("--data-dir", default=None, help="data folder (default: $PYRO_DIRICHLET_DATA, then ./data)")
    parser.add_argument("--vgg-train-size", type=int, default=1024, help="CIFAR-10 images in VGG-16's timed epoch")
    parser.add_argument("--overhead-steps", type=int, default=None, help="SVI steps per overhead run (default 40 LeNet-5, 4 VGG-16)")
    parser.add_argument("--samples", type=int, default=1000, help="posterior draws per switch")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these parts")
    parser.add_argument("--models", nargs="+", choices=("lenet5", "vgg16"), default=["lenet5", "vgg16"],
                        help="networks to measure (the posterior part is VGG-16's)")
    parser.add_argument("--quick", action="store_true", help="tiny random data and sizes: a smoke run in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def run_suite(args: argparse.Namespace) -> dict:
    """Every measurement the arguments ask for, as one JSON-ready dict."""
    device = str(resolve_device(args.device))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    quick = args.quick
    builders = {
        "lenet5": lambda: lenet5_workload(quick=quick, data_dir=args.data_dir),
        "vgg16": lambda: vgg16_workload(quick=quick, data_dir=args.data_dir, train_size=args.vgg_train_size),
    }
    workloads = [builders[name]() for name in args.models]
    result: dict = {
        "benchmark": "suite",
        "quick": quick,
        "device": device,
        "hardware": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "data": {w.name: {"source": w.source, "train_examples": len(w.data.train), "batch_size": w.batch_size} for w in workloads},
    }
    figures: dict[str, float] = {}
    if "epochs" in args.only:
        result["epochs"] = {}
        for workload in workloads:
            timing = measure_epochs(workload, repeats=args.repeats, device=device)
            result["epochs"][workload.name] = timing.to_dict()
            figures[f"{workload.name}_svi_over_train"] = timing.ratio
    if "overhead" in args.only:
        result["overhead"] = {}
        for workload in workloads:
            steps = args.overhead_steps or (2 if quick else {"lenet5": 40, "vgg16": 4}[workload.name])
            overhead = measure_overhead(workload, steps=steps, repeats=args.repeats, device=device)
            result["overhead"][workload.name] = overhead.to_dict()
            figures[f"{workload.name}_pyro_overhead"] = overhead.overhead_fraction
    if "posterior" in args.only and "vgg16" in args.models:
        vgg = workloads[args.models.index("vgg16")]
        timing = measure_posterior(vgg, num_samples=100 if quick else args.samples, repeats=args.repeats)
        result["posterior"] = timing.to_dict()
        figures["vgg16_posterior_seconds"] = timing.total_seconds
    if "inference" in args.only:
        result["inference"] = {}
        batches = (1, 8) if quick else (1, 256)
        for workload in workloads:
            timing = measure_inference(workload, batches=batches, repeats=args.repeats, device=device)
            result["inference"][workload.name] = timing.to_dict()
    result["figures"] = figures
    result["bars_met"] = judge(figures, SUITE_BARS)
    return result


def table(result: dict) -> str:
    """The human-readable summary of a suite result."""
    lines = [f"benchmarks on {result['device']} ({result['hardware']}, {result['threads']} thread(s)), "
             f"median of {result['repeats']} run(s){', QUICK (tiny random data)' if result['quick'] else ''}"]
    for name, timing in result.get("epochs", {}).items():
        lines.append(f"  {name:7s} epoch of {timing['examples']:,} images, batch {timing['batch_size']}: "
                     f"train {timing['train_seconds_median']:.2f} s, SVI {timing['svi_seconds_median']:.2f} s, "
                     f"SVI/train {timing['svi_over_train']:.3f}")
    for name, overhead in result.get("overhead", {}).items():
        lines.append(f"  {name:7s} SVI step {overhead['svi_step_seconds_median'] * 1e3:.1f} ms, plain torch "
                     f"{overhead['torch_step_seconds_median'] * 1e3:.1f} ms: Pyro overhead "
                     f"{100 * overhead['pyro_overhead_fraction']:.1f}% of the step")
    if "posterior" in result:
        posterior = result["posterior"]
        lines.append(f"  {posterior['model']:7s} posterior: {posterior['num_samples']:,} draws of {posterior['channels']:,} "
                     f"switches in {statistics.median(posterior['sample_seconds']):.2f} s, HDI summary "
                     f"{statistics.median(posterior['summary_seconds']):.2f} s, total {posterior['total_seconds']:.2f} s")
    for name, timing in result.get("inference", {}).items():
        for batch in timing["seconds"]["full"]:
            full, pruned = timing["seconds"]["full"][batch], timing["seconds"]["pruned"][batch]
            memory_full, memory_pruned = timing["peak_bytes"]["full"][batch], timing["peak_bytes"]["pruned"][batch]
            lines.append(f"  {name:7s} inference batch {batch:>3s}: full {full * 1e3:8.2f} ms {memory_full / 2**20:7.1f} MiB, "
                         f"pruned {pruned * 1e3:8.2f} ms {memory_pruned / 2**20:7.1f} MiB "
                         f"({full / pruned:.2f}x faster)")
        lines.append(f"  {name:7s} parameters {timing['parameters']['full']:,} -> {timing['parameters']['pruned']:,}, "
                     f"FLOPs/example {timing['flops']['full']:,} -> {timing['flops']['pruned']:,}")
    lines += bar_lines(result["figures"], SUITE_BARS)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_suite(args)
    print(table(result))
    print(json.dumps(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, result)
    # A quick run's sizes are too small for the bars to mean anything: it only checks the suite runs.
    return 0 if args.quick or all(result["bars_met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
