"""PSIS-LOO with its Pareto-k diagnostics beside every elpd (issue 32): on the smoke run's posterior.nc."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from pyro_dirichlet.posterior import load_posterior
from pyro_dirichlet.posterior.loo import UNRELIABLE_K, loo_check


@pytest.fixture(scope="module")
def posterior(small_run):
    return load_posterior(small_run / "posterior.nc")


def test_loo_check_is_arviz_loo_with_its_pareto_k_counted(posterior):
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = az.loo(posterior, pointwise=True)
    check = loo_check(posterior)  # raises under pytest's warnings-as-errors if ArviZ's warning escaped
    k = np.asarray(expected.pareto_k).ravel()
    assert check.elpd == pytest.approx(float(expected.elpd)) and check.se == pytest.approx(float(expected.se))
    assert check.observations == len(k) == 100 and check.draws == 50  # fit's --predictive-draws default
    assert check.good_k == pytest.approx(1 - 1 / np.log10(50))  # min(1 - 1/log10(draws), 0.7)
    assert check.above_good_k == int((k > check.good_k).sum()) and check.above_unreliable == int((k > UNRELIABLE_K).sum())
    assert check.max_k == pytest.approx(float(k.max()))
    assert check.headline().startswith(f"elpd_loo {check.elpd:.1f} (SE {check.se:.1f}, p_loo {check.p_loo:.1f}; Pareto k: ")


def test_the_verdict_says_when_loo_cannot_be_trusted(posterior):
    check = loo_check(posterior)
    unreliable = dataclasses.replace(check, above_good_k=max(1, check.above_good_k))
    assert not unreliable.reliable and "this PSIS-LOO estimate is unreliable: do not compare fits" in unreliable.verdict()
    reliable = dataclasses.replace(check, above_good_k=0, above_unreliable=0)
    assert reliable.reliable and "the PSIS-LOO estimate is reliable" in reliable.verdict()


def test_the_report_shows_elpd_beside_its_diagnostics(small_run, posterior):
    report = json.loads((small_run / "report.json").read_text())
    check = loo_check(posterior)
    assert report["posterior_predictive"]["loo"] == pytest.approx(check.to_dict())
    page = (small_run / "report.md").read_text()
    assert f"PSIS-LOO on these images: {check.headline()}. {check.verdict()}" in page
    assert "95% HDIs (highest density intervals)" in page


def test_a_posterior_without_log_likelihood_has_no_loo(posterior):
    assert loo_check(posterior.drop_nodes("log_likelihood")) is None
