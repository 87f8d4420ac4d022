"""CPU threads beside another process: PyTorch's own count against the idle CPUs that the command line's steps choose.

Issue 31. PyTorch runs one OpenMP thread per core, and GNU OpenMP's threads spin at
barriers; when another process keeps a core busy, the step waits on the thread that
shares it. For each condition (the machine idle; one single-threaded job beside it, a
float32 matmul loop) this times a LeNet-5 training step and an SVI step of its switches (the
fit's defaults), 128 MNIST-shaped images each, in a fresh process, on PyTorch's default thread count (one per CPU) and on
:func:`pyro_dirichlet.cpu_threads.choose_threads`' count, and records what it chose.
Medians of ``--repeats`` processes of 30 steps each (SVI: one epoch of 30 steps).

Usage::

    python -m benchmarks.threads            # ~3 min; run it on an otherwise idle machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "render_table"]

RESULTS = Path(__file__).resolve().parent / "results" / "threads.json"
STEPS = 30
#: The timed workloads and how the table names them.
WORKLOADS = {"train": "training (SGD, batch 128)", "svi": "SVI (the fit's defaults, batch 128)"}
#: One workload timed in a fresh process: prints ``threads seconds_per_step``. ``train``: an
#: SGD step of LeNet-5; ``svi``: an SVI step of its switches (the fit step, with the defaults).
_STEP_SCRIPT = """
import sys, time, torch, torch.nn.functional as F
from pyro_dirichlet.cpu_threads import choose_threads
from pyro_dirichlet.models.lenet import LeNet5Caffe
policy, workload, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
if policy == "choose":
    torch.set_num_threads(choose_threads())
torch.manual_seed(0)
network = LeNet5Caffe()
images, labels = torch.randn(128 * steps, 1, 28, 28), torch.randint(0, 10, (128 * steps,))
if workload == "train":
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    def step(i):
        loss = F.cross_entropy(network(images[:128]), labels[:128])
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    for i in range(5):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    seconds = (time.perf_counter() - start) / steps
else:
    from pyro_dirichlet import DirichletSwitches, FitConfig, fit
    from pyro_dirichlet.data import Split
    switches = DirichletSwitches(network.eval(), images[:2])
    result = fit(switches, Split(images, labels), FitConfig(epochs=1, batch_size=128, progress=False))
    seconds = result.seconds / result.steps
print(torch.get_num_threads(), seconds)
"""
#: The neighbour: one thread multiplying matrices until killed.
_BUSY_SCRIPT = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1500, 1500)\nwhile True:\n    a @ a\n"


def _clean_environment() -> dict[str, str]:
    from pyro_dirichlet.cpu_threads import THREAD_VARIABLES

    # A thread count in the environment would decide both rows.
    return {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}


def _time_step(policy: str, workload: str, env: dict[str, str]) -> tuple[int, float]:
    done = subprocess.run([sys.executable, "-c", _STEP_SCRIPT, policy, workload, str(STEPS)], capture_output=True,
                          text=True, env=env, check=True)
    threads, seconds = done.stdout.split()
    return int(threads), float(seconds)


def measure(repeats: int) -> dict:
    env = _clean_environment()
    conditions: dict[str, dict] = {}
    for condition in ("idle", "one busy neighbour"):
        neighbour = None
        if condition != "idle":
            neighbour = subprocess.Popen([sys.executable, "-c", _BUSY_SCRIPT], env=env)
            time.sleep(1.0)  # it is multiplying before the first measurement
        try:
            for workload in WORKLOADS:
                rows = {}
                for policy in ("default", "choose"):
                    runs = [_time_step(policy, workload, env) for _ in range(repeats)]
                    seconds = [s for _, s in runs]
                    rows[policy] = {"threads": [t for t, _ in runs], "seconds_per_step": seconds,
                                    "median": statistics.median(seconds)}
                    print(f"{condition}, {workload}, {policy}: threads {rows[policy]['threads']}, "
                          f"median {1e3 * rows[policy]['median']:.2f} ms/step", flush=True)
                conditions.setdefault(condition, {})[workload] = {
                    **rows, "choose_over_default": rows["choose"]["median"] / rows["default"]["median"]}
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    return conditions


def render_table(result: dict) -> str:
    """Markdown rows: per condition, the threads and ms per step of both policies and their ratio."""
    lines = ["| machine | LeNet-5 step | PyTorch's default | threads chosen by the steps | chosen / default |",
             "|---|---|---|---|---|"]
    for condition, workloads in result["conditions"].items():
        for workload, rows in workloads.items():
            default, choose = rows["default"], rows["choose"]
            lines.append(f"| {condition} | {WORKLOADS[workload]} | {default['threads'][0]} threads, "
                         f"{1e3 * default['median']:.1f} ms | {choose['threads'][0]} threads, {1e3 * choose['median']:.1f} ms "
                         f"| {rows['choose_over_default']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="processes per row (default 3)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_average_at_start": os.getloadavg()[0]},
              "settings": {"repeats": args.repeats, "steps": STEPS, "batch": 128, "network": "lenet5", "workloads": list(WORKLOADS)},
              "conditions": measure(args.repeats)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(render_table(result))
    return result


if __name__ == "__main__":
    main()
