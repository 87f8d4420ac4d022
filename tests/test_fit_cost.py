"""What the fit step spends beside its SVI: the posterior predictive sized by options; the run's peak memory reported."""

from __future__ import annotations

import json

import pytest

from pyro_dirichlet.app.cli import main
from pyro_dirichlet.app.steps import FitOptions
from pyro_dirichlet.measure import peak_rss_bytes
from pyro_dirichlet.posterior import load_posterior


def test_predictive_draws_and_images_size_the_posterior_predictive(run_copy, small_mnist_everywhere):
    assert main(["fit", "--run", str(run_copy), "--quiet", "--predictive-draws", "12", "--predictive-images", "20"]) == 0
    tree = load_posterior(run_copy / "posterior.nc")
    assert tree["log_likelihood"]["obs"].shape == (1, 12, 20)
    assert tree["posterior_predictive"]["obs"].shape == (1, 12, 20)
    assert json.loads((run_copy / "run.json").read_text())["steps"]["fit"]["config"]["predictive_draws"] == 12

    assert main(["fit", "--run", str(run_copy), "--quiet", "--predictive-images", "0"]) == 0
    tree = load_posterior(run_copy / "posterior.nc")
    assert "posterior_predictive" not in tree.children and "log_likelihood" not in tree.children


@pytest.mark.parametrize("flag, value", [("--predictive-draws", "0"), ("--predictive-images", "-1")])
def test_bad_predictive_sizes_are_refused_before_any_work(run_copy, capsys, flag, value):
    before = (run_copy / "run.json").read_text()
    assert main(["fit", "--run", str(run_copy), "--quiet", flag, value]) == 2
    assert flag in capsys.readouterr().err
    assert (run_copy / "run.json").read_text() == before


def test_the_predictive_defaults_keep_az_loo_usable():
    assert FitOptions().predictive_draws >= 30 and FitOptions().predictive_images >= 100


def test_report_json_holds_the_processes_peak_memory(small_run):
    environment = json.loads((small_run / "report.json").read_text())["environment"]
    # The run's steps ran in this test process, so its peak now bounds theirs.
    assert 0 < environment["peak_rss_bytes"] <= peak_rss_bytes()
