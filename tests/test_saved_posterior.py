"""The posterior.nc a `pyro-dirichlet fit` writes: ArviZ's LOO and predictive check read it, and it rebuilds the guide."""

import json
import warnings

import arviz as az
import numpy as np
import pyro
import torch

from pyro_dirichlet.app.rundir import RunDirectory
from pyro_dirichlet.app.steps import load_baseline
from pyro_dirichlet.infer.guide import guide_concentrations, load_guide
from pyro_dirichlet.infer.switches import DirichletSwitches
from pyro_dirichlet.posterior import from_concentrations, load_posterior
from pyro_dirichlet.pruning import prune_by_posterior_mean
from pyro_dirichlet.posterior.calibration import predictive_check


def test_the_saved_demo_posterior_supports_loo_ppc_and_an_exact_reload(small_run):
    tree = load_posterior(small_run / "posterior.nc")
    assert {"posterior", "prior", "observed_data", "log_likelihood", "posterior_predictive", "variational", "guide_parameters"} <= set(tree.children)
    assert tree["log_likelihood"]["obs"].dims == ("chain", "draw", "example")
    with warnings.catch_warnings():
        # the Pareto-k diagnostic may warn at 100 draws; what is checked is that LOO reads the file
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        loo = az.loo(tree)
    assert np.isfinite(loo.elpd) and loo.elpd < 0
    az.plot_ppc_dist(tree, var_names=["obs"], kind="ecdf", backend="matplotlib")
    import matplotlib.pyplot as plt

    plt.close("all")
    check = predictive_check(tree)
    assert 0 < check.accuracy <= 1 and check.accuracy_per_draw.shape == (50,)  # fit's --predictive-draws default
    # the file rebuilds the fitted guide bit for bit on the run's own baseline
    network = load_baseline(RunDirectory(small_run))
    switches = DirichletSwitches(network, torch.zeros(2, 1, 28, 28))
    guide = load_guide(tree, switches)
    concentrations = guide_concentrations(guide, switches.layers, torch.zeros(1, 1, 28, 28))
    for layer, phi in concentrations.items():
        assert torch.equal(phi, torch.as_tensor(tree["variational"][f"{layer}.switch.concentration"].values)), layer
    # and the reloaded concentrations prune exactly the channels the run's prune step kept
    record = json.loads((small_run / "run.json").read_text())["steps"]["prune"]["result"]
    reloaded = from_concentrations(concentrations, num_samples=10, seed=123)  # another seed: the decision reads the exact mean
    _, keep = prune_by_posterior_mean(network, reloaded, record["target"], torch.zeros(2, 1, 28, 28))
    assert {layer: list(map(int, kept)) for layer, kept in keep.items()} == record["kept_channels"]
    pyro.clear_param_store()
