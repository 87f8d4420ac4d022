"""The command-line prior model of docs/priors-and-posteriors.md: ``pyro-dirichlet run`` on LeNet-5/MNIST with the flat Dirichlet(1) and with a
shared Gamma(2, 2) concentration named by ``--prior-model``, and each report's posterior predictive check.

``shared_concentration`` below is that page's ``my_priors.py``, importable from the repository root as
``analysis.prior_model_run:shared_concentration``. Each run is the demo's (cached baseline, one SVI epoch, the default
5-12-40 target and fine-tuning), its seed 0; the JSON holds each command, its seconds, the report's ``posterior_predictive``
section, the pruned network's test accuracy, the shared concentration's prior and posterior (mean, 2.5% and 97.5%
quantiles) and ``elpd_loo`` of the saved posterior (``az.loo``)::

    python -m analysis.prior_model_run --out runs/prior-model --json analysis/results/lenet5-mnist/prior_model_run.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist


def shared_concentration(layers):
    """One symmetric concentration for every layer's switch, inferred under a Gamma(2, 2) hyper-prior."""
    alpha = pyro.sample("alpha", dist.Gamma(2.0, 2.0))
    return {layer.name: dist.Dirichlet(alpha.expand(layer.channels)) for layer in layers}


RUNS = {
    "dirichlet-1": [],
    "shared-alpha": ["--prior-model", "analysis.prior_model_run:shared_concentration"],
}


def _interval(values: np.ndarray) -> dict[str, float]:
    low, high = np.quantile(values, [0.025, 0.975])
    return {"mean": float(values.mean()), "q2.5": float(low), "q97.5": float(high)}


def measure(name: str, extra: list[str], out: Path) -> dict:
    import arviz as az

    from pyro_dirichlet.app.cli import main
    from pyro_dirichlet.posterior import load_posterior
    from pyro_dirichlet.posterior.loo import loo_check

    argv = ["run", "--model", "lenet5", "--dataset", "mnist", "--out", str(out / name), "--quiet", *extra]
    start = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"pyro-dirichlet {' '.join(argv)} failed")
    seconds = time.perf_counter() - start
    report = json.loads((out / name / "report.json").read_text())
    tree = load_posterior(out / name / "posterior.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings at 100 draws; the figure is reported as measured
        loo = az.loo(tree)
    row = {
        "command": "pyro-dirichlet " + " ".join(argv),
        "seconds": seconds,
        "baseline_trained_in_this_run": report["baseline"]["trained_in_this_run"],
        "posterior_predictive": report["posterior_predictive"],
        "pruned_test_accuracy": report["pruned"]["test_accuracy"],
        "pruned_architecture": report["pruned"]["architecture"],
        "elpd_loo": float(loo.elpd),
        # Pareto-k diagnostics and whether the estimate can be trusted (issue 32).
        "loo": loo_check(tree).to_dict(),
        "model_drawn": report["model_graph"]["figure"] is not None,
    }
    if "alpha" in tree["posterior"]:
        row["alpha"] = {"prior": _interval(tree["prior"]["alpha"].values.ravel()),
                        "posterior": _interval(tree["posterior"]["alpha"].values.ravel())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/prior-model"))
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    rows = {}
    for name, extra in RUNS.items():
        rows[name] = measure(name, extra, args.out)
        print(name, json.dumps(rows[name]["posterior_predictive"]["networks"]), f"{rows[name]['seconds']:.0f} s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"script": "analysis/prior_model_run.py", "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
