"""fp32 against bf16 autocast, in one run: training, SVI, calibration and pruned inference of LeNet-5, ResNet-20, VGG-16.

Issue 31. For each network and each precision (alternating within every repeat, so both see
the same machine state) it times

- a training epoch: :func:`~pyro_dirichlet.repair.train.train_classifier`, one epoch with the
  registry's recipe on ``images`` training images, validation excluded, **scaled** to the
  full training split (LeNet-5: 55,000 MNIST images; ResNet-20 and VGG-16: 45,000 CIFAR-10
  images) -- a fixed number of steps, each costing what every step of a full epoch costs;
- the same through ``TrainConfig(compile=True)``: two epochs, the second timed and scaled
  the same way, the first's extra seconds reported as ``compiling`` (paid once per run, not
  scaled): round 0 compiles into an empty Inductor cache of the run's own (cold), later
  rounds find the graphs there (cached), as a user's second run does;
- an SVI epoch: :func:`~pyro_dirichlet.infer.fit.fit`, one epoch on the same images, scaled the same way;
- a calibration pass: :func:`~pyro_dirichlet.repair.calibrate.calibrate` of the network pruned to
  its registry widths, one pass of scale steps over the same images (plus its BatchNorm and
  check batches), not scaled;
- pruned inference: :func:`~pyro_dirichlet.measure.latency_seconds` of that pruned network
  at batch 1 and 256;

and reports per repeat, the medians of the repeats and the median of the per-repeat
``bf16 / fp32`` ratios, in wall seconds and, for the training, SVI and calibration passes, in
this process's CPU seconds too (``*_cpu``: with one torch thread, the compute the pass costs;
on a shared machine the wall seconds also hold the waits for other processes' work, the CPU
seconds do not -- the training and SVI CPU seconds include their small untimed setup and
validation pass). Within a round the two precisions alternate which goes first (round 0
fp32 first, round 1 bf16 first, ...), so neither always pays the round's warm-up. LeNet-5 runs on real MNIST; ResNet-20 and VGG-16 on random images of
CIFAR-10's shape (a step costs the same whatever the pixels; this keeps the JPEG decoding
out of the benchmark's wall time). The networks are freshly initialised: timings need no
trained weights.

``--finetune-seeds N`` adds the accuracy comparison: the trained ResNet-20 baseline
(``analysis/baselines/resnet20-cifar10.safetensors``), pruned by L1-norm to 50% of its FLOPs
(every inner conv the same share, :func:`~pyro_dirichlet.planning.allocation.uniform_counts`),
fine-tuned in fp32 and in bf16 from the same pruned weights with the same seed (SGD,
Nesterov, lr 0.05, batch 512, cosine, the best validation epoch kept), test accuracy in
fp32, for seeds 0..N-1. On real CIFAR-10 (JPEG copy); ``--finetune-epochs`` (default 1)
and ``--finetune-images`` size it. One epoch is what fits on the 2-core CPU (about 1.5
and 1 minute per seed in fp32 and bf16); the issue's protocol is 30 epochs, about an hour
per seed and precision there.

The JSON is rewritten after every measurement (``"complete": false`` until the end), with
every raw timing under ``runs``; ``--resume`` continues a stopped run of the same settings
from its file instead of starting over. :func:`render_table` turns the file into README's
markdown table.

    python -m benchmarks.precision                       # timings, ~4 min of one idle CPU thread
    python -m benchmarks.precision --finetune-seeds 3    # and the fine-tune accuracies, ~8 min more
    python -m benchmarks.precision --finetune-seeds 3 --resume   # after an interruption
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Self

import pyro
import torch
from pyro_dirichlet.baselines.registry import get_model_entry

from benchmarks.inference import pruned_copy
from benchmarks.workloads import Workload, synthetic_splits
from pyro_dirichlet.repair.calibrate import CalibrationConfig, calibrate
from pyro_dirichlet.data import load_dataset
from pyro_dirichlet.infer.convergence import FitNotConvergedWarning
from pyro_dirichlet.infer.fit import FitConfig, fit
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.measure import Stopwatch, accuracy, count_flops, latency_seconds
from pyro_dirichlet.precision import native_bf16
from pyro_dirichlet.repair.train import TrainConfig, train_classifier

__all__ = ["NETWORKS", "finetune_accuracy", "main", "render_table", "time_model"]

PRECISIONS = ("fp32", "bf16")
#: name -> (training images timed, batch size, images in a full epoch of its data set).
NETWORKS = {"lenet5": (2048, 128, 55000), "resnet20": (1024, 128, 45000), "vgg16": (512, 128, 45000)}
BATCHES = (1, 256)
RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"
RESNET20_WEIGHTS = Path(__file__).resolve().parents[1] / "analysis" / "baselines" / "resnet20-cifar10.safetensors"


def _workload(name: str, images: int, batch_size: int, data_dir: str | None) -> Workload:
    entry = get_model_entry(name)
    if entry.dataset == "mnist":
        data, source = load_dataset("mnist", data_dir).subset(train=images, validation=32, test=32, seed=0), "mnist"
    else:
        data, source = synthetic_splits(entry.dataset, (3, 32, 32), images), "synthetic"
    return Workload(name, data, batch_size, dict(entry.default_keep), source=source)


class _CPUClock:
    """This process's CPU seconds over a block: on a shared machine, the compute a pass costs, without the waits."""

    def __enter__(self) -> Self:
        self.start = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.process_time() - self.start


def _once(workload: Workload, precision: str, seed: int, pruned: torch.nn.Module) -> dict[str, float]:
    """One repeat's wall seconds (``NAME``) and CPU seconds (``NAME_cpu``) of every measured pass in ``precision``."""
    data = replace(workload.data, augment=None)
    # The recipe's optimiser; a constant schedule, since a one-cycle schedule of a few steps has no warm-up to divide.
    recipe = replace(get_model_entry(workload.name).train, epochs=1, batch_size=workload.batch_size, seed=seed,
                     precision=precision, schedule="constant")
    seconds = {}
    with _CPUClock() as cpu:
        seconds["train"] = train_classifier(workload.build(), data, recipe, progress=False).seconds_per_epoch[0]
    seconds["train_cpu"] = cpu.seconds
    # Through torch.compile: two epochs, the first paying the compilation (the Inductor cache on
    # disk makes that seconds, not half a minute, after the first round), the second the steps.
    torch._dynamo.reset()  # a fresh network each round: no recompilation limit reached across rounds
    compiled = train_classifier(workload.build(), data, replace(recipe, epochs=2, compile=True), progress=False)
    seconds["train_compiled"] = compiled.seconds_per_epoch[1]
    seconds["compiling"] = compiled.seconds_per_epoch[0] - compiled.seconds_per_epoch[1]
    pyro.clear_param_store()
    switches = DirichletSwitches(workload.build(), data.train.images[:2])
    config = FitConfig(epochs=1, batch_size=workload.batch_size, seed=seed, device="cpu", progress=False, precision=precision)
    with _CPUClock() as cpu:
        seconds["svi"] = fit(switches, data.train, config).seconds
    seconds["svi_cpu"] = cpu.seconds
    pyro.clear_param_store()
    steps = len(data.train) // workload.batch_size
    with Stopwatch() as watch, _CPUClock() as cpu:
        calibrate(pruned, data.train, data.train.images[:2],
                  CalibrationConfig(steps=steps, batchnorm_batches=steps, check_batches=2, seed=seed, precision=precision))
    seconds["calibration"], seconds["calibration_cpu"] = watch.seconds, cpu.seconds
    generator = torch.Generator().manual_seed(seed)
    for batch in BATCHES:
        images = torch.randn(batch, *data.train.images.shape[1:], generator=generator)
        seconds[f"inference_batch{batch}"] = latency_seconds(pruned, images, repeats=5, warmup=2, precision=precision)
    return seconds


def time_model(name: str, *, repeats: int, data_dir: str | None = None, log=print, partial=None,
               done: dict[str, list[dict[str, float]]] | None = None) -> dict:
    """Every pass of network ``name`` in fp32 and bf16, ``repeats`` alternating rounds; medians and ratios.

    ``partial``, if given, receives the summary of what is measured so far after every
    measurement; ``done`` (a summary's ``runs``) holds measurements of an earlier, stopped
    run, which are kept and not repeated.
    """
    images, batch_size, _ = NETWORKS[name]
    runs: dict[str, list[dict[str, float]]] = {precision: list((done or {}).get(precision, [])) for precision in PRECISIONS}
    if all(len(runs[precision]) >= repeats for precision in PRECISIONS):
        return _summary(runs, name)
    workload = _workload(name, images, batch_size, data_dir)
    pruned = pruned_copy(workload.build().eval(), workload.default_keep, workload.data.train.images[:2])
    for repeat in range(repeats):
        # Alternating which precision goes first, so neither always pays a round's warm-up.
        for precision in PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]:
            if len(runs[precision]) > repeat:
                continue
            with warnings.catch_warnings():
                # A few SVI steps are all a timing needs; the advice to fit longer is noise here.
                warnings.simplefilter("ignore", FitNotConvergedWarning)
                runs[precision].append(_once(workload, precision, repeat, pruned))
            log(f"{name} repeat {repeat} {precision}: " + ", ".join(f"{k} {v:.3f} s" for k, v in runs[precision][-1].items()))
            if partial is not None:
                partial(_summary(runs, name))
    return _summary(runs, name)


def _summary(runs: dict[str, list[dict[str, float]]], name: str) -> dict:
    images, batch_size, full = NETWORKS[name]
    scale = {key: full / images for key in ("train", "train_cpu", "train_compiled", "svi", "svi_cpu")}
    rounds = min(len(runs[precision]) for precision in PRECISIONS)
    passes = {}
    for key in runs["fp32"][0] if rounds else ():
        per = {precision: [run[key] * scale.get(key, 1.0) for run in runs[precision][:rounds]] for precision in PRECISIONS}
        passes[key] = {
            "seconds": per,
            "median": {precision: statistics.median(values) for precision, values in per.items()},
            "bf16_over_fp32": statistics.median(b / f for b, f in zip(per["bf16"], per["fp32"])),
        }
        if key == "compiling":
            # Round 0 compiled into main()'s empty Inductor cache; later rounds read the graphs from it.
            passes[key]["cold"] = {precision: values[0] for precision, values in per.items()}
            passes[key]["cached"] = {precision: statistics.median(values[1:]) for precision, values in per.items()
                                     if len(values) > 1}
    return {
        "images": images, "full_epoch_images": full, "batch_size": batch_size,
        "source": "mnist" if get_model_entry(name).dataset == "mnist" else "synthetic",
        "rounds": rounds, "scaled_to_full_epoch": sorted(scale),
        "extrapolation": f"train, train_compiled and svi (and their _cpu): {images // batch_size} steps of {batch_size} "
                         f"images timed, scaled by {full}/{images} to a full epoch; compiling (the first compiled "
                         f"epoch's extra seconds, paid once a run), calibration and inference not scaled",
        "pruned_widths": dict(get_model_entry(name).default_keep), "passes": passes, "runs": runs,
    }


def finetune_accuracy(*, seeds: int, epochs: int, images: int, data_dir: str | None = None, log=print,
                      partial=None, done: list[dict] | None = None) -> dict:
    """Test accuracy of ResNet-20 pruned by L1-norm to 50% FLOPs, fine-tuned in fp32 and bf16 from the same start.

    ``partial`` receives the rows so far after every fine-tune; ``done`` holds rows of an
    earlier, stopped run (same seed and precision: not fine-tuned again).
    """
    from pyro_dirichlet.baselines.trained import load_checkpoint

    from pyro_dirichlet.planning.allocation import uniform_counts
    from pyro_dirichlet.criteria import get_criterion
    from pyro_dirichlet.planning.plan import plan_keep
    from pyro_dirichlet.structure import find_prunable_layers
    from pyro_dirichlet.surgery import prune_channels

    data = load_dataset("cifar10", data_dir).subset(train=images, seed=0)
    network = get_model_entry("resnet20").build()
    network.load_state_dict(load_checkpoint(RESNET20_WEIGHTS)[0])
    network.eval()
    example = data.train.images[:2]
    layers = find_prunable_layers(network, example)
    widths = {layer.name: layer.channels for layer in layers}
    counts = uniform_counts(network, widths, example, budget=0.5, cost="flops")
    scores = get_criterion("l1-norm")(network, layers, data.train)
    pruned = prune_channels(network, plan_keep({name: scores[name] for name in counts}, counts), example).eval()
    recipe = TrainConfig(epochs=epochs, batch_size=512, lr=0.05, optimizer="sgd", momentum=0.9, nesterov=True,
                         weight_decay=5e-4, schedule="cosine")
    protocol = {"budget": "50% FLOPs", "criterion": "l1-norm", "epochs": epochs, "train_images": len(data.train),
                "validation_images": len(data.validation), "test_images": len(data.test), "source": data.source,
                "recipe": recipe.to_dict(), "flops_pruned": count_flops(pruned, example),
                "flops_baseline": count_flops(network, example)}
    rows = [row for row in done or [] if row["seed"] < seeds]
    for seed in range(seeds):
        for precision in PRECISIONS:
            if any(row["seed"] == seed and row["precision"] == precision for row in rows):
                continue
            model = prune_channels(network, plan_keep({name: scores[name] for name in counts}, counts), example)
            model.load_state_dict(pruned.state_dict())
            started = time.perf_counter()
            train_classifier(model, data, replace(recipe, seed=seed, precision=precision), progress=False, keep_initial=True)
            rows.append({"seed": seed, "precision": precision, "seconds": time.perf_counter() - started,
                         "test_accuracy": accuracy(model, data.test), "validation_accuracy": accuracy(model, data.validation)})
            log(f"fine-tune seed {seed} {precision}: test {rows[-1]['test_accuracy']:.4f} in {rows[-1]['seconds']:.0f} s")
            if partial is not None:
                partial({"protocol": protocol, "rows": rows})
    mean = {p: statistics.mean(r["test_accuracy"] for r in rows if r["precision"] == p) for p in PRECISIONS}
    protocol["baseline_test_accuracy"] = accuracy(network, data.test)
    return {"protocol": protocol, "rows": rows, "mean_test_accuracy": mean,
            "bf16_minus_fp32_points": 100 * (mean["bf16"] - mean["fp32"])}


#: The passes of README's table, in its column order, with their headers.
_COLUMNS = (("train", "training epoch"), ("train_compiled", "training epoch, torch.compile"),
            ("compiling", "compiling once a run, cold / cached"), ("svi", "SVI epoch"), ("calibration", "calibration pass"),
            ("inference_batch1", "pruned inference, batch 1"), ("inference_batch256", "pruned inference, batch 256"),
            # This process's CPU seconds: on a shared machine the wall seconds also hold other jobs' turns.
            ("train_cpu", "training epoch, CPU"), ("svi_cpu", "SVI epoch, CPU"), ("calibration_cpu", "calibration, CPU"))


def _seconds(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f} s"
    return f"{value:.3g} s" if value >= 0.01 else f"{value * 1000:.3g} ms"


def render_table(result: dict) -> str:
    """README's markdown table of a ``precision.json``: fp32 and bf16 medians and the median bf16/fp32 ratio per pass.

    One row per network, one column per pass (``fp32 -> bf16 (ratio)``), the wall seconds
    and then the CPU seconds of the training, SVI and calibration passes; with a fine-tune
    comparison, a second table of the mean test accuracies. Every number is the JSON's,
    rounded: seconds to three significant figures, ratios to two decimals.

    Example:
        >>> print(render_table(json.loads(RESULTS.read_text())))  # doctest: +SKIP
        | network | training epoch | ...
    """
    lines = ["| network (rounds) | " + " | ".join(header for _, header in _COLUMNS) + " |",
             "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, model in result["models"].items():
        if not model["passes"]:  # a stopped run's network with no round measured yet
            lines.append(f"| {name} (0) | " + " | ".join("not measured" for _ in _COLUMNS) + " |")
            continue
        cells = []
        for key, _ in _COLUMNS:
            row = model["passes"][key]
            if key == "compiling":
                cached = row.get("cached", {})
                cells.append(" -> ".join(f"{_seconds(row['cold'][p])}" + (f" / {_seconds(cached[p])}" if p in cached else "")
                                         for p in PRECISIONS))
                continue
            cells.append(f"{_seconds(row['median']['fp32'])} -> {_seconds(row['median']['bf16'])} "
                         f"({row['bf16_over_fp32']:.2f}x)")
        lines.append(f"| {name} ({model['rounds']}) | " + " | ".join(cells) + " |")
    finetune = result.get("finetune")
    if finetune and "mean_test_accuracy" in finetune:
        seeds = sorted({row["seed"] for row in finetune["rows"]})
        protocol = finetune["protocol"]
        lines += ["", "| ResNet-20, L1-norm, 50% FLOPs, fine-tuned | fp32 | bf16 | bf16 - fp32 |", "|---|---|---|---|",
                  (f"| test accuracy, mean of {len(seeds)} seeds ({protocol['epochs']} epoch(s) on "
                   f"{protocol['train_images']:,} images) | {100 * finetune['mean_test_accuracy']['fp32']:.2f}% | "
                   f"{100 * finetune['mean_test_accuracy']['bf16']:.2f}% | {finetune['bf16_minus_fp32_points']:+.2f} points |")]
    return "\n".join(lines) + "\n"


def _settings(args: argparse.Namespace, models: list[str]) -> dict:
    """What a resumed run must share with the file it continues."""
    return {"repeats": args.repeats, "threads": args.threads, "networks": {name: list(NETWORKS[name]) for name in models},
            "finetune": {"seeds": args.finetune_seeds, "epochs": args.finetune_epochs, "images": args.finetune_images}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating fp32/bf16 rounds; medians over them (default 3)")
    parser.add_argument("--models", default=",".join(NETWORKS), help="comma-separated subset of " + ", ".join(NETWORKS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--finetune-seeds", type=int, default=0, help="ResNet-20 fine-tune accuracy for seeds 0..N-1 (default 0: skip)")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tune epochs (default 1; the issue's protocol is 30)")
    parser.add_argument("--finetune-images", type=int, default=45000, help="CIFAR-10 training images of the fine-tune")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stopped run in --json (same settings) instead of starting over")
    args = parser.parse_args(argv)
    models = [name for name in args.models.split(",") if name]
    unknown = [name for name in models if name not in NETWORKS]
    if unknown or args.repeats < 1 or args.threads < 1:
        parser.error(f"--models must name {', '.join(NETWORKS)}; --repeats and --threads at least 1 (got {unknown})")
    torch.set_num_threads(args.threads)
    # An empty Inductor cache of the run's own, so each network's first round pays a cold compile.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="precision-inductor-"))
    started = time.perf_counter()
    settings = _settings(args, models)
    result = {
        "machine": {"cpu_native_bf16": native_bf16("cpu"), "torch": torch.__version__, "python": platform.python_version(),
                    "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "load_average_at_start": os.getloadavg()[0]},
        "repeats": args.repeats, "settings": settings, "models": {}, "complete": False,
    }
    earlier: dict = {}
    if args.resume and args.json.is_file():
        earlier = json.loads(args.json.read_text())
        if earlier.get("settings") != settings:
            parser.error(f"--resume: {args.json} was written with other settings ({earlier.get('settings')}); "
                         "rerun without --resume to start over")
        result["seconds_before_resume"] = earlier.get("seconds", 0.0)
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        # After every measurement, so a run stopped early keeps what it measured.
        result["seconds"] = result.get("seconds_before_resume", 0.0) + time.perf_counter() - started
        temporary = args.json.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(result, indent=1) + "\n")
        temporary.replace(args.json)

    for name in models:
        def partial(summary: dict, name: str = name) -> None:
            result["models"][name] = summary
            write()

        done = earlier.get("models", {}).get(name, {}).get("runs")
        result["models"][name] = time_model(name, repeats=args.repeats, data_dir=args.data_dir, partial=partial, done=done)
        write()
    if args.finetune_seeds:
        def partial_finetune(rows: dict) -> None:
            result["finetune"] = rows
            write()

        result["finetune"] = finetune_accuracy(seeds=args.finetune_seeds, epochs=args.finetune_epochs,
                                               images=args.finetune_images, data_dir=args.data_dir,
                                               partial=partial_finetune, done=earlier.get("finetune", {}).get("rows"))
    result["complete"] = True
    write()
    for name, model in result["models"].items():
        print(name + ": " + ", ".join(f"{key} {row['bf16_over_fp32']:.2f}x" for key, row in model["passes"].items()))
    print(render_table(result))
    print(f"wrote {args.json} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
