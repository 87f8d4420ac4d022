"""A prior model named on the command line: fitted, recorded, named again by the report, refused from files and when wrong."""

import json

import numpy as np
import pytest

from pyro_dirichlet.app.cli import main
from pyro_dirichlet.app.options import FitOptions
from pyro_dirichlet.infer.priors import DEFAULT_CONCENTRATION
from pyro_dirichlet.posterior import load_posterior
from test_cli import manifest, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = "cli_priors:shared_alpha"


def test_a_named_prior_model_is_fitted_recorded_and_named_again_by_the_report(run_copy, small_mnist_everywhere, capsys):
    common = ["--run", str(run_copy), "--quiet"]
    assert main(["fit", *common, "--prior-model", GOOD, "--hyper-guide", "delta"]) == 0
    config = manifest(run_copy)["steps"]["fit"]["config"]
    assert config["prior_model"] == GOOD and config["fit"]["hyper_guide"] == "delta"
    tree = load_posterior(run_copy / "posterior.nc")
    # the shared latent is in the posterior and the prior; the delta guide is a point estimate of it
    alpha = tree["posterior"]["alpha"].values
    assert alpha.shape == (1, 1000) and len(np.unique(alpha)) == 1
    assert tree["prior"]["alpha"].std() > 0
    assert "AutoGuideList.1.alpha" in tree["guide_parameters"]
    assert main(["prune", *common]) == 0 and main(["finetune", *common, "--finetune-epochs", "0"]) == 0
    capsys.readouterr()

    # the report rebuilds the model, so the prior model must be named again, and named the same
    before = snapshot(run_copy)
    assert main(["report", *common]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"fitted with --prior-model {GOOD}; name it again" in error
    assert main(["report", *common, "--prior-model", "cli_priors:wrong_shape"]) == 2
    assert f"is not the prior the run was fitted with: --prior-model {GOOD}" in capsys.readouterr().err
    assert snapshot(run_copy) == before

    assert main(["report", *common, "--prior-model", GOOD, "--latency-batch", "8"]) == 0
    report = json.loads((run_copy / "report.json").read_text())
    assert report["prior_model"] == GOOD and report["hyper_guide"] == "delta"
    assert f"prior model {GOOD}" in (run_copy / "report.md").read_text()
    assert manifest(run_copy)["steps"]["report"]["config"]["prior_model"] == GOOD


@pytest.mark.parametrize(("name", "message"), [
    ("cli_priors:wrong_layers", "prior model must return {layer name: distribution} for the switched layers"),
    ("cli_priors:wrong_shape", "the prior of 'conv1.switch' must have event shape (20,)"),
    ("cli_priors:discrete", "prior site 'k' is discrete (Poisson); no automatic guide covers it"),
    ("cli_priors:non_finite", "prior site 'alpha' has a non-finite concentration"),
    ("cli_priors:NOT_CALLABLE", "--prior-model 'cli_priors:NOT_CALLABLE' is a float, not a function"),
    ("cli_priors:missing", "module 'cli_priors' has no attribute 'missing'"),
    ("no_such_module_here:prior", "module 'no_such_module_here' is not installed and there is no no_such_module_here.py"),
    ("cli_priors:raises", "the prior model cli_priors:raises failed when called with the switched layers: "
                          "ZeroDivisionError (division by zero)"),
    ("cli_priors:raises_later", "the prior model cli_priors:raises_later failed when called with the switched layers: "
                                "ValueError (a hyper-parameter went out of range)"),
    ("cli_priors:takes_nothing", "the prior model cli_priors:takes_nothing failed when called with the switched layers: "
                                 "TypeError (takes_nothing() takes 0 positional arguments but 1 was given)"),
])
def test_a_bad_prior_model_is_one_sentence_exit_2_and_nothing_written(run_copy, small_mnist_everywhere, capsys, name, message):
    import cli_priors

    cli_priors.raises_later.calls = 0  # fails on its fifth call: in the middle of SVI
    before = snapshot(run_copy)
    assert main(["fit", "--run", str(run_copy), "--quiet", "--prior-model", name]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count("\n") == 0, error
    assert snapshot(run_copy) == before


def test_a_malformed_prior_model_name_is_refused_by_the_parser(run_copy, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--run", str(run_copy), "--prior-model", "cli_priors.py"])
    assert stopped.value.code == 2
    assert "argument --prior-model: --prior-model must be written package.module:function" in capsys.readouterr().err


@pytest.mark.parametrize("prior", ["0.5", str(DEFAULT_CONCENTRATION)])
def test_a_prior_model_with_a_prior_concentration_is_an_error(run_copy, capsys, prior):
    # the default's own value too: given is given
    before = snapshot(run_copy)
    assert main(["fit", "--run", str(run_copy), "--quiet", "--prior-model", GOOD, "--prior", prior]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--prior and --prior-model both given" in error, error
    assert snapshot(run_copy) == before


def test_a_prior_in_the_config_file_with_a_prior_model_flag_is_an_error(run_copy, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(f'run = "{run_copy}"\nprior = 0.5\n')
    assert main(["fit", "--config", str(config), "--quiet", "--prior-model", GOOD]) == 2
    assert "--prior and --prior-model both given" in capsys.readouterr().err


def test_the_options_check_a_prior_model_name_without_importing_it():
    import sys

    options = FitOptions(prior_model="never_imported_prior_module:prior")
    assert options.prior_model == "never_imported_prior_module:prior"
    assert "never_imported_prior_module" not in sys.modules
    with pytest.raises(ValueError, match="--prior and --prior-model both given"):
        FitOptions(prior=0.5, prior_model=GOOD)


def test_a_config_file_cannot_name_a_prior_model(run_copy, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(f'run = "{run_copy}"\nprior-model = "{GOOD}"\n')
    before = snapshot(run_copy)
    assert main(["fit", "--config", str(config), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "key 'prior-model' names code to import, which is accepted on the command line only (--prior-model)" in error
    assert snapshot(run_copy) == before
    # and the valid keys a typo lists do not offer it
    config.write_text('out = "x"\npriorr = 0.5\n')
    assert main(["fit", "--config", str(config)]) == 2
    assert "prior-model" not in capsys.readouterr().err


def test_run_hands_the_prior_model_to_the_report(tmp_path, small_run, small_mnist_everywhere):
    out = tmp_path / "run"
    # small_run's baseline cache: the same cut and recipe, so nothing is trained again
    argv = ["run", "--out", str(out), "--subset", "400", "--train-epochs", "1", "--cache-dir", str(small_run.parent / "cache"),
            "--finetune-epochs", "0", "--latency-batch", "8", "--quiet", "--prior-model", GOOD]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["prior_model"] == GOOD and report["hyper_guide"] == "normal"
    # the fit records the prior it was given: the model, not the concentration it replaced
    assert manifest(out)["steps"]["fit"]["config"]["prior"] is None
    assert not report["baseline"]["trained_in_this_run"]
    assert "alpha" in load_posterior(out / "posterior.nc")["posterior"]
