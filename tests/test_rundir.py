"""The run directory's manifest: steps recorded in order, later steps forgotten on a redo, failed steps leave nothing."""

import json

import pytest

from pyro_dirichlet.app.rundir import FORMAT_VERSION, LOCK, RunDirectory, RunDirectoryError, replace_run

IDENTITY = {"model": "lenet5", "dataset": "mnist", "data": {"subset": None}}


def commit(run, step, files, **result):
    with run.lock(), run.stage() as staging:
        for name in files:
            (staging / name).write_text(step)
        return run.commit(step, staging, config={"step": step}, result=result, seconds=0.5,
                          identity=IDENTITY if step == "train" else None)


def test_steps_are_recorded_and_a_redo_forgets_the_later_ones(tmp_path):
    run = RunDirectory(tmp_path / "run")
    commit(run, "train", ["baseline.safetensors"])
    commit(run, "fit", ["posterior.nc"], prior=1.0)
    commit(run, "prune", ["pruned-before-finetune.json"])
    assert run.done() == ["train", "fit", "prune"]
    assert run.record("fit")["result"] == {"prior": 1.0}

    commit(run, "fit", ["posterior.nc"], prior=0.5)
    assert run.done() == ["train", "fit"]
    assert not (run.path / "pruned-before-finetune.json").exists()
    assert (run.path / "baseline.safetensors").read_text() == "train"
    assert sorted(p.name for p in run.path.iterdir()) == [LOCK, "baseline.safetensors", "posterior.nc", "run.json"]


def test_a_failed_step_leaves_the_directory_as_it_was(tmp_path):
    run = RunDirectory(tmp_path / "run")
    commit(run, "train", ["baseline.safetensors"])
    before = run.manifest_path.read_text()
    with pytest.raises(RuntimeError, match="boom"), run.stage() as staging:
        (staging / "posterior.nc").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in run.path.iterdir()) == [LOCK, "baseline.safetensors", "run.json"]
    assert run.manifest_path.read_text() == before


def test_missing_steps_and_files_name_the_command_to_run_first(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(RunDirectoryError, match=r"no run.json\): run `pyro-dirichlet train --out"):
        run.record("fit")
    commit(run, "train", ["baseline.safetensors"])
    with pytest.raises(RunDirectoryError, match=r"has no fit step: run `pyro-dirichlet fit --run"):
        run.record("fit")
    (run.path / "baseline.safetensors").unlink()
    with pytest.raises(RunDirectoryError, match=r"no train step \(baseline.safetensors missing\)"):
        run.record("train")


def test_another_format_version_is_refused(tmp_path):
    run = RunDirectory(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format": "pyro-dirichlet.run", "format_version": FORMAT_VERSION + 1, "steps": {}}))
    with pytest.raises(RunDirectoryError, match=f"format version {FORMAT_VERSION + 1}"):
        run.manifest()
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(RunDirectoryError, match="cannot be read"):
        run.manifest()


def test_replace_run_moves_a_whole_run_in_and_the_old_runs_other_files_out(tmp_path):
    old, new = RunDirectory(tmp_path / "out"), RunDirectory(tmp_path / "staged")
    commit(old, "train", ["baseline.safetensors"])
    commit(old, "fit", ["forest.png"])
    commit(new, "train", ["baseline.safetensors"])
    replace_run(new.path, old.path)
    assert old.done() == ["train"] and sorted(p.name for p in old.path.iterdir()) == [LOCK, "baseline.safetensors", "run.json"]
    assert not (new.path / "baseline.safetensors").exists()
