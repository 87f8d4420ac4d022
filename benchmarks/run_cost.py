"""What a user's commands cost end to end: ``--help``, ``make demo`` in both precisions, and a user's run's memory.

Issue 31's command-line bars, each measured by running the installed ``pyro-dirichlet``
command in a child process, as a user would:

- ``help``: wall seconds of ``pyro-dirichlet --help`` (median of ``--help-repeats``);
- ``fit_step``: ``pyro-dirichlet fit --run DIR --quiet`` refitting the defaults' demo run of
  each round: wall seconds against the SVI's own seconds (``run.json``), and the share of the
  wall time spent outside SVI (imports, data, the posterior's draws and predictions, files);
- ``demo``: ``make demo``'s command (``pyro-dirichlet run --model lenet5 --dataset mnist``)
  with the defaults (``--precision auto``: bf16 autocast on a CPU with AMX or AVX-512 BF16)
  and with ``--precision fp32``, alternating which goes first in each of ``--repeats``
  rounds: wall seconds, CPU seconds of the child (``RUSAGE_CHILDREN``), the peak resident
  memory the run records in ``report.json`` and its accuracies. The LeNet-5 baseline comes
  from the cache after the first run of a machine (a fresh clone trains it once);
- ``user_run``: ``pyro-dirichlet run`` on a user's 317k-parameter BatchNorm ResNet with an
  MLP head (``pyro_dirichlet.models.head_resnet:head_resnet``) and a 5-class ImageFolder of
  2,000 training images of 32 px cut from the CIFAR-10 JPEG copy: the peak resident memory
  from ``report.json`` (the process's, through every step).

Results go to ``benchmarks/results/run_cost.json`` (rewritten after every run);
:func:`render_table` turns it into the table of ``docs/results.md``.

    python -m benchmarks.run_cost                 # one round, ~5 min of an idle CPU
    python -m benchmarks.run_cost --repeats 3     # medians of three rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "render_table", "timed_command"]

RESULTS = Path(__file__).resolve().parent / "results" / "run_cost.json"
DEMO = ["run", "--model", "lenet5", "--dataset", "mnist"]
USER_MODEL = "pyro_dirichlet.models.head_resnet:head_resnet"
#: The user's folder: 400 training and 100 test images of each of 5 classes.
USER_IMAGES_PER_CLASS = (400, 100)


def command() -> list[str]:
    """The installed ``pyro-dirichlet`` beside this interpreter (a venv's ``bin``), else ``python -m pyro_dirichlet``."""
    script = Path(sys.executable).with_name("pyro-dirichlet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pyro_dirichlet"]


def timed_command(arguments: list[str], *, env: dict[str, str] | None = None) -> dict:
    """Run ``pyro-dirichlet arguments``; its wall and CPU seconds (the child's user + system) and exit status."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([*command(), *arguments], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"pyro-dirichlet {' '.join(arguments)} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"wall_seconds": wall, "cpu_seconds": cpu}


def _run_record(arguments: list[str], out: Path, env: dict[str, str]) -> dict:
    """One ``pyro-dirichlet run`` into ``out``: its cost and what its report.json says."""
    shutil.rmtree(out, ignore_errors=True)
    record = timed_command([*arguments, "--out", str(out)], env=env)
    report = json.loads((out / "report.json").read_text())
    pruned = report["pruned"]
    record.update(
        peak_rss_bytes=report["environment"]["peak_rss_bytes"],
        svi_steps=report["svi"].get("steps"),
        test_accuracy_before_finetune=pruned.get("test_accuracy_before_finetune"),
        test_accuracy=pruned.get("test_accuracy"),
        report_seconds=report.get("total_seconds"),
    )
    return record


def _fit_step_record(run: Path, env: dict[str, str]) -> dict:
    """Refit the run directory ``run`` (the defaults): wall seconds, SVI seconds, and the share outside SVI."""
    record = timed_command(["fit", "--run", str(run), "--quiet"], env=env)
    fit = json.loads((run / "run.json").read_text())["steps"]["fit"]["result"]
    record.update(svi_seconds=fit["seconds"], svi_steps=fit["steps"],
                  outside_svi_share=(record["wall_seconds"] - fit["seconds"]) / record["wall_seconds"])
    return record


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=1) + "\n")
    temporary.replace(path)


def user_folder(data_dir: str | None) -> Path:
    """The 5-class, 2,000-image ImageFolder (written once into the cache from the CIFAR-10 JPEG zips)."""
    from benchmarks.small_resnet import SmallResNetRecipe, image_folder

    train, test = USER_IMAGES_PER_CLASS
    return image_folder(SmallResNetRecipe(train_per_class=train, test_per_class=test), data_dir)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the demo in both precisions (default 1)")
    parser.add_argument("--help-repeats", type=int, default=5, help="timings of --help (default 5)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--skip-user-run", action="store_true", help="leave out the 2,000-image user run")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.data_dir:
        env["PYRO_DIRICHLET_DATA"] = args.data_dir
    result: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()[0]},
        "settings": {"repeats": args.repeats, "help_repeats": args.help_repeats, "demo": DEMO,
                     "user_model": USER_MODEL, "user_images_per_class": USER_IMAGES_PER_CLASS},
        "complete": False,
    }
    helps = [timed_command(["--help"], env=env)["wall_seconds"] for _ in range(args.help_repeats)]
    result["help"] = {"wall_seconds": helps, "median": statistics.median(helps)}
    print(f"--help: median {result['help']['median']:.2f} s", flush=True)
    _write(result, args.json)
    runs: dict[str, list[dict]] = {"auto": [], "fp32": []}
    fit_steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="run-cost-") as scratch:
        for round_ in range(args.repeats):
            order = ("auto", "fp32") if round_ % 2 == 0 else ("fp32", "auto")
            for precision in order:
                record = _run_record([*DEMO, "--precision", precision], Path(scratch) / f"demo-{precision}", env)
                runs[precision].append(record)
                print(f"demo round {round_} --precision {precision}: {record['wall_seconds']:.1f} s wall, "
                      f"{record['cpu_seconds']:.1f} CPU s, peak RSS {record['peak_rss_bytes'] / 1e9:.2f} GB", flush=True)
                result["demo"] = {"runs": runs}
                if precision == "auto":
                    fit_steps.append(_fit_step_record(Path(scratch) / "demo-auto", env))
                    print(f"fit --run: {fit_steps[-1]['wall_seconds']:.1f} s wall, SVI {fit_steps[-1]['svi_seconds']:.1f} s, "
                          f"{100 * fit_steps[-1]['outside_svi_share']:.1f}% outside SVI", flush=True)
                    result["fit_step"] = {"runs": fit_steps}
                _write(result, args.json)
        result["demo"] = {
            "runs": runs,
            "median": {precision: {key: _median(rows, key) for key in ("wall_seconds", "cpu_seconds", "peak_rss_bytes")}
                       for precision, rows in runs.items()},
        }
        result["fit_step"] = {"runs": fit_steps, "median": {
            key: _median(fit_steps, key) for key in ("wall_seconds", "svi_seconds", "outside_svi_share")}}
        medians = result["demo"]["median"]
        result["demo"]["auto_over_fp32"] = {key: medians["auto"][key] / medians["fp32"][key]
                                            for key in ("wall_seconds", "cpu_seconds")}
        _write(result, args.json)
        if not args.skip_user_run:
            folder = user_folder(args.data_dir)
            record = _run_record(["run", "--model", USER_MODEL, "--dataset", f"imagefolder:{folder}"],
                                 Path(scratch) / "user", env)
            result["user_run"] = record
            print(f"user run (317k parameters, 2,000 images): {record['wall_seconds']:.1f} s wall, "
                  f"peak RSS {record['peak_rss_bytes'] / 1e9:.2f} GB", flush=True)
    result["complete"] = True
    _write(result, args.json)
    return result


def render_table(result: dict) -> str:
    """The markdown table of ``docs/results.md`` from a complete ``run_cost.json``."""
    demo = result["demo"]["median"]
    rows = [
        "| what | measured | bar |",
        "|---|---|---|",
        f"| `pyro-dirichlet --help` (median of {len(result['help']['wall_seconds'])}) | {result['help']['median']:.2f} s | under 1 s |",
        f"| `make demo`, defaults (median of {len(result['demo']['runs']['auto'])}) | {demo['auto']['wall_seconds']:.0f} s wall, "
        f"{demo['auto']['cpu_seconds']:.0f} CPU s | under 120 s |",
        f"| `make demo`, `--precision fp32` | {demo['fp32']['wall_seconds']:.0f} s wall, {demo['fp32']['cpu_seconds']:.0f} CPU s | "
        f"slower than the defaults (defaults / fp32: {result['demo']['auto_over_fp32']['wall_seconds']:.2f} wall, "
        f"{result['demo']['auto_over_fp32']['cpu_seconds']:.2f} CPU) |",
        *([f"| `pyro-dirichlet fit --run DIR` on the demo's run: share of wall time outside SVI (median of "
           f"{len(result['fit_step']['runs'])}) | {100 * result['fit_step']['median']['outside_svi_share']:.1f}% "
           f"({result['fit_step']['median']['wall_seconds']:.1f} s wall, SVI {result['fit_step']['median']['svi_seconds']:.1f} s) "
           f"| at most 25% |"] if "median" in result.get("fit_step", {}) else []),
        f"| `make demo` peak resident memory | {demo['auto']['peak_rss_bytes'] / 1e9:.2f} GB | |",
    ]
    if "user_run" in result:
        user = result["user_run"]
        rows.append(f"| `pyro-dirichlet run`, 317k-parameter BN ResNet, 2,000 images of 32 px: peak resident memory | "
                    f"{user['peak_rss_bytes'] / 1e9:.2f} GB ({user['wall_seconds']:.0f} s wall) | under 1.5 GB |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
