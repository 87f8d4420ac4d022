"""Each command-line step's thread count: the CPUs other processes leave idle, unless the user set one."""

import pytest
import torch

from pyro_dirichlet import cpu_threads
from pyro_dirichlet.app.cli import main
from pyro_dirichlet.app.options import Runtime
from pyro_dirichlet.cpu_threads import busy_cpus, choose_threads, step_threads


@pytest.fixture
def no_thread_variables(monkeypatch):
    for name in cpu_threads.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_busy_cpus_reads_the_other_processes_share_from_proc_stat(tmp_path, monkeypatch):
    stat, own = tmp_path / "stat", tmp_path / "self-stat"
    # Two reads of each file: 300 busy of 400 jiffies on 2 CPUs, 100 of them this process's
    # own (a command name with a space and a parenthesis), leave one CPU busy with others.
    reads = {
        stat: iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  300 0 200 900 0 0 0 0 0 0\n"]),
        own: iter([f"42 (py thon) S {' 0' * 10} {utime} 0 0 0 20 0\n" for utime in (50, 150)]),
    }
    monkeypatch.setattr(cpu_threads.Path, "read_text", lambda self: next(reads[self]))
    monkeypatch.setattr(cpu_threads.os, "cpu_count", lambda: 2)
    assert busy_cpus(0, stat=stat, own=own) == pytest.approx(1.0)


def test_busy_cpus_is_unknown_without_proc_stat(tmp_path):
    assert busy_cpus(0, stat=tmp_path / "missing") is None


def test_busy_cpus_on_this_machine_is_between_zero_and_the_cpu_count():
    busy = busy_cpus(0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    import os

    assert 0 <= busy <= os.cpu_count() + 1e-9


@pytest.mark.parametrize(("busy", "threads"), [(0.0, 4), (0.4, 4), (0.6, 3), (1.0, 3), (2.2, 2), (3.9, 1), (8.0, 1)])
def test_the_idle_cpus_are_chosen(no_thread_variables, four_cpus, busy, threads):
    assert choose_threads(busy=busy) == threads


def test_never_more_threads_than_pytorch_had(no_thread_variables, four_cpus):
    torch.set_num_threads(2)
    assert choose_threads(busy=0.0) == 2


def test_a_thread_count_in_the_environment_is_kept(monkeypatch, four_cpus):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert choose_threads(busy=3.0) == 4


def test_an_unknown_load_keeps_pytorchs_count(no_thread_variables, four_cpus, monkeypatch):
    monkeypatch.setattr(cpu_threads, "busy_cpus", lambda: None)
    assert choose_threads() == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_requested_count_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        choose_threads(bad)
    with pytest.raises(ValueError, match="threads must be an integer at least 1"):
        Runtime(threads=bad)


def test_step_threads_sets_the_count_and_restores_it(no_thread_variables):
    before = torch.get_num_threads()
    with step_threads(1) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), step_threads(1):
        raise RuntimeError("a failing step")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("where", ["flag", "config"])
def test_each_cli_step_runs_on_the_requested_threads(run_copy, small_mnist_everywhere, monkeypatch, no_thread_variables,
                                                     tmp_path, where):
    seen = []
    real_set = cpu_threads.torch.set_num_threads

    def record(count):
        seen.append(count)
        real_set(count)

    monkeypatch.setattr(cpu_threads.torch, "set_num_threads", record)
    before = torch.get_num_threads()
    if where == "flag":
        arguments = ["--threads", "1"]
    else:
        config = tmp_path / "config.toml"
        config.write_text("threads = 1\n")
        arguments = ["--config", str(config)]
    assert main(["fit", "--run", str(run_copy), *arguments, "--quiet"]) == 0
    # Set to 1 for the step, then back to what it was.
    assert seen == [1, before]


def test_threads_flag_refuses_zero(run_copy, capsys):
    assert main(["fit", "--run", str(run_copy), "--threads", "0", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "threads" in error and error.count("\n") == 1


def test_the_report_says_on_how_many_threads_latency_was_measured(small_run):
    import json

    latency = json.loads((small_run / "report.json").read_text())["latency"]
    assert isinstance(latency["threads"], int) and latency["threads"] >= 1
    assert f"on cpu ({latency['threads']} threads)" in (small_run / "report.md").read_text()
