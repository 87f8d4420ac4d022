"""Two commands on one run directory at once (issue 13 item 2): the second fails naming the first's PID, and the
manifest's steps always agree with each other and with the files (a deliberately slowed step holds the lock)."""

import hashlib
import json
import os
import threading

import pytest

from pyro_dirichlet.app import steps
from pyro_dirichlet.app.cli import main
from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION


def assert_consistent(run):
    """Every step's inputs are the files its earlier steps recorded, and every recorded file is on disk as recorded."""
    manifest = json.loads((run / "run.json").read_text())
    written = {}
    for step, record in manifest["steps"].items():
        for name, digest in record["inputs"].items():
            assert written.get(name) == digest, f"{step} read a {name} no earlier step wrote"
        for name in record["files"]:
            digest = hashlib.sha256((run / name).read_bytes()).hexdigest()
            assert record["sha256"][name] == digest, f"{name} differs from what {step} recorded"
            written[name] = digest
    return manifest


def slowed(monkeypatch, name, inside, release):
    """Make ``steps.<name>`` wait, once it is running, until the test releases it."""
    real = getattr(steps, name)

    def slow(*args, **kwargs):
        result = real(*args, **kwargs)
        inside.set()
        assert release.wait(120), "the test never released the slowed step"
        return result

    monkeypatch.setattr(steps, name, slow)


@pytest.mark.parametrize(("slow_step", "slow_function", "other", "steps_after"), [
    ("prune", "switch_scales", ["fit", "--prior", "0.5"], ["train", "fit", "prune"]),
    ("fit", "fit", ["prune", "--keep", "conv1=4,conv2=10,fc1=30"], ["train", "fit"]),
])
def test_a_second_command_during_a_slow_step_fails_and_the_manifest_agrees(
        run_copy, small_mnist_everywhere, monkeypatch, capsys, slow_step, slow_function, other, steps_after):
    assert_consistent(run_copy)
    inside, release, codes = threading.Event(), threading.Event(), []
    slowed(monkeypatch, slow_function, inside, release)
    first = threading.Thread(target=lambda: codes.append(main([slow_step, "--run", str(run_copy), "--quiet"])))
    first.start()
    try:
        assert inside.wait(120), "the slowed step never started"
        assert main([*other[:1], "--run", str(run_copy), *other[1:], "--quiet"]) == 2
        error = capsys.readouterr().err
        assert f"is in use by process {os.getpid()} " in error and error.count("\n") == 1
    finally:
        release.set()
        first.join(300)
    assert codes == [0]
    manifest = assert_consistent(run_copy)
    assert list(manifest["steps"]) == steps_after
    assert manifest["steps"]["fit"]["config"]["prior"] == DEFAULT_CONCENTRATION  # the refused refit changed nothing
    assert (run_copy / ".lock").read_text() == ""
