"""``python -m benchmarks.coverage``: which networks the structure analysis prunes, next to Torch-Pruning.

Every torchvision classification builder (random weights, ``num_classes=10``, eval mode) and
every registered model is tried as a new user would: switch sites
(``DirichletSwitches(model, x)``) with ``on_unsupported="raise"`` and with ``"skip"``, then
``prune_channels`` on a seeded random half of each reported layer (whole blocks where a grouped
convolution reads it), checked against the masked network (pruned == masked within 1e-4
relative), and the fraction of parameters kept. Switch sites use ``coupled="group"``, so that
residual streams are pruned too, as Torch-Pruning prunes them. The yardstick is Torch-Pruning's
``MetaPruner`` with L1 magnitude at ratio 0.5 on the same model and input, where the package
is installed (it is optional: the library never imports it).

A model *prunes in raise mode* when switch sites are built with the default
``on_unsupported="raise"`` and the pruned network equals the masked one; in skip mode when the
same holds with ``on_unsupported="skip"`` (the layers it cannot follow left unpruned). Each
model runs in a forked child with a time limit, so one giant model cannot stall the run::

    python -m benchmarks.coverage --json benchmarks/results/coverage.json
    python -m benchmarks.coverage --models resnet18 registered:lenet5   # a few, printed only

``--population`` picks the models: ``torchvision`` (the default: the builders and the registered
models), ``timm`` (one model per architecture family, :mod:`benchmarks.timm_population`;
results in ``benchmarks/results/coverage_timm.json``), ``transformers`` (13 Hugging Face
architectures from tiny configs, :mod:`benchmarks.transformers_population`; results in
``benchmarks/results/coverage_transformers.json``)::

    OMP_NUM_THREADS=1 python -m benchmarks.coverage --population timm --timeout 90 --tp-timeout 60 \\
        --json benchmarks/results/coverage_timm.json --resume
    OMP_NUM_THREADS=1 python -m benchmarks.coverage --population transformers \\
        --json benchmarks/results/coverage_transformers.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.measure import count_parameters

TOLERANCE = 1e-4
KEEP = 0.5
SEED = 0
BATCH = 2

# Builders with a fixed or minimum input size. ViTs take image_size=, so two patches a side
# keep them cheap; MaxViT's partitions need 224; Inception-v3 needs at least 75.
_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}
_FIXED_SIZE = {"maxvit_t": 224, "inception_v3": 75}
_DATASET_INPUT = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def torchvision_names() -> list[str]:
    """The classification builders of ``torchvision.models``, smallest first by parameters."""
    import torchvision
    from torchvision.models import get_model_weights

    def size(name: str) -> int:
        return next(iter(get_model_weights(name))).meta["num_params"]

    return sorted(torchvision.models.list_models(module=torchvision.models), key=size)


# Registered models go by "registered:NAME": the registry's CIFAR vgg16 is not torchvision's.
REGISTERED = "registered:"


def registered_names() -> list[str]:
    from pyro_dirichlet.baselines import MODELS

    return [REGISTERED + name for name in MODELS]


# timm models go by "timm:NAME" when named with --models outside --population timm.
TIMM = "timm:"


def timm_names() -> list[str]:
    from benchmarks.timm_population import TIMM_MODELS

    return [TIMM + name for name in TIMM_MODELS]


# Hugging Face models go by "transformers:NAME".
TRANSFORMERS = "transformers:"


def transformers_names() -> list[str]:
    from benchmarks.transformers_population import TRANSFORMERS_MODELS

    return [TRANSFORMERS + name for name in TRANSFORMERS_MODELS]


def build(name: str) -> tuple[nn.Module, torch.Tensor | tuple[torch.Tensor, ...], dict]:
    """The model in eval mode, a seeded input of the smallest size it takes, and the builder kwargs."""
    torch.manual_seed(SEED)
    from pyro_dirichlet.baselines import MODELS

    if name.startswith(TRANSFORMERS):
        from benchmarks.transformers_population import build as build_transformers

        return build_transformers(name.removeprefix(TRANSFORMERS), BATCH, SEED)
    if name.startswith(TIMM):
        from benchmarks.timm_population import build as build_timm

        return build_timm(name.removeprefix(TIMM), BATCH, SEED)

    if name.startswith(REGISTERED):
        entry = MODELS[name.removeprefix(REGISTERED)]
        return entry.build().eval(), torch.randn(BATCH, *_DATASET_INPUT[entry.dataset]), {}
    import torchvision

    options: dict = {"weights": None, "num_classes": 10}
    size = _FIXED_SIZE.get(name, 64)
    if name in _VIT_PATCH:
        size = 2 * _VIT_PATCH[name]
        options["image_size"] = size
    model = torchvision.models.get_model(name, **options)
    with torch.no_grad():
        for module in model.modules():
            # ViT zero-initialises its head: the logits would all be zero to compare.
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.05)
    options.pop("weights")
    return model.eval(), torch.randn(BATCH, 3, size, size), options


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:400]


def _output(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(*x) if isinstance(x, tuple) else model.eval()(x)
    return out.logits if hasattr(out, "logits") else out


def check_ours(model: nn.Module, x: torch.Tensor) -> dict:
    """Raise and skip mode, a random half pruned, pruned vs masked, parameters kept."""
    from pyro_dirichlet import DirichletSwitches, UnsupportedStructureError
    from pyro_dirichlet.planning.plan import plan_keep
    from pyro_dirichlet.surgery import mask_channels, prune_channels

    result: dict = {}
    start = time.perf_counter()
    # DirichletSwitches fits on one input tensor; a model taking several (T5's and Whisper's
    # decoder ids) is analysed by find_prunable_layers, which the switch sites come from.
    sites = DirichletSwitches if not isinstance(x, tuple) else _Layers
    if isinstance(x, tuple):
        result["sites_from"] = "find_prunable_layers (DirichletSwitches takes one input tensor)"
    try:
        sites(model, x, coupled="group")
        result["raise"] = {"ok": True}
    except UnsupportedStructureError as err:
        result["raise"] = {"ok": False, "error": _first_line(err), "unsupported_layers": max(1, len(err.problems))}
    except Exception as err:  # noqa: BLE001 - every failure is a finding to report
        result["raise"] = {"ok": False, "error": _first_line(err), "unsupported_layers": None}
    try:
        switches = sites(model, x, coupled="group", on_unsupported="skip")
    except Exception as err:  # noqa: BLE001
        result["skip"] = {"ok": False, "error": _first_line(err)}
        result["seconds"] = round(time.perf_counter() - start, 2)
        return result
    layers = switches.layers
    unsupported = [{"layer": s.name, "reason": s.reason.splitlines()[0][:300]} for s in layers.unsupported]
    skip: dict = {"sites": len(layers), "skipped_unsupported": unsupported,
                  # sites pruned in whole attention heads (structure/hf_attention.py)
                  "head_sites": sum(any(c.kind == "linear_out" for c in layer.consumers) for layer in layers)}
    generator = torch.Generator().manual_seed(SEED)
    scores = {layer.name: torch.rand(layer.channels, generator=generator) for layer in layers}
    try:
        keep = plan_keep(scores, dict.fromkeys(scores, KEEP), blocks={layer.name: layer.block for layer in layers})
        pruned = prune_channels(model, keep, x, layers=layers)
        got = _output(pruned, x)
        skip["params_kept"] = round(count_parameters(pruned) / count_parameters(model), 4)
        del pruned
        expected = _output(mask_channels(model, keep, x, layers=layers), x)
        difference = float((got - expected).abs().max() / expected.abs().max())
        skip["relative_difference"] = float(f"{difference:.3g}")
        skip["ok"] = difference <= TOLERANCE
    except Exception as err:  # noqa: BLE001
        skip.update(ok=False, error=_first_line(err))
    result["skip"] = skip
    result["raise"]["ok"] = result["raise"]["ok"] and skip["ok"]
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


class _Layers:
    """``find_prunable_layers``'s answer where :class:`DirichletSwitches` is used otherwise."""

    def __init__(self, model: nn.Module, x: tuple[torch.Tensor, ...], **options) -> None:
        from pyro_dirichlet.structure import find_prunable_layers

        self.layers = find_prunable_layers(model, x, **options)


def check_torch_pruning(model: nn.Module, x: torch.Tensor) -> dict:
    """Torch-Pruning 1.6 ``MetaPruner``, L1 magnitude, ratio 0.5, the classifier ignored; in place."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {"ok": None, "error": "torch_pruning is not installed"}
    start = time.perf_counter()
    # DirichletSwitches froze the model; Torch-Pruning leaves parameters without gradients alone.
    model.requires_grad_(True)
    before, shape = count_parameters(model), _output(model, x).shape
    classifiers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    classifiers += [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 10]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notes on parameters it prunes by guessing
            pruner = tp.pruner.MetaPruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=KEEP,
                ignored_layers=classifiers,
            )
            pruner.step()
        ok = _output(model, x).shape == shape
        result = {"ok": ok, "params_kept": round(count_parameters(model) / before, 4)}
        if not ok:
            result["error"] = "the pruned model's output changed shape"
    except Exception as err:  # noqa: BLE001
        result = {"ok": False, "error": _first_line(err)}
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def check(name: str, send, torch_pruning: bool = True) -> None:
    """Measure one model, sending the entry once this library's part is done and again with
    Torch-Pruning's, so that a yardstick killed at a limit does not lose the rest."""
    start = time.perf_counter()
    try:
        model, x, options = build(name)
    except Exception as err:  # noqa: BLE001
        send({"model": name, "error": f"could not build: {_first_line(err)}"})
        return
    entry = {
        "model": name,
        "source": _source(name),
        "builder_options": options,
        "input_shape": [list(t.shape) for t in x] if isinstance(x, tuple) else list(x.shape),
        "params": count_parameters(model),
    }
    entry["ours"] = check_ours(model, x)
    entry["seconds"] = round(time.perf_counter() - start, 2)
    send(entry)
    if torch_pruning:
        send(check_torch_pruning(model, x))


def _source(name: str) -> str:
    if name.startswith(REGISTERED):
        return "registry"
    if name.startswith(TRANSFORMERS):
        return "transformers"
    return "timm" if name.startswith(TIMM) else "torchvision"


def _child(name: str, torch_pruning: bool, connection) -> None:
    torch.set_num_threads(1)
    try:
        check(name, connection.send, torch_pruning)
    except BaseException as err:  # noqa: BLE001 - the parent reports it
        connection.send({"model": name, "error": f"crashed: {_first_line(err)}", "traceback": traceback.format_exc()[-2000:]})
    connection.close()


def _resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_in_child(
    name: str, timeout: float, memory_gb: float, torch_pruning: bool = True, tp_timeout: float = 120.0
) -> dict:
    """:func:`check` in a forked process, killed after ``timeout`` seconds in all (or
    ``tp_timeout`` seconds of Torch-Pruning) or above ``memory_gb`` GB resident: this machine
    is shared, and Torch-Pruning on a Swin runs for many minutes and takes many GB."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(name, torch_pruning, send))
    start = time.perf_counter()
    process.start()
    send.close()
    messages: list[dict] = []
    stopped = None
    while len(messages) < (2 if torch_pruning else 1):
        if receive.poll(0.5):
            try:
                messages.append(receive.recv())
                ours_done = time.perf_counter()
            except EOFError:
                stopped = f"died (exit code {process.exitcode})"
                break
            if "ours" not in messages[0]:
                break  # the model did not build, or the child crashed
            continue
        if time.perf_counter() - start > timeout:
            stopped = f"stopped at the time limit ({timeout:.0f} s)"
        elif messages and time.perf_counter() - ours_done > tp_timeout:
            stopped = f"stopped at the time limit ({tp_timeout:.0f} s)"
        elif _resident_bytes(process.pid) > memory_gb * 2**30:
            stopped = f"stopped at the memory limit ({memory_gb:g} GB resident)"
        elif not process.is_alive() and not receive.poll(0.5):
            stopped = f"died (exit code {process.exitcode})"
        if stopped:
            break
    if process.is_alive():
        process.kill()
    process.join()
    if not messages:
        entry = {"model": name, "error": stopped or "sent nothing"}
    else:
        entry = messages[0]
        if torch_pruning and "ours" in entry:
            entry["torch_pruning"] = messages[1] if len(messages) > 1 else {"ok": False, "error": stopped}
    entry["wall_seconds"] = round(time.perf_counter() - start, 2)
    return entry


def totals(entries: list[dict]) -> dict:
    """How many models prune in each mode, and how many Torch-Pruning runs on."""
    ours = [entry.get("ours", {}) for entry in entries]
    tp = [entry.get("torch_pruning", {}) for entry in entries]
    raise_ok = {e["model"] for e, o in zip(entries, ours) if o.get("raise", {}).get("ok")}
    skip_ok = {e["model"] for e, o in zip(entries, ours) if o.get("skip", {}).get("ok")}
    tp_ok = {e["model"] for e, t in zip(entries, tp) if t.get("ok")}
    return {
        "models": len(entries),
        "raise": len(raise_ok),
        "skip": len(skip_ok),
        "torch_pruning": len(tp_ok),
        "torch_pruning_only": sorted(tp_ok - skip_ok),
        "not_in_raise_mode": sorted({e["model"] for e in entries} - raise_ok),
    }


def _line(entry: dict) -> str:
    if "error" in entry and "ours" not in entry:
        return f"{entry['model']:<22} {entry['error']}"
    ours, tp = entry["ours"], entry.get("torch_pruning", {})
    skip = ours.get("skip", {})
    mode = "raise" if ours["raise"]["ok"] else "skip" if skip.get("ok") else "no"
    kept = skip.get("params_kept", float("nan"))
    tp_kept = tp.get("params_kept") if tp.get("ok") else None
    unsupported = len(skip.get("skipped_unsupported", []))
    return (
        f"{entry['model']:<22} {mode:<5} kept {kept:.3f} diff {skip.get('relative_difference', float('nan')):.1e} "
        f"sites {skip.get('sites', 0):>3} unsupported {unsupported:>3}  TP "
        f"{'%.3f' % tp_kept if tp_kept is not None else 'fails'}  {entry.get('wall_seconds', 0):.0f}s"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--population", choices=("torchvision", "timm", "transformers"), default="torchvision",
        help="which models: torchvision builders and registered models (default), one timm model per family (timm:NAME), "
        "or 13 Hugging Face architectures from tiny configs (transformers:NAME)",
    )
    parser.add_argument("--models", nargs="+", default=None, help="only these (default: the whole --population)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one model may take (default 300)")
    parser.add_argument("--tp-timeout", type=float, default=120.0, help="seconds Torch-Pruning may take on one model (default 120)")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="resident memory one model may take (default 8)")
    parser.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning yardstick")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--resume", action="store_true",
        help="with --json: keep the rows an interrupted run wrote there and measure only the models it lacks",
    )
    parser.add_argument(
        "--update", type=Path, default=None,
        help="rerun only --models and replace their rows in this JSON from a full run (totals recomputed, the rerun recorded)",
    )
    args = parser.parse_args(argv)
    if min(args.timeout, args.tp_timeout, args.memory_gb) <= 0:
        parser.error("--timeout, --tp-timeout and --memory-gb must be positive")
    if args.update is not None and (args.models is None or args.json is not None):
        parser.error("--update reruns the models named by --models and rewrites its own file: give --models, not --json")
    if args.resume and args.json is None:
        parser.error("--resume continues the run recorded in --json: give --json")
    if args.update is not None and not args.update.is_file():
        parser.error(f"--update {args.update} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    population = {
        "torchvision": lambda: registered_names() + torchvision_names(), "timm": timm_names,
        "transformers": transformers_names,
    }[args.population]()
    names = args.models or population
    prefix = {"timm": TIMM, "transformers": TRANSFORMERS}.get(args.population)
    if args.models and prefix:
        names = [name if name.startswith(prefix) else prefix + name for name in names]
    unknown = [name for name in names if name not in population]
    if unknown:
        print(f"error: --models names {unknown}, which are neither torchvision builders nor registered models (named registered:NAME, e.g. registered:lenet5) nor timm models of --population timm nor transformers models of --population transformers", file=sys.stderr)
        return 2
    if args.update is not None:
        try:
            previous = {entry["model"] for entry in json.loads(args.update.read_text())["models"]}
        except (ValueError, KeyError, TypeError) as error:
            print(f"error: --update {args.update} is not a coverage JSON ({error})", file=sys.stderr)
            return 2
        missing = sorted(set(names) - previous)
        if missing:
            print(f"error: --update {args.update} has no rows for {missing}; run them in a full run first", file=sys.stderr)
            return 2
    _preload(args.population)
    start = time.perf_counter()
    entries = _resumed(args.json, names) if args.resume else []
    done = {entry["model"] for entry in entries}
    for name in [name for name in names if name not in done]:
        entries.append(check_in_child(name, args.timeout, args.memory_gb, not args.no_torch_pruning, args.tp_timeout))
        print(_line(entries[-1]), flush=True)
        if args.json is not None and len(entries) < len(names):
            # a run stopped part-way keeps what it measured, marked incomplete
            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.json, _report(args, argv, entries, start) | {"complete": False})
    report = _report(args, argv, entries, start)
    if args.update is not None:
        report = _updated(args.update, report)
    summary = report["totals"]
    print(
        f"{summary['models']} models: {summary['raise']} prune in raise mode, {summary['skip']} in skip mode, "
        f"Torch-Pruning runs on {summary['torch_pruning']}; {report['seconds']:.0f} s"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, report)
    if args.update is not None:
        atomic_write_json(args.update, report)
    return 0


def _resumed(path: Path, names: list[str]) -> list[dict]:
    """The rows an interrupted run wrote to ``path`` for models among ``names`` (none if there is
    no file yet). A model stopped at a limit keeps its row: resuming does not retry it."""
    if not path.is_file():
        return []
    return [entry for entry in json.loads(path.read_text())["models"] if entry["model"] in names]


def _report(args: argparse.Namespace, argv: list[str] | None, entries: list[dict], start: float) -> dict:
    import torchvision

    return {
        "command": "python -m benchmarks.coverage " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": _version("timm") if args.population == "timm" else None,
        "transformers": _version("transformers") if args.population == "transformers" else None,
        "population": args.population,
        "torch_pruning": _version("torch-pruning"),
        "machine": platform.machine(),
        "keep": KEEP,
        "tolerance": TOLERANCE,
        "limits": {"seconds": args.timeout, "torch_pruning_seconds": args.tp_timeout, "memory_gb": args.memory_gb},
        "seconds": round(time.perf_counter() - start, 1),
        "totals": totals(entries),
        "models": entries,
    }


def _preload(population: str) -> None:
    """Import what every child needs once, before forking: seconds per model otherwise."""
    import pyro_dirichlet.surgery  # noqa: F401
    from pyro_dirichlet import DirichletSwitches  # noqa: F401

    if population == "timm":
        import timm  # noqa: F401
    if population == "transformers":
        import transformers  # noqa: F401
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        pass


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _updated(path: Path, rerun: dict) -> dict:
    """The full run in ``path`` with the rows of ``rerun``'s models replaced and its totals
    recomputed; ``reruns`` records each partial rerun (command, models, versions, seconds),
    so a reader sees which rows are newer than the full run's command."""
    report = json.loads(path.read_text())
    fresh = {entry["model"]: entry for entry in rerun["models"]}
    report["models"] = [fresh.get(entry["model"], entry) for entry in report["models"]]
    report["totals"] = totals(report["models"])
    report.setdefault("reruns", []).append(
        {key: rerun[key] for key in ("command", "torch", "torchvision", "torch_pruning", "seconds")} | {"models": sorted(fresh)}
    )
    return report


if __name__ == "__main__":
    sys.exit(main())
