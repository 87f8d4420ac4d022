"""How many CPU threads a step's PyTorch work runs on: the CPUs other processes leave idle.

PyTorch starts one OpenMP thread per core, and GNU OpenMP's threads spin at every barrier
waiting for each other. When another process keeps one of the cores busy, the thread that
shares it is descheduled while its partners spin, and every parallel region waits for a
time slice: on a 2-core machine with one single-threaded job beside it, a LeNet-5 training
step of 128 images took 140 ms on 2 threads against 49 ms on one
(``benchmarks/results/threads.json``, ``python -m benchmarks.threads``). Nothing in the
run's output hints at it; a 45 s demo took 11 minutes.

So each step of the command line measures, from ``/proc/stat`` over a twentieth of a second
(less this process's own time from ``/proc/self/stat``), how many CPUs other processes keep
busy, and runs on the rest (at least one). A number
the user gave (``--threads N``, or ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in the
environment) is used as it is. Where ``/proc/stat`` cannot be read (not Linux), PyTorch's
own count stays. Only the run's steps (the command line, and ``pyro_dirichlet.app.pipeline.run``)
change the thread count, each for its own duration; ``fit``, ``train_classifier`` and the
other library functions leave it as the caller set it.

Example:
    >>> with step_threads(1) as threads:
    ...     assert torch.get_num_threads() == threads == 1
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["busy_cpus", "choose_threads", "step_threads"]

#: Environment variables through which a user sets the thread count themselves.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Seconds over which the other processes' CPU use is measured.
SAMPLE_SECONDS = 0.05


def _cpu_times(stat: Path) -> tuple[int, int]:
    """``(busy, total)`` jiffies of all CPUs together, from the first line of ``/proc/stat``."""
    fields = [int(value) for value in stat.read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    # already counted in user, and idle and iowait are the CPUs' free time.
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def _own_jiffies(own: Path) -> int:
    """This process's CPU time, all its threads (``utime + stime`` of ``/proc/self/stat``), in the same ticks."""
    # The command name (field 2) may hold spaces and parentheses: the fields start after its last ")".
    fields = own.read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def busy_cpus(
    interval: float = SAMPLE_SECONDS, *, stat: str | os.PathLike = "/proc/stat", own: str | os.PathLike = "/proc/self/stat"
) -> float | None:
    """CPUs other processes keep busy over the next ``interval`` seconds (``1.5``: one and a half), or ``None`` where unknown.

    The machine's busy time less this process's own: the caller sleeps meanwhile, but its
    OpenMP threads may still spin for milliseconds after the last parallel region.
    """
    path, own_path = Path(stat), Path(own)
    try:
        (busy_before, total_before), own_before = _cpu_times(path), _own_jiffies(own_path)
        time.sleep(interval)
        (busy_after, total_after), own_after = _cpu_times(path), _own_jiffies(own_path)
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_after - total_before
    if elapsed <= 0:
        return None
    others = max(0, busy_after - busy_before - (own_after - own_before))
    return others / elapsed * (os.cpu_count() or 1)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | None = None, *, busy: float | None = None) -> int:
    """The threads for a step: ``requested`` if given, else the idle CPUs (at most PyTorch's own count, at least 1).

    ``busy`` is :func:`busy_cpus`' figure, measured here when not given. With a thread
    count set in the environment, or where the machine's load is unknown, PyTorch's
    current count is kept.
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be a positive integer, got {requested!r}.")
        return requested
    current = torch.get_num_threads()
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        return current
    if busy is None:
        busy = busy_cpus()
    if busy is None:
        return current
    # A CPU more than half used by others is theirs: the threads that would share it are the slow ones.
    idle = _usable_cpus() - round(busy)
    return max(1, min(current, idle))


@contextlib.contextmanager
def step_threads(requested: int | None = None) -> Iterator[int]:
    """Run the block on :func:`choose_threads`' count; PyTorch's count is restored afterwards."""
    before = torch.get_num_threads()
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
