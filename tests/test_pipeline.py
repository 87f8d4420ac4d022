"""The main job (`pyro-dirichlet run`) end to end on real MNIST (a subset): train -> fit -> prune -> fine-tune -> report."""

import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch

from pyro_dirichlet.app.cli import main, parse_target
from pyro_dirichlet.repair.train import DEFAULT_EPOCHS
from pyro_dirichlet.app.options import FitOptions
from pyro_dirichlet.infer.fit_config import FitConfig
from pyro_dirichlet.measure import accuracy
from pyro_dirichlet.app.pipeline import FinetuneOptions, RunConfig, Runtime, TrainOptions, run
from pyro_dirichlet.posterior import load_posterior
from pyro_dirichlet.io.serialization import load_pruned


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, mnist_small):
    from pyro_dirichlet import data

    out = tmp_path_factory.mktemp("run") / "demo"
    original = data._LOADERS["mnist"]
    data._LOADERS["mnist"] = lambda data_dir=None, **kwargs: mnist_small
    try:
        # One epoch of SVI (the paper's): the test is about the outputs, not about convergence.
        report = run(RunConfig(out=out, train=TrainOptions(cache_dir=out.parent / "cache"), runtime=Runtime(progress=False),
                               fit=FitOptions(fit=FitConfig(epochs=1))))
    finally:
        data._LOADERS["mnist"] = original
    return out, report


def test_run_writes_every_output(demo_run):
    out, report = demo_run
    drawn = ["report-model.png"] if shutil.which("dot") else []  # the switch model, where Graphviz can draw it
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "baseline.safetensors", "posterior.nc", "pruned-before-finetune.json",
        "pruned-before-finetune.safetensors", "pruned.json", "pruned.safetensors", "report-accuracy.png", "report-elbo.png",
        "report-forest-conv1.png", "report-forest-conv2.png", "report-forest-fc1.png", "report-mass.png", *drawn,
        "report.html", "report.json", "report.md", "run.json",
    ]
    assert json.loads((out / "run.json").read_text())["steps"].keys() == {"train", "fit", "prune", "finetune", "report"}
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "report-forest-conv1.png").stat().st_size > 10_000
    # The advice names the published folder, not the staging copy the run was built in.
    deployment = next(advice["text"] for advice in report["what_next"] if advice["kind"] == "deployment")
    assert f'load_pruned("{out}/pruned"' in deployment and ".staging" not in json.dumps(report)


def test_report_has_the_promised_fields(demo_run):
    _, report = demo_run
    assert {"model", "dataset", "device", "seed", "baseline", "svi", "pruned", "total_seconds", "layers", "latency"} <= set(report)
    assert {"test_accuracy", "params", "flops", "seconds_per_epoch"} <= set(report["baseline"])
    assert {"epochs", "steps", "seconds", "elbo"} <= set(report["svi"])
    assert report["svi"]["steps"] == len(report["svi"]["elbo"]) == 4000 // 128 + 1
    pruned = report["pruned"]
    assert pruned["architecture"] == {"conv1": 5, "conv2": 12, "fc1": 40}
    for key in ("test_accuracy", "test_accuracy_before_finetune"):
        assert 0.0 <= pruned[key] <= 1.0
    assert pruned["finetune_epochs"] == DEFAULT_EPOCHS == 8


def test_pruned_network_is_smaller_and_still_accurate(demo_run, mnist_small):
    out, report = demo_run
    assert report["pruned"]["params"] < 0.03 * report["baseline"]["params"]
    assert report["pruned"]["flops"] < 0.1 * report["baseline"]["flops"]
    assert report["baseline"]["test_accuracy"] > 0.9
    # 4k training images only: a pruned LeNet-5 still classifies far above chance
    assert report["pruned"]["test_accuracy"] > 0.85
    model = load_pruned(out / "pruned")
    # The report measured under --precision auto (bf16 autocast on a CPU with AMX), this in float32.
    assert accuracy(model, mnist_small.test) == pytest.approx(report["pruned"]["test_accuracy"], abs=0.005)


def test_posterior_file_has_named_channel_dims(demo_run):
    out, _ = demo_run
    posterior = load_posterior(out / "posterior.nc")["posterior"]
    assert posterior["conv2.switch"].dims == ("chain", "draw", "conv2_channel")
    assert posterior["fc1.switch"].shape == (1, 1000, 500)
    assert np.allclose(posterior["conv1.switch"].sum("conv1_channel"), 1.0)


def test_failed_run_leaves_out_untouched(tmp_path, small_mnist_everywhere, monkeypatch):
    import pyro_dirichlet.app.steps as steps

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(steps, "save_pruned", broken)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    with pytest.raises(RuntimeError, match="disk full"):
        run(RunConfig(out=out, runtime=Runtime(progress=False), finetune=FinetuneOptions(epochs=0)))
    assert sorted(os.listdir(out)) == [".lock", "report.json"] and (out / "report.json").read_text() == "{}"


def test_cli_reports_a_missing_data_set(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "nowhere"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2
    assert "train-images-idx3-ubyte" in error and "PYRO_DIRICHLET_DATA" in error
    assert not (tmp_path / "out").exists()


def test_cli_rejects_unknown_model_listing_choices(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["run", "--model", "resnet9000", "--out", "x"])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "unknown model 'resnet9000'; valid choices: " in error and "lenet5" in error
    assert "package.module:callable" in error  # or a factory of one's own


def test_cli_rejects_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--out", str(blocker / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"{str(blocker)!r} is a file" in error and error.count("\n") == 1


def test_cli_rejects_bad_keep_counts(tmp_path, small_mnist_everywhere, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), "--keep", "conv1=0", "--quiet", "--finetune-epochs", "0"]) == 2
    assert "--keep for layer 'conv1' must be a count of at least 1" in capsys.readouterr().err


def test_parse_target():
    assert parse_target("conv1=5, fc1=0.1") == {"conv1": 5, "fc1": 0.1}
    with pytest.raises(argparse.ArgumentTypeError, match="LAYER=COUNT"):
        parse_target("conv1")
    with pytest.raises(argparse.ArgumentTypeError, match="'fc1' is not a number"):
        parse_target("fc1=many")


def test_cli_prunes_only_the_named_layers(tmp_path, small_mnist_everywhere):
    out = tmp_path / "fc-only"
    assert main(["run", "--out", str(out), "--layers", "fc1", "--quiet", "--finetune-epochs", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["architecture"] == {"fc1": 40}
    assert report["pruned"]["finetune_epochs"] == 0
    assert list(load_posterior(out / "posterior.nc")["posterior"].data_vars) == ["fc1.switch"]


def test_cli_smoke_subset_cuts_every_split(tmp_path, small_mnist_everywhere):
    out = tmp_path / "smoke"
    assert main(["run", "--out", str(out), "--subset", "400", "--train-epochs", "1", "--finetune-epochs", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["train"] == 400 and report["data"]["validation"] == report["data"]["test"] == 100
    assert report["baseline"]["epochs"] == 1
    assert report["svi"]["steps"] == 4  # ceil(400 / 128)


def test_bad_subset_is_rejected(tmp_path, small_mnist_everywhere, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), "--subset", "3", "--quiet"]) == 2
    # not just "subset": the temporary path, named after this test, contains that word
    assert "--subset must be an integer at least 8, got 3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_new_run_replaces_an_earlier_runs_files(tmp_path, small_mnist_everywhere):
    out = tmp_path / "again"
    argv = ["run", "--out", str(out), "--subset", "400", "--train-epochs", "1", "--finetune-epochs", "0", "--quiet"]
    assert main(argv) == 0
    assert main([*argv, "--layers", "fc1"]) == 0
    assert not (out / "report-forest-conv1.png").exists() and (out / "report-forest-fc1.png").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".lock"]
    assert (out / ".lock").read_text() == ""  # the PID of a holder, and nobody holds it
