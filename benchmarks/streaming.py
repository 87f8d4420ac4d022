"""Streamed against preloaded SVI: peak resident memory and step time of a fit over a 50,000-image ImageFolder.

``python -m benchmarks.streaming --json benchmarks/results/streaming.json`` extracts the
CIFAR-10 JPEG copy's ``train.zip`` to a folder outside the repository (``--folder``, once),
then runs each path in a fresh process of its own, so each peak is that path's alone:

- **loader**: ``torchvision.datasets.ImageFolder`` + ``ToTensor`` in a ``DataLoader``
  (shuffled, ``--workers`` worker processes), read by ``fit`` batch by batch;
- **preloaded**: the same 50,000 images decoded into one float32 ``(N, 3, 32, 32)`` tensor
  first (preallocated, filled image by image), then ``fit`` on a ``Split`` of it.

Both take ``--steps`` SVI steps of ``--batch-size`` images on ResNet-20 with random weights
(the weights change neither memory nor time) and scale the likelihood to the 50,000
images. The loader draws its ``steps * batch_size`` examples at random from all 50,000;
the preloaded fit slices them from a view of the first ``steps * batch_size`` rows of the
whole tensor, which stays in memory.

Memory: the compared figure (``rss_ratio``) is the peak, sampled every 100 ms from outside,
of the resident memory of the fit process and its workers together: the process's RSS
plus each worker's private pages (forked workers share most of their pages with the fit
process; summing their RSS would count those twice). Beside it, the fit process's own
peak RSS (the kernel's ``VmHWM``), and its RSS before any data is touched (torch, Pyro,
the network: the same on both paths). Step time is the fit's seconds over its steps, the
workers' start included. The paths alternate ``--rounds`` times, so both see the
machine's load alike; each figure is the median over rounds (the peak: the largest).
The preloaded path decodes the images once and keeps them in ``--folder`` as one tensor
file, which later rounds read back whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from benchmarks.bars import STREAMING_BARS, bar_lines, judge
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.measure import peak_rss_bytes

__all__ = ["extract_imagefolder", "main", "measure_path"]

REPOSITORY = Path(__file__).resolve().parents[1]
PATHS = ("loader", "preloaded")


def extract_imagefolder(archive: Path, folder: Path) -> Path:
    """``archive`` (``train/<class>/<n>.jpg``) extracted under ``folder``, once; the ``train`` folder.

    A folder holding fewer images than the archive (an interrupted extraction) is extracted again.
    """
    with zipfile.ZipFile(archive) as opened:
        members = [name for name in opened.namelist() if name.endswith(".jpg")]
        root = folder / "train"
        if not root.is_dir() or sum(1 for _ in root.glob("*/*.jpg")) != len(members):
            folder.mkdir(parents=True, exist_ok=True)
            opened.extractall(folder)
    return root


def _network_and_example():
    from pyro_dirichlet.models import resnet20

    torch.manual_seed(0)
    return resnet20(num_classes=10), torch.zeros(2, 3, 32, 32)


def measure_path(path: str, root: Path, *, steps: int, batch_size: int, workers: int, threads: int) -> dict:
    """Fit along one path in this process and return its figures (run it in a fresh process)."""
    import pyro
    from torch.utils.data import DataLoader, RandomSampler
    from torchvision import datasets, transforms

    from pyro_dirichlet.data import Split
    from pyro_dirichlet.infer.fit import FitConfig, fit
    from pyro_dirichlet.infer.switches import DirichletSwitches

    torch.set_num_threads(threads)
    network, example = _network_and_example()
    switches = DirichletSwitches(network, example)
    dataset = datasets.ImageFolder(str(root), transform=transforms.ToTensor())
    before_data = peak_rss_bytes(current=True)
    load_seconds = 0.0
    if path == "loader":
        sampler = RandomSampler(dataset, num_samples=steps * batch_size, generator=torch.Generator().manual_seed(0))
        train = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
        config = FitConfig(device="cpu", progress=False, batch_size=batch_size)  # data size: len(dataset)
    else:
        start = time.perf_counter()
        cache = root.parent / "train-float32.pt"
        if cache.is_file():
            images, labels = torch.load(cache, weights_only=True)
        else:
            images = torch.empty(len(dataset), 3, 32, 32)
            labels = torch.empty(len(dataset), dtype=torch.int64)
            for index in range(len(dataset)):
                images[index], labels[index] = dataset[index]
            partial = cache.with_suffix(".partial")
            torch.save((images, labels), partial)
            os.replace(partial, cache)
        load_seconds = time.perf_counter() - start
        # A view of the first rows: the whole tensor stays in memory, the fit takes `steps` steps.
        train = Split(images[: steps * batch_size], labels[: steps * batch_size])
        config = FitConfig(device="cpu", progress=False, batch_size=batch_size, effective_data_size=len(dataset))
    pyro.clear_param_store()
    result = fit(switches, train, config)
    process = peak_rss_bytes()
    return {
        "path": path,
        "examples": len(dataset),
        "steps": result.steps,
        "batch_size": batch_size,
        "workers": workers if path == "loader" else 0,
        "threads": threads,
        "fit_seconds": result.seconds,
        "seconds_per_step": result.seconds / result.steps,
        "load_seconds": load_seconds,
        "rss_before_data_bytes": before_data,
        "peak_rss_process_bytes": process,
    }


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a DataLoader's workers), from ``/proc``."""
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(child) for child in task.read_text().split()]
            except OSError:
                continue
            found += children
            frontier += children
    return found


def _rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes, empty when the process has ended."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.endswith(" kB")}


def _memory_of_tree(pid: int) -> int:
    """Bytes resident for ``pid`` and its workers, each page once: the process's RSS plus each worker's private pages.

    A forked worker shares most of its pages with the process (counted in its RSS already);
    what it touches alone (its decoded images, its copy-on-write copies) is private to it.
    Unlike PSS, this does not depend on what other processes of the machine map.
    """
    members = _descendants(pid)
    total = _rollup(pid).get("Rss", 0)
    for worker in members[1:]:
        rollup = _rollup(worker)
        total += rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return total


def _run_child(path: str, args: argparse.Namespace, root: Path) -> dict:
    """One path in a fresh process, its tree's memory sampled every 100 ms from outside."""
    command = [sys.executable, "-m", "benchmarks.streaming", "--child", path, "--folder", str(args.folder),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--threads", str(args.threads)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPOSITORY)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=REPOSITORY, env=environment)
        peak = 0
        while process.poll() is None:
            peak = max(peak, _memory_of_tree(process.pid))
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"the {path} run failed (exit {process.returncode}): {err.read()[-2000:]}")
        record = json.loads(out.read().strip().splitlines()[-1])
    record["peak_rss_bytes"] = peak
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding cifar10-jpeg/train.zip (default $PYRO_DIRICHLET_DATA)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/cifar-imagefolder"), help="where train.zip is extracted (outside the repository)")
    parser.add_argument("--steps", type=int, default=50, help="SVI steps per path and round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (one per spare core)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the fit process")
    parser.add_argument("--rounds", type=int, default=2, help="times the two paths alternate")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "threads", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be at least 0")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    root = args.folder / "train"
    if args.child:
        print(json.dumps(measure_path(args.child, root, steps=args.steps, batch_size=args.batch_size, workers=args.workers, threads=args.threads)))
        return None
    data_dir = args.data_dir or Path(os.environ.get("PYRO_DIRICHLET_DATA", "data"))
    archive = data_dir / "cifar10-jpeg" / "train.zip"
    if not archive.is_file():
        raise SystemExit(f"error: {archive} not found: give --data-dir (or $PYRO_DIRICHLET_DATA) a folder holding cifar10-jpeg/train.zip")
    if REPOSITORY in args.folder.resolve().parents:
        raise SystemExit(f"error: --folder {args.folder} lies inside the repository; extract the images elsewhere")
    started = time.perf_counter()
    root = extract_imagefolder(archive, args.folder)
    rounds = [{path: _run_child(path, args, root) for path in PATHS} for _ in range(args.rounds)]
    runs = {path: [round_[path] for round_ in rounds] for path in PATHS}
    peak = {path: max(run["peak_rss_bytes"] for run in runs[path]) for path in PATHS}
    process = {path: max(run["peak_rss_process_bytes"] for run in runs[path]) for path in PATHS}
    start = {path: max(run["rss_before_data_bytes"] for run in runs[path]) for path in PATHS}
    step = {path: statistics.median(run["seconds_per_step"] for run in runs[path]) for path in PATHS}
    figures = {
        "rss_ratio": peak["loader"] / peak["preloaded"],
        "process_rss_ratio": process["loader"] / process["preloaded"],
        "rss_above_start_ratio": (process["loader"] - start["loader"]) / (process["preloaded"] - start["preloaded"]),
        "step_time_ratio": statistics.median(
            round_["loader"]["seconds_per_step"] / round_["preloaded"]["seconds_per_step"] for round_ in rounds
        ),
        "loader_peak_rss_mib": peak["loader"] / (1 << 20),
        "preloaded_peak_rss_mib": peak["preloaded"] / (1 << 20),
        "rss_before_data_mib": max(start.values()) / (1 << 20),
        "loader_seconds_per_step": step["loader"],
        "preloaded_seconds_per_step": step["preloaded"],
    }
    record = {
        "benchmark": "streaming",
        "data": "CIFAR-10 (JPEG copy), train.zip as an ImageFolder, 50,000 images",
        "model": "resnet20 (random weights)",
        "hardware": platform.machine(),
        "torch": torch.__version__,
        "runs": runs,
        "figures": figures,
        "bars": judge(figures, STREAMING_BARS),
        "seconds": time.perf_counter() - started,
    }
    for line in bar_lines(figures, STREAMING_BARS):
        print(line)
    mib = 1 << 20
    for path in PATHS:
        print(f"{path}: peak RSS {peak[path] / mib:.0f} MiB with its workers (fit process {process[path] / mib:.0f} MiB, "
              f"{start[path] / mib:.0f} before any data), {step[path]:.3f} s/step (median of {args.rounds})")
    if args.json is not None:
        atomic_write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
