"""The run directory's manifest: steps recorded in order, later steps forgotten on a redo, failed steps leave nothing."""

import json

import pytest

from pyro_dirichlet.rundir import FORMAT_VERSION, RunDirectory, RunDirectoryError, move_run


def commit(run, step, files, **result):
    with run.stage() as staging:
        for name in files:
            (staging / name).write_text(step)
        return run.commit(step, staging, config={"step": step}, result=result, seconds=0.5)


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
    assert sorted(p.name for p in run.path.iterdir()) == ["baseline.safetensors", "posterior.nc", "run.json"]


def test_a_failed_step_leaves_the_directory_as_it_was(tmp_path):
    run = RunDirectory(tmp_path / "run")
    commit(run, "train", ["baseline.safetensors"])
    before = run.manifest_path.read_text()
    with pytest.raises(RuntimeError, match="boom"), run.stage() as staging:
        (staging / "posterior.nc").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in run.path.iterdir()) == ["baseline.safetensors", "run.json"]
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


def test_move_run_moves_the_manifest_last(tmp_path):
    source, target = RunDirectory(tmp_path / "staged"), tmp_path / "out"
    commit(source, "train", ["baseline.safetensors"])
    target.mkdir()
    move_run(source.path, target)
    assert RunDirectory(target).done() == ["train"] and not list(source.path.iterdir())
