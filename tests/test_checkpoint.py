"""Checkpoint and resume of a fit: a resumed fit must equal an uninterrupted one, bit for bit."""

import signal
from dataclasses import replace
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch

from fit_process import config, problem
from pyro_dirichlet.infer.checkpoint import FitCheckpoint
from pyro_dirichlet.infer.fit import fit

SCRIPT = Path(__file__).with_name("fit_process.py")


pytestmark = pytest.mark.usefixtures("one_thread")


def uninterrupted(n: int, epochs: int, batch_size: int):
    switches, data = problem(n)
    pyro.clear_param_store()
    return fit(switches, data, config(epochs, batch_size))


def assert_same_fit(result, expected):
    # Exact equality: the resumed fit replays the same random draws and the same Adam state.
    assert result.elbo == expected.elbo
    assert result.steps == expected.steps
    for name, concentration in expected.concentrations.items():
        assert torch.equal(result.concentrations[name], concentration), name


def test_resuming_with_more_epochs_equals_an_uninterrupted_fit(tmp_path):
    path = tmp_path / "fit.ckpt"
    switches, data = problem(128)  # 4 steps per epoch
    first = fit(switches, data, config(2, 32, checkpoint_every=3), checkpoint=path)
    saved = FitCheckpoint.load(path)
    assert saved.step == 8 and saved.elbo == first.elbo and saved.seconds > 0

    pyro.clear_param_store()
    switches, data = problem(128)
    resumed = fit(switches, data, config(4, 32, checkpoint_every=3), checkpoint=path)
    assert_same_fit(resumed, uninterrupted(128, 4, 32))
    assert resumed.seconds >= saved.seconds
    assert FitCheckpoint.load(path).step == 16

    # a finished fit resumed again takes no step and gives the same result
    pyro.clear_param_store()
    again = fit(*problem(128), config(4, 32), checkpoint=path)
    assert_same_fit(again, resumed)


def test_ctrl_c_writes_the_last_completed_step_and_resume_is_exact(tmp_path):
    path = tmp_path / "fit.ckpt"
    switches, data = problem(128)
    model, calls = switches.model, []

    def interrupted_model(*args, **kwargs):
        calls.append(None)
        if len(calls) == 7:  # during step 7, after steps 1-6 completed (last regular save: step 4)
            raise KeyboardInterrupt
        return model(*args, **kwargs)

    switches.model = interrupted_model
    with pytest.raises(KeyboardInterrupt):
        fit(switches, data, config(3, 32, checkpoint_every=4), checkpoint=path)
    saved = FitCheckpoint.load(path)
    assert saved.step == 6 and len(saved.elbo) == 6
    assert not list(tmp_path.glob(".fit.ckpt*"))  # no temporary file left behind

    pyro.clear_param_store()
    resumed = fit(*problem(128), config(3, 32, checkpoint_every=4), checkpoint=path)  # resumes mid-epoch
    assert_same_fit(resumed, uninterrupted(128, 3, 32))


def test_a_sigkilled_fit_resumes_to_the_uninterrupted_result(tmp_path):
    path, out = tmp_path / "fit.ckpt", tmp_path / "out"
    epochs, batch_size, n, kill_at = 8, 8, 256, 40  # 256 steps, a checkpoint every 10
    command = [sys.executable, str(SCRIPT), str(out), "--checkpoint", str(path), "--examples", str(n),
               "--epochs", str(epochs), "--batch-size", str(batch_size), "--checkpoint-every", "10",
               "--step-delay", "0.01", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240  # a safety net, not a timing bar: a starved CPU is slow to reach step 40
        while True:
            if path.exists() and FitCheckpoint.load(path).step >= kill_at:
                break
            if process.poll() is not None:
                pytest.fail(f"the fit ended (rc {process.returncode}) before step {kill_at}: {process.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint at step >= {kill_at} within 240 s")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    saved = FitCheckpoint.load(path)  # atomic writes: the file is whole after a SIGKILL
    assert kill_at <= saved.step < epochs * n // batch_size
    assert not out.exists()  # it really died before finishing

    pyro.clear_param_store()
    resumed = fit(*problem(n), config(epochs, batch_size, checkpoint_every=10), checkpoint=path)
    assert_same_fit(resumed, uninterrupted(n, epochs, batch_size))


def test_a_checkpoint_of_another_fit_is_refused_naming_the_difference(tmp_path):
    path = tmp_path / "fit.ckpt"
    fit(*problem(64), config(1, 32), checkpoint=path)

    pyro.clear_param_store()
    switches, data = problem(64)
    with pytest.raises(ValueError, match=r"fit\.ckpt.*lr 0\.1 in the checkpoint, 0\.05 now"):
        fit(switches, data, replace(config(1, 32), lr=0.05), checkpoint=path)

    pyro.clear_param_store()
    network = switches.network
    from pyro_dirichlet.infer.switches import DirichletSwitches

    fewer = DirichletSwitches(network, data.images[:2], layers=["conv1"])
    with pytest.raises(ValueError, match=r"fit\.ckpt.*layers"):
        fit(fewer, data, config(1, 32), checkpoint=path)

    with pytest.raises(ValueError, match="train_size 64 in the checkpoint, 32 now"):
        fit(*problem(32), config(1, 32), checkpoint=path)

    pyro.clear_param_store()
    fit(*problem(64), config(3, 32), checkpoint=path)  # 6 steps
    with pytest.raises(ValueError, match="more than the 2 of FitConfig.epochs=1"):
        fit(*problem(64), config(1, 32), checkpoint=path)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable fit checkpoint"):
        fit(*problem(64), config(1, 32), checkpoint=path)


def test_checkpoint_file_loads_with_weights_only_and_round_trips(tmp_path):
    path = tmp_path / "fit.ckpt"
    fit(*problem(64), config(1, 32), checkpoint=path)
    record = torch.load(path, weights_only=True)  # no arbitrary pickle needed to read it
    assert record["step"] == 2 and set(record["params"]) == {  # tests/fit_process.py: the paper's model, no gains
        "conv1.switch.concentration", "conv2.switch.concentration", "fc1.switch.concentration"}
    saved = FitCheckpoint.load(path)
    assert saved.layers == [("conv1", 6), ("conv2", 8), ("fc1", 12)]
    # the stored parameter is the unconstrained (log) concentration
    assert torch.equal(saved.params["conv1.switch.concentration"].exp(), pyro.param("conv1.switch.concentration").detach())
