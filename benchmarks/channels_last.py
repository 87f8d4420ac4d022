"""Channels-last against the default memory layout for one training step, in fp32 and bf16, in one run.

For LeNet-5 (MNIST-shaped input), ResNet-20 and VGG-16 (CIFAR-shaped), freshly initialised
from the registry, one SGD step on a batch of 128 random images at one torch thread: the
median step time of ``--steps`` steps (the first two dropped as warm-up) per configuration,
``--repeats`` rounds with the four configurations interleaved in each, medians over rounds,
and each configuration's ratio to the fp32 default layout. It is the measurement behind
``TrainConfig.channels_last`` defaulting to True.

    python -m benchmarks.channels_last                 # ~3 min of one idle CPU thread
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyro_dirichlet.baselines import get_model_entry

__all__ = ["main", "step_seconds"]

RESULTS = Path(__file__).resolve().parent / "results" / "channels_last.json"
SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "vgg16": (3, 32, 32)}
CONFIGURATIONS = list(itertools.product(("fp32", "bf16"), (False, True)))


def step_seconds(model: str, precision: str, channels_last: bool, *, steps: int = 8, batch: int = 128) -> float:
    """Median seconds of a training step (forward, loss, backward, SGD step) after two warm-up steps."""
    torch.manual_seed(0)
    network = get_model_entry(model).build().train()
    images = torch.randn(batch, *SHAPES[model])
    labels = torch.randint(0, 10, (batch,))
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(network(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {"threads": 1, "repeats": args.repeats, "steps": args.steps,
                    "load_average_at_start": os.getloadavg()[0], "models": {}}
    for model in args.models:
        runs: dict[str, list[float]] = {f"{p}{'-channels-last' if c else ''}": [] for p, c in CONFIGURATIONS}
        for _ in range(args.repeats):
            for precision, channels_last in CONFIGURATIONS:
                runs[f"{precision}{'-channels-last' if channels_last else ''}"].append(
                    step_seconds(model, precision, channels_last, steps=args.steps))
        medians = {name: statistics.median(times) for name, times in runs.items()}
        result["models"][model] = {"seconds": runs, "median": medians,
                                   "over_fp32": {name: value / medians["fp32"] for name, value in medians.items()}}
        print(model, {name: round(value, 3) for name, value in result["models"][model]["over_fp32"].items()}, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
