"""The stopping rule and the convergence diagnostics every fit reports."""

import warnings

import pytest
import torch

from pyro_dirichlet.infer.convergence import (
    ConvergenceMonitor,
    FitNotConvergedWarning,
    StoppingRule,
    elbo_change,
    kept_overlap,
    kept_sets,
)


def test_elbo_change_compares_the_two_halves_of_the_last_fifth():
    flat = [-100.0] * 50
    assert elbo_change(flat) == 0
    rising = [-200.0 + i for i in range(100)]  # last fifth: -120 .. -101
    first, last = -115.5, -105.5
    assert elbo_change(rising) == pytest.approx(abs(last - first) / abs(last))
    assert elbo_change([-1.0] * 9) is None


def test_kept_sets_and_their_overlap():
    a = {"conv": torch.tensor([5.0, 1.0, 4.0, 0.5]), "fc": torch.tensor([1.0, 2.0])}
    sets = kept_sets(a, 0.5)
    assert sets == {"conv": frozenset({0, 2}), "fc": frozenset({1})}
    b = kept_sets({"conv": torch.tensor([5.0, 4.0, 1.0, 0.5]), "fc": torch.tensor([1.0, 2.0])}, 0.5)
    assert kept_overlap(sets, b) == pytest.approx(2 / 3)


def test_the_monitor_stops_only_when_both_thresholds_hold():
    rule = StoppingRule(min_steps=20, max_steps=100, check_every=10, elbo_tolerance=0.02, min_overlap=0.9)
    monitor = ConvergenceMonitor(rule, until_converged=True)
    phi = {"conv": torch.tensor([3.0, 2.0, 1.0, 0.5])}
    monitor.check([-100.0] * 10, phi)
    assert not monitor.stopped  # no earlier check, below min_steps
    monitor.check([-100.0] * 20, {"conv": torch.tensor([0.5, 1.0, 2.0, 3.0])})
    assert not monitor.stopped  # the kept set changed completely
    state = monitor.check([-100.0] * 30, {"conv": torch.tensor([0.5, 1.0, 2.0, 3.0])})
    assert monitor.stopped and state.converged and state.kept_overlap == 1.0


def test_a_fixed_length_fit_that_stops_early_warns_with_its_step_count():
    monitor = ConvergenceMonitor(StoppingRule(), until_converged=False)
    with pytest.warns(FitNotConvergedWarning, match="only 12 SVI steps"):
        state = monitor.final([-1.0 * i for i in range(12)], {"conv": torch.ones(4)})
    assert not state.converged and state.rule == "fixed epochs"


def test_the_monitor_survives_a_checkpoint_round_trip():
    monitor = ConvergenceMonitor(StoppingRule(check_every=5), until_converged=True)
    monitor.check([-1.0] * 5, {"fc": torch.tensor([1.0, 3.0, 2.0])})
    again = ConvergenceMonitor(StoppingRule(check_every=5), until_converged=True)
    again.restore(monitor.snapshot())
    assert again.previous == monitor.previous


@pytest.mark.parametrize("field,value", [("min_steps", 0), ("check_every", 1.5), ("elbo_tolerance", 0), ("min_overlap", 2)])
def test_bad_rules_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        StoppingRule(**{field: value})


def test_max_below_min_is_refused():
    with pytest.raises(ValueError, match="max_steps"):
        StoppingRule(min_steps=100, max_steps=50)


@pytest.mark.slow
@pytest.mark.converged_fit
def test_the_default_fit_drops_planted_dead_units_and_says_it_converged(mnist_small):
    """Dead hidden units (outgoing weights zeroed after training) are pruned first by the default fit."""
    from analysis.planted import dead_unit_case
    from pyro_dirichlet.infer.fit import FitConfig, fit
    from pyro_dirichlet.infer.switches import DirichletSwitches
    from pyro_dirichlet.planning.plan import plan_keep

    # Killed before training: the network learns without them, so no live unit is harmful.
    case = dead_unit_case(mnist_small.train, width=32, dead=8, seed=0, kill="before")
    example = case.train.images[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitNotConvergedWarning)  # the default fit must not stop early
        result = fit(DirichletSwitches(case.network, example), case.train, FitConfig(seed=0, device="cpu", progress=False))
    means = {name: phi / phi.sum() for name, phi in result.concentrations.items()}
    dead = set(case.dead)
    # Every useless unit (dead, or live with a negligible removal cost) may go first.
    keep = set(plan_keep(means, {"1": 32 - len(case.useless)})["1"])
    assert not keep & dead, f"kept dead units {sorted(keep & dead)}"
    assert result.convergence.converged and result.convergence.rule == "stopping rule"
    assert result.steps >= StoppingRule().min_steps


@pytest.mark.slow
def test_run_on_a_tiny_data_set_warns_about_the_short_fit_and_checks_its_decision(small_mnist_everywhere, tmp_path, capsys):
    import json

    from pyro_dirichlet.app.cli import main

    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--subset", "400", "--train-epochs", "1", "--epochs", "1",
                 "--finetune-epochs", "0", "--latency-batch", "8"]) == 0
    captured = capsys.readouterr()
    assert "the fit ran only 4 SVI steps" in captured.err
    assert "decision check (validation accuracy after the same calibration" in captured.out
    record = json.loads((out / "run.json").read_text())
    check = record["steps"]["prune"]["result"]["decision_check"]
    assert set(check["accuracy"]) == {"posterior", "l1-norm", "random"}
    assert record["steps"]["fit"]["result"]["convergence"]["steps"] == 4
