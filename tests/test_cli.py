"""The step subcommands on a small run directory: sequence, refit, missing steps, versions, budgets, config, --quiet."""

import json
import re
import shutil

import pytest
import torch

from pyro_dirichlet.app.cli import build_parser, main
from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION
from pyro_dirichlet.app.rundir import FORMAT_VERSION, STEPS


def snapshot(directory):
    """Every file under ``directory`` (hidden ones too) and the SHA-256 of its content."""
    import hashlib

    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def manifest(directory):
    return json.loads((directory / "run.json").read_text())


def test_steps_build_the_run_directory(small_run):
    recorded = manifest(small_run)
    assert recorded["format_version"] == FORMAT_VERSION
    assert list(recorded["steps"]) == list(STEPS)
    assert recorded["model"] == "lenet5" and recorded["data"]["train"] == 400
    for record in recorded["steps"].values():
        assert record["files"] and all((small_run / name).exists() for name in record["files"])
    assert recorded["steps"]["fit"]["config"]["prior"] == DEFAULT_CONCENTRATION
    assert recorded["steps"]["finetune"]["config"]["epochs"] == 1
    assert not [p for p in small_run.iterdir() if p.name.startswith(".staging")]


def test_refit_prints_each_layers_hdis_unless_quiet(run_copy, small_mnist_everywhere, capsys):
    # The per-layer summaries are computed only to be printed (their HDIs need arviz_stats).
    assert main(["fit", "--run", str(run_copy)]) == 0
    printed = capsys.readouterr().out
    for layer in ("conv1", "conv2", "fc1"):
        assert re.search(rf"^{layer} \(\d+ channels; mean \[95% HDI\]\)$", printed, re.MULTILINE), layer
    assert printed.count("least important:") == 3
    assert main(["fit", "--run", str(run_copy), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_refit_with_another_prior_keeps_the_baseline(run_copy, small_mnist_everywhere):
    baseline = (run_copy / "baseline.safetensors").read_bytes()
    assert main(["fit", "--run", str(run_copy), "--prior", "0.5", "--quiet"]) == 0
    recorded = manifest(run_copy)
    assert list(recorded["steps"]) == ["train", "fit"]
    assert recorded["steps"]["fit"]["config"]["prior"] == 0.5
    assert (run_copy / "baseline.safetensors").read_bytes() == baseline
    # The later steps' files described the old posterior: they are gone.
    assert not (run_copy / "pruned.safetensors").exists() and not (run_copy / "report.html").exists()
    assert main(["prune", "--run", str(run_copy), "--keep", "conv1=4,conv2=10,fc1=30", "--quiet"]) == 0
    assert manifest(run_copy)["steps"]["prune"]["result"]["architecture"] == {"conv1": 4, "conv2": 10, "fc1": 30}


def test_a_later_step_names_the_step_to_run_first(run_copy, tmp_path, capsys):
    (run_copy / "pruned-before-finetune.safetensors").unlink()
    before = sorted(p.name for p in run_copy.iterdir())
    assert main(["finetune", "--run", str(run_copy), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "no prune step" in error and "pyro-dirichlet prune --run" in error
    assert sorted(p.name for p in run_copy.iterdir()) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fit", "--run", str(empty), "--quiet"]) == 2
    assert "pyro-dirichlet train --out" in capsys.readouterr().err


def test_an_incompatible_run_directory_is_refused(run_copy, capsys):
    recorded = manifest(run_copy)
    recorded["format_version"] = FORMAT_VERSION + 98
    (run_copy / "run.json").write_text(json.dumps(recorded))
    assert main(["report", "--run", str(run_copy), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"format version {FORMAT_VERSION + 98}" in error and f"reads version {FORMAT_VERSION}" in error


def test_an_impossible_budget_names_the_smallest_achievable(run_copy, small_mnist_everywhere, capsys):
    before = snapshot(run_copy)
    assert main(["prune", "--run", str(run_copy), "--budget", "0.0001", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "smallest achievable" in error and error.count("\n") == 1
    assert snapshot(run_copy) == before


def test_a_budget_prunes_within_it(run_copy, small_mnist_everywhere):
    assert main(["prune", "--run", str(run_copy), "--budget", "0.1", "--quiet"]) == 0
    result = manifest(run_copy)["steps"]["prune"]["result"]
    assert result["flops"] <= 0.1 * manifest(run_copy)["steps"]["train"]["result"]["flops"]


def test_a_step_checks_the_model_it_is_given(run_copy, capsys):
    assert main(["prune", "--run", str(run_copy), "--model", "lenet300", "--quiet"]) == 2
    assert "holds model 'lenet5'" in capsys.readouterr().err


def test_config_file_values_and_command_line_overrides(run_copy, small_mnist_everywhere, tmp_path):
    config = tmp_path / "run.toml"
    # One file for every step: finetune-epochs is ignored by prune, which has no such option.
    config.write_text(f'run = "{run_copy}"\nquiet = true\nkeep = {{conv1 = 3, conv2 = 8, fc1 = 20}}\nfinetune-epochs = 2\n')
    assert main(["prune", "--config", str(config)]) == 0
    assert manifest(run_copy)["steps"]["prune"]["result"]["architecture"] == {"conv1": 3, "conv2": 8, "fc1": 20}
    assert main(["prune", "--config", str(config), "--keep", "conv1=2"]) == 0
    assert manifest(run_copy)["steps"]["prune"]["result"]["architecture"] == {"conv1": 2, "conv2": 50, "fc1": 500}


def test_config_file_unknown_key_is_an_error_naming_it(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('out = "x"\npriorr = 0.5\n')
    assert main(["fit", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "'priorr'" in error and "prior" in error and "finetune-epochs" in error


def test_quiet_silences_everything_and_progress_shows_loss_and_accuracy(run_copy, small_mnist_everywhere, capsys):
    assert main(["finetune", "--run", str(run_copy), "--finetune-epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["finetune", "--run", str(run_copy), "--finetune-epochs", "1"]) == 0
    printed = capsys.readouterr()
    assert "loss=" in printed.err and "accuracy=" in printed.err
    assert "fine-tuned for 1 epochs" in printed.out and "finetune: wrote pruned.json" in printed.out


def test_finetune_distils_from_the_runs_baseline_and_refuses_a_share_outside_0_1(run_copy, small_mnist_everywhere, capsys):
    from pyro_dirichlet.app.steps import load_baseline
    from pyro_dirichlet.app.rundir import RunDirectory

    before = {name: value.clone() for name, value in load_baseline(RunDirectory(run_copy)).state_dict().items()}
    pruned = (run_copy / "pruned.safetensors").read_bytes()
    assert main(["finetune", "--run", str(run_copy), "--finetune-epochs", "1", "--finetune-distillation", "0.5", "--quiet"]) == 0
    step = manifest(run_copy)["steps"]["finetune"]
    assert step["config"]["distillation"] == 0.5 and step["result"]["finetune_distillation"] == 0.5
    assert len(step["result"]["finetune"]["train_loss"]) == 1
    # The baseline taught and stayed as it was; the pruned network was written anew.
    after = load_baseline(RunDirectory(run_copy)).state_dict()
    assert all(torch.equal(before[name], value) for name, value in after.items())
    assert (run_copy / "pruned.safetensors").read_bytes() != pruned
    for bad in ("1.5", "-0.1"):
        assert main(["finetune", "--run", str(run_copy), "--finetune-distillation", bad, "--quiet"]) == 2
        assert "--finetune-distillation" in capsys.readouterr().err
    assert manifest(run_copy)["steps"]["finetune"]["config"]["distillation"] == 0.5  # nothing half-written


def test_train_reports_a_missing_data_set_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--out", str(out), "--data-dir", str(tmp_path / "nowhere"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in error and "PYRO_DIRICHLET_DATA" in error
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "fit", "prune", "finetune", "report", "run"])
def test_every_subcommand_takes_the_common_flags(command, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args([command, "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--out", "--data-dir", "--device", "--seed", "--quiet", "--model", "--dataset"):
        assert flag in text
    assert ("--run" in text) == (command not in ("train", "run"))


def test_missing_run_directory_is_an_error(capsys):
    assert main(["report", "--quiet"]) == 2
    assert "--run DIR" in capsys.readouterr().err


def test_train_rejects_an_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--out", str(blocker / "run"), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "listed"), [("--model", "resnet9000", "lenet5"), ("--dataset", "imagenet", "cifar10")])
def test_unknown_names_list_the_valid_choices(flag, value, listed, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--out", "x", flag, value])
    assert caught.value.code == 2
    assert listed in capsys.readouterr().err


def test_keep_and_budget_together_is_an_error(run_copy, capsys):
    assert main(["prune", "--run", str(run_copy), "--keep", "conv1=3", "--budget", "0.1", "--quiet"]) == 2
    assert "not both" in capsys.readouterr().err


def test_ctrl_c_during_fit_keeps_a_checkpoint_that_the_rerun_resumes(run_copy, small_mnist_everywhere, tmp_path, monkeypatch, capsys):
    from pyro_dirichlet.infer import fit as fitting
    untouched = shutil.copytree(run_copy, tmp_path / "untouched")
    assert main(["fit", "--run", str(untouched), "--epochs", "3", "--quiet"]) == 0
    before = manifest(run_copy)
    real, calls = fitting.fit_model, []

    def interrupted(*args, **kwargs):
        model = real(*args, **kwargs)

        def stepped(*a, **k):
            calls.append(None)
            if len(calls) == 7:  # during step 7 of 12 (400 examples, batch 128, 3 epochs)
                raise KeyboardInterrupt
            return model(*a, **k)

        return stepped

    monkeypatch.setattr(fitting, "fit_model", interrupted)
    assert main(["fit", "--run", str(run_copy), "--epochs", "3", "--quiet"]) == 130
    assert "run the same `pyro-dirichlet fit` command again" in capsys.readouterr().err
    assert manifest(run_copy) == before  # nothing committed by the interrupted fit
    assert len(list(run_copy.glob(".fit-checkpoint-*.pt"))) == 1
    monkeypatch.setattr(fitting, "fit_model", real)
    assert main(["fit", "--run", str(run_copy), "--epochs", "3", "--quiet"]) == 0
    assert not list(run_copy.glob(".fit-checkpoint-*.pt"))
    resumed, whole = manifest(run_copy)["steps"]["fit"]["result"], manifest(untouched)["steps"]["fit"]["result"]
    assert resumed["steps"] == whole["steps"] == 12
    assert resumed["elbo"] == pytest.approx(whole["elbo"], rel=1e-6)


@pytest.mark.skipif(not (__import__("torch").distributed.is_available() and __import__("torch").distributed.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available in this torch build")
def test_fit_under_torchrun_writes_the_run_directory_once(run_copy, mnist_small):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import mnist_root

    environment = {**os.environ, "PYRO_DIRICHLET_DATA": str(mnist_root()), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pyro_dirichlet.app.cli", "fit", "--out", str(run_copy), "--prior", "0.7", "--quiet"]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    recorded = manifest(run_copy)
    assert list(recorded["steps"]) == ["train", "fit"]
    assert recorded["steps"]["fit"]["config"]["prior"] == 0.7
    assert (run_copy / "posterior.nc").exists()
    assert not [p for p in run_copy.iterdir() if p.name.startswith((".staging", ".fit-checkpoint"))]


@pytest.mark.parametrize("command", ["train", "fit", "prune", "finetune", "report", "run"])
def test_every_cli_default_is_its_dataclass_default(command):
    """A command given only its run directory builds exactly the options the dataclasses default to."""
    from pathlib import Path

    from pyro_dirichlet.app.cli import _build, _settings, options_from
    from pyro_dirichlet.app.pipeline import RunConfig

    parser, options = _build()
    args = parser.parse_args([command, "--out", "somewhere"])
    del args.command
    config = options_from(_settings(command, args, options))
    assert config == RunConfig(out=Path("somewhere"))


def test_help_shows_the_dataclass_defaults(capsys, monkeypatch):
    import dataclasses

    from pyro_dirichlet.app.cli import OPTION_FIELDS

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    helps = {}
    for command in ("run", "report"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        helps[command] = capsys.readouterr().out
    # Each option's help, which may start on the line after a long option.
    blocks = {flag: " ".join(text.split()) for flag, text in
              re.findall(r"^  (--[\w-]+)(.*?)(?=^  -|^\S|\Z)", helps["run"], re.M | re.S)}
    shown = 0
    for dest, (kind, name) in OPTION_FIELDS.items():
        default = {f.name: f for f in dataclasses.fields(kind)}[name].default
        if default is None or default is dataclasses.MISSING or dest == "check":  # --no-check only turns it off
            continue
        flag = "--" + dest.replace("_", "-")
        text = f"{default:g}" if isinstance(default, float) else str(default)
        assert f"(default {text})" in blocks[flag], (flag, blocks[flag])
        shown += 1
    assert shown >= 10
    # report's --ci-prob is ReportOptions.ci_prob, fit's is FitOptions.ci_prob: the same constant.
    assert "(default 0.95)" in helps["report"]


def test_prior_and_ci_prob_defaults_are_written_once():
    """The defaults the library defines (priors.DEFAULT_CONCENTRATION, posterior.DEFAULT_CI_PROB) are used everywhere else."""
    import inspect
    from pathlib import Path

    from pyro_dirichlet.app.pipeline import FitOptions, ReportOptions
    from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION
    from pyro_dirichlet.posterior import DEFAULT_CI_PROB, layer_summaries, plot_forest, summary_table

    assert FitOptions().prior == DEFAULT_CONCENTRATION
    assert FitOptions().ci_prob == ReportOptions().ci_prob == DEFAULT_CI_PROB
    for function in (summary_table, layer_summaries, plot_forest):
        assert inspect.signature(function).parameters["ci_prob"].default == DEFAULT_CI_PROB
    package = Path(__file__).resolve().parents[1] / "pyro_dirichlet"
    written = [f"{path.relative_to(package)}: {line.strip()}" for path in package.rglob("*.py")
               for line in path.read_text().splitlines()
               if re.search(r"\b(ci_prob|prior)\b\s*(:[^=]+)?=\s*(0\.95|1\.0?)\b", line) and "``" not in line]  # not docs
    assert written == []
