"""Run directories from elsewhere and concurrent commands (issue 13 items 1-3, 8): containment, locking, input hashes, commits that a full disk or a kill cannot leave half-done."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pyro_dirichlet.app import rundir
from pyro_dirichlet.app.rundir import LOCK, RunDirectory, RunDirectoryError, RunDirectoryLockedError

IDENTITY = {"model": "lenet5", "dataset": "mnist", "data": {"subset": None}}


def commit(run, step, files, **result):
    with run.lock(), run.stage() as staging:
        for name, text in files.items():
            (staging / name).write_text(text)
        return run.commit(step, staging, config={}, result=result, seconds=0.1,
                          identity=IDENTITY if step == "train" else None)


def snapshot(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def two_steps(tmp_path):
    run = RunDirectory(tmp_path / "run")
    commit(run, "train", {"baseline.safetensors": "weights"})
    commit(run, "fit", {"posterior.nc": "draws", "forest.png": "plot"})
    return run


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim", "sub/victim", ".lock", "run.json", "", "..", 7, None])
def test_a_manifest_naming_a_file_outside_its_directory_is_refused(two_steps, tmp_path, name):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    recorded = json.loads(two_steps.manifest_path.read_text())
    recorded["steps"]["fit"]["files"].append(name)
    two_steps.manifest_path.write_text(json.dumps(recorded))
    with pytest.raises(RunDirectoryError, match=r"run\.json lists the file .* refusing a manifest that points outside"):
        two_steps.manifest()
    # Redoing the train step would have deleted the later steps' files, the victim included.
    with pytest.raises(RunDirectoryError), two_steps.lock(), two_steps.stage() as staging:
        (staging / "baseline.safetensors").write_text("new")
        two_steps.commit("train", staging, config={}, result={}, seconds=0.0, identity=IDENTITY)
    assert victim.read_text() == "keep me"


def test_a_symbolic_link_out_of_the_directory_is_refused(two_steps, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("secret")
    (two_steps.path / "posterior.nc").unlink()
    (two_steps.path / "posterior.nc").symlink_to(outside)
    with pytest.raises(RunDirectoryError, match="symbolic link out of the run directory"):
        two_steps.input("posterior.nc")


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(steps=[]), "'steps' is not an object"),
    (lambda m: m["steps"].update(finetune=m["steps"]["fit"]), "not a prefix"),
    (lambda m: m["steps"].update(explode={}), "'explode' is no step"),
    (lambda m: m["steps"]["fit"].update(files="posterior.nc"), "no 'files' of the right type"),
    (lambda m: m["steps"]["fit"].update(seconds="fast"), "no 'seconds' of the right type"),
    (lambda m: m["steps"]["fit"]["sha256"].update({"posterior.nc": "abc"}), "SHA-256 digests"),
    (lambda m: m.pop("dataset"), "'dataset' or 'data' is missing"),
    (lambda m: m.update(model=["lenet5"]), "'model' is not a string"),
])
def test_a_malformed_manifest_is_one_error_naming_it(two_steps, change, message):
    recorded = json.loads(two_steps.manifest_path.read_text())
    change(recorded)
    two_steps.manifest_path.write_text(json.dumps(recorded))
    with pytest.raises(RunDirectoryError, match=message) as caught:
        two_steps.manifest()
    assert str(two_steps.manifest_path) in str(caught.value)


def test_a_deeply_nested_or_huge_manifest_is_refused_unparsed(two_steps, monkeypatch):
    two_steps.manifest_path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(RunDirectoryError, match="nested too deeply"):
        two_steps.manifest()
    monkeypatch.setattr(rundir, "MAX_MANIFEST_BYTES", 100)
    two_steps.manifest_path.write_text(" " * 101)
    with pytest.raises(RunDirectoryError, match="not a regular file of at most"):
        two_steps.manifest()


def test_a_file_changed_since_its_step_is_refused_as_input(two_steps):
    assert two_steps.input("posterior.nc").read_text() == "draws"
    (two_steps.path / "posterior.nc").write_text("other draws")
    with pytest.raises(RunDirectoryError, match=r"posterior.nc has changed since the fit step wrote it .* "
                                                r"`pyro-dirichlet fit --run"):
        two_steps.input("posterior.nc")


def test_a_step_records_the_hashes_of_what_it_read_and_wrote(two_steps):
    with two_steps.lock(), two_steps.stage() as staging:
        two_steps.input("posterior.nc")
        (staging / "pruned.json").write_text("{}")
        record = two_steps.commit("prune", staging, config={}, result={}, seconds=0.0)["steps"]["prune"]
    fit = two_steps.record("fit")
    assert record["inputs"] == {"posterior.nc": fit["sha256"]["posterior.nc"]}
    assert fit["sha256"]["posterior.nc"] == hashlib.sha256(b"draws").hexdigest()
    assert record["sha256"] == {"pruned.json": hashlib.sha256(b"{}").hexdigest()}


def test_a_step_whose_input_was_replaced_underneath_it_does_not_commit(two_steps):
    def files():  # outside the lock file (which names the holder now) and the staging folder
        return {k: v for k, v in snapshot(two_steps.path).items() if k != LOCK and not k.startswith(".staging-")}

    with pytest.raises(RunDirectoryError, match=r"posterior.nc in .* changed while the prune step ran"):
        with two_steps.lock(), two_steps.stage() as staging:
            two_steps.input("posterior.nc")
            # A command without the lock (an older version, a hand edit) refits meanwhile.
            recorded = json.loads(two_steps.manifest_path.read_text())
            recorded["steps"]["fit"]["sha256"]["posterior.nc"] = "0" * 64
            two_steps.manifest_path.write_text(json.dumps(recorded))
            before = files()
            (staging / "pruned.json").write_text("{}")
            two_steps.commit("prune", staging, config={}, result={}, seconds=0.0)
    assert files() == before


def test_a_second_command_fails_naming_the_holders_pid(two_steps):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom pyro_dirichlet.app.rundir import RunDirectory\n"
         "with RunDirectory(Path(sys.argv[1])).lock():\n    print('locked', flush=True)\n    time.sleep(60)\n",
         str(two_steps.path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(two_steps.path)
        with pytest.raises(RunDirectoryLockedError, match=rf"is in use by process {holder.pid} "):
            with two_steps.lock():
                pass
        assert snapshot(two_steps.path) == before
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with two_steps.lock():  # the kernel released the dead holder's lock
        assert (two_steps.path / LOCK).read_text() == f"{os.getpid()}\n"
    assert (two_steps.path / LOCK).read_text() == ""


def test_threads_of_one_process_exclude_each_other_but_a_step_inside_a_step_does_not(two_steps):
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold():
        with two_steps.lock():
            with two_steps.lock():  # re-entrant in the holding thread
                inside.set()
                release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert inside.wait(30)
    try:
        with two_steps.lock():
            pass
    except RunDirectoryLockedError as error:
        errors.append(str(error))
    release.set()
    thread.join()
    assert len(errors) == 1 and f"process {os.getpid()}" in errors[0]


def test_a_lock_on_a_new_directory_leaves_nothing_when_the_step_fails(tmp_path):
    run = RunDirectory(tmp_path / "new" / "run")
    with pytest.raises(RuntimeError, match="bad data"), run.lock():
        raise RuntimeError("bad data")
    assert not (tmp_path / "new").exists()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["manifest", "journal", "move", "commit"])
def test_a_disk_filling_during_a_commit_leaves_the_directory_as_it_was(two_steps, monkeypatch, where):
    before = snapshot(two_steps.path)
    real_replace, real_json = os.replace, rundir.atomic_write_json

    def replace(source, target):
        if (where == "move" and Path(target).name == "posterior.nc") or (where == "commit" and Path(target).name == "run.json"):
            _no_space()
        return real_replace(source, target)

    def write_json(path, obj):
        if Path(path).name == {"manifest": "run.json", "journal": ".commit.json"}.get(where):
            _no_space()
        return real_json(path, obj)

    monkeypatch.setattr(rundir.os, "replace", replace)
    monkeypatch.setattr(rundir, "atomic_write_json", write_json)
    with pytest.raises(OSError) as caught:
        commit(two_steps, "fit", {"posterior.nc": "new draws", "forest.png": "new plot"})
    assert caught.value.errno == errno.ENOSPC
    assert snapshot(two_steps.path) == before


def test_a_commit_killed_halfway_is_rolled_back_by_the_next_command(two_steps, monkeypatch):
    before = snapshot(two_steps.path)
    real_replace = os.replace

    class Killed(BaseException):
        pass

    def replace(source, target):
        if Path(target) == two_steps.manifest_path and Path(source).parent.name.startswith(".staging-"):
            raise Killed  # SIGKILL right before the manifest moves in: no rollback runs
        return real_replace(source, target)

    monkeypatch.setattr(rundir.os, "replace", replace)
    monkeypatch.setattr(rundir, "_roll_back", lambda staging, target: None)
    monkeypatch.setattr(rundir.shutil, "rmtree", lambda *a, **k: None)  # nor does the cleanup
    with pytest.raises(Killed):
        commit(two_steps, "fit", {"posterior.nc": "new draws", "forest.png": "new plot"})
    monkeypatch.undo()
    assert (two_steps.path / "posterior.nc").read_text() == "new draws"  # half-updated on disk...
    (staging,) = two_steps.path.glob(".staging-*")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = staging.with_name(f".staging-{int(dead.stdout)}-killed")
    staging.rename(orphan)
    with two_steps.lock():  # ...until the next command takes the lock
        pass
    assert snapshot(two_steps.path) == before
    assert two_steps.input("posterior.nc").read_text() == "draws"


def test_a_live_commands_staging_folder_is_left_alone(two_steps):
    mine = two_steps.path / f".staging-{os.getppid()}-busy"
    mine.mkdir()
    stale = two_steps.path / ".staging-999999999-stale"
    stale.mkdir()
    (stale / "posterior.nc").write_bytes(b"x" * 4096)
    with two_steps.lock():
        pass
    assert mine.is_dir() and not stale.exists()
