"""Links and special files (issue 34): nothing outside the run directory is read, written, moved or truncated through
a link, and a FIFO, a device or a link to ``/dev/zero`` where a file is expected is refused within 5 s, never read.
"""

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from test_bad_inputs import default_fit_checkpoint, invoke

#: Every case must end within this many seconds (a hang would block forever; the bar is 5 s).
LIMIT_S = 5.0


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry under ``directory``: a regular file by its SHA-256, anything else (a link, a FIFO) by what it is."""
    entries = {}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            entries[str(path.relative_to(directory))] = f"link to {os.readlink(path)}"
        elif path.is_fifo():
            entries[str(path.relative_to(directory))] = "fifo"
        elif path.is_file():
            entries[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def timed_invoke(argv: list[str], capsys) -> tuple[int, str]:
    started = time.monotonic()
    code, error = invoke([*argv, "--quiet"], capsys)
    assert time.monotonic() - started < LIMIT_S + 30, "a special file was read"  # the step's own work on top
    return code, error


def one_sentence(error: str) -> str:
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-dirichlet: error: "), error
    return lines[0]


def fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- the lock file -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["prune", "--keep", "conv9=3"], ["prune"], ["report"]], ids=" ".join)
def test_a_lock_file_linked_outside_is_neither_truncated_nor_written(run_copy, tmp_path, capsys, argv):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    (run_copy / ".lock").unlink(missing_ok=True)
    (run_copy / ".lock").symlink_to(outside)
    before = snapshot(run_copy)
    code, error = timed_invoke([argv[0], "--run", str(run_copy), *argv[1:]], capsys)
    assert code == 2, error
    sentence = one_sentence(error)
    assert ".lock' is a symbolic link: refusing to read, write or replace anything through it" in sentence
    assert outside.read_text() == "keep me\n"
    assert snapshot(run_copy) == before


def test_a_lock_file_that_is_a_fifo_is_refused_at_once(run_copy, capsys):
    fifo(run_copy / ".lock")
    before = snapshot(run_copy)
    started = time.monotonic()
    code, error = invoke(["prune", "--run", str(run_copy), "--quiet"], capsys)
    assert time.monotonic() - started < LIMIT_S
    assert code == 2 and ".lock' is a FIFO, not a regular file" in one_sentence(error)
    assert snapshot(run_copy) == before


# --- leftovers of a killed commit ----------------------------------------------------------------


def plant_staging(run: Path, tmp: Path, how: str) -> Path:
    """A killed command's staging folder whose roll-back would move a file from ``tmp/outside`` into the run."""
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "posterior.nc").write_text("outside file")
    staging = run / f".staging-{dead_pid()}-x"
    if how == "staging-is-a-link":
        (outside / ".commit.json").write_text('{"files": ["posterior.nc"], "remove": []}')
        (outside / "run.json").write_text("{}")
        (outside / ".previous").mkdir()
        staging.symlink_to(outside)
        return outside
    staging.mkdir()
    (staging / ".commit.json").write_text('{"files": ["posterior.nc"], "remove": []}')
    (staging / "run.json").write_text("{}")
    if how == "previous-is-a-link":
        (staging / ".previous").symlink_to(outside)
    else:  # the old version is a link to the outside file
        (staging / ".previous").mkdir()
        (staging / ".previous" / "posterior.nc").symlink_to(outside / "posterior.nc")
    return outside


@pytest.mark.parametrize("how", ["previous-is-a-link", "file-is-a-link", "staging-is-a-link"])
def test_the_clean_up_of_a_killed_commit_moves_nothing_from_outside(run_copy, tmp_path, capsys, how):
    posterior = (run_copy / "posterior.nc").read_bytes()
    outside = plant_staging(run_copy, tmp_path, how)
    before = snapshot(outside)
    from pyro_dirichlet.app.rundir import RunDirectory

    run = RunDirectory(run_copy)
    with run.lock():
        pass
    assert snapshot(outside) == before and (outside / "posterior.nc").read_text() == "outside file"
    assert (run_copy / "posterior.nc").read_bytes() == posterior
    assert not (run_copy / "posterior.nc").is_symlink()
    assert not list(run_copy.glob(".staging-*"))
    run.input("posterior.nc")  # the run is still whole


# --- files of the run directory that are not files -----------------------------------------------


@pytest.mark.parametrize("make", [fifo, dev_zero], ids=["fifo", "dev-zero"])
@pytest.mark.parametrize(("command", "name"), [
    ("fit", "baseline.safetensors"),
    ("prune", "posterior.nc"),
    ("report", "posterior.nc"),
    ("report", "pruned.json"),
    ("report", "pruned.safetensors"),
    ("finetune", "pruned-before-finetune.json"),
])
def test_a_run_file_replaced_by_a_special_file_is_refused_unread(run_copy, capsys, make, command, name):
    make(run_copy / name)
    before = snapshot(run_copy)
    started = time.monotonic()
    code, error = invoke([command, "--run", str(run_copy), "--quiet"], capsys)
    assert time.monotonic() - started < LIMIT_S, "the special file was read"
    assert code == 2, error
    sentence = one_sentence(error)
    assert name in sentence and ("symbolic link" in sentence or "FIFO" in sentence), sentence
    assert snapshot(run_copy) == before


def test_a_run_file_linked_inside_the_directory_is_refused_too(run_copy, tmp_path, capsys):
    (run_copy / "posterior.nc").rename(run_copy / "elsewhere.nc")
    (run_copy / "posterior.nc").symlink_to(run_copy / "elsewhere.nc")
    before = snapshot(run_copy)
    code, error = invoke(["prune", "--run", str(run_copy), "--quiet"], capsys)
    assert code == 2 and "posterior.nc' is a symbolic link" in one_sentence(error)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("make", [fifo, dev_zero], ids=["fifo", "dev-zero"])
def test_a_fit_checkpoint_that_is_a_special_file_is_refused_not_followed(run_copy, capsys, make):
    checkpoint = default_fit_checkpoint(run_copy)
    make(checkpoint)
    before = snapshot(run_copy)
    started = time.monotonic()
    code, error = invoke(["fit", "--run", str(run_copy), "--quiet"], capsys)
    assert time.monotonic() - started < LIMIT_S
    assert code == 2 and f"fit checkpoint '{checkpoint}' is a" in one_sentence(error)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("make", [fifo, dev_zero], ids=["fifo", "dev-zero"])
def test_weights_given_as_a_special_file_are_refused(tmp_path, capsys, make):
    make(tmp_path / "w.pt")
    started = time.monotonic()
    code, error = invoke(["train", "--out", str(tmp_path / "run"), "--weights", str(tmp_path / "w.pt"), "--quiet"], capsys)
    assert time.monotonic() - started < LIMIT_S
    assert code == 2 and "w.pt' does not exist or is not a regular file" in one_sentence(error)
    assert not (tmp_path / "run").exists()


# --- the Python API ------------------------------------------------------------------------------


@pytest.fixture
def saved_pruned(tmp_path):
    from pyro_dirichlet.models import LeNet5Caffe
    from pyro_dirichlet.io.serialization import save_pruned

    save_pruned(LeNet5Caffe(), tmp_path / "net")
    return tmp_path / "net"


@pytest.mark.parametrize("make", [fifo, dev_zero], ids=["fifo", "dev-zero"])
@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_load_pruned_refuses_a_special_file(saved_pruned, make, suffix):
    from pyro_dirichlet.io.serialization import ModelFileError, load_pruned

    make(Path(f"{saved_pruned}{suffix}"))
    started = time.monotonic()
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_pruned(saved_pruned)
    assert time.monotonic() - started < LIMIT_S


@pytest.mark.parametrize("make", [fifo, dev_zero], ids=["fifo", "dev-zero"])
def test_load_posterior_and_read_state_dict_refuse_a_special_file(tmp_path, make):
    from pyro_dirichlet.posterior import load_posterior
    from pyro_dirichlet.io.regular_files import SpecialFileError
    from pyro_dirichlet.io.weights import WeightsError, read_state_dict

    make(tmp_path / "file")
    started = time.monotonic()
    with pytest.raises(SpecialFileError, match="posterior file .* not a regular file"):
        load_posterior(tmp_path / "file")
    with pytest.raises(WeightsError, match="not a regular file"):
        read_state_dict(tmp_path / "file")
    assert time.monotonic() - started < LIMIT_S


def switches_of(network):
    from pyro_dirichlet.infer.switches import DirichletSwitches

    return DirichletSwitches(network, torch.randn(2, 1, 14, 14))


class Endless:
    """An iterable whose len() says 4 batches but which never stops yielding."""

    dataset = list(range(32))

    def __len__(self):
        return 4

    def __iter__(self):
        while True:
            yield torch.randn(8, 1, 14, 14), torch.randint(0, 3, (8,))


@pytest.mark.parametrize("checkpointed", [False, True])
def test_fit_stops_an_iterable_that_yields_more_than_its_len(tiny_cnn, tmp_path, checkpointed):
    from pyro_dirichlet.infer.fit import FitConfig, fit

    started = time.monotonic()
    with pytest.raises(ValueError, match=r"yielded more batches in epoch 1 than its len\(\) of 4"):
        fit(switches_of(tiny_cnn), Endless(), FitConfig(epochs=1, progress=False),
            checkpoint=tmp_path / "c.pt" if checkpointed else None)
    assert time.monotonic() - started < LIMIT_S


@pytest.mark.parametrize("make", [fifo, dev_zero], ids=["fifo", "dev-zero"])
def test_fit_refuses_a_checkpoint_that_is_a_special_file(tiny_cnn, tmp_path, make):
    from pyro_dirichlet.infer.fit import FitConfig, fit
    from pyro_dirichlet.io.regular_files import SpecialFileError

    make(tmp_path / "c.pt")
    data = [(torch.randn(8, 1, 14, 14), torch.randint(0, 3, (8,)))] * 2
    started = time.monotonic()
    with pytest.raises(SpecialFileError, match="checkpoint .* is a"):
        fit(switches_of(tiny_cnn), data, FitConfig(epochs=1, progress=False, data_size=16), checkpoint=tmp_path / "c.pt")
    assert time.monotonic() - started < LIMIT_S
