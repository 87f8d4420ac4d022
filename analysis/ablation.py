"""What makes a one-epoch fit work: one setting changed at a time from the library's defaults.

Each row refits the switches of every seed's baseline with one :class:`FitConfig` setting
(or the prior, the ranking quantity, or folding) changed, prunes to each budget's keep
counts and scores the pruned network on the **validation** split, right after pruning --
the defaults were chosen from this table, so the test set is never read here. "Channels in
use" is the posterior mean's effective number of channels (exp of its entropy) over the
width, averaged over layers: 100% means the fit left the posterior uniform. Writes
``ablation.json`` and ``ablation.md``.
"""

from __future__ import annotations

import math

from analysis.study import Fitted, Study, fit_switches, mean_sd, percent
from pyro_dirichlet.infer.fit import FitConfig
from pyro_dirichlet.criteria import get_criterion

DEFAULTS = FitConfig()

#: ``name: (fit overrides, prior)``; the ranking rows reuse the default fit.
REFITS: dict[str, tuple[dict, float]] = {
    "defaults": ({}, 1.0),
    "init concentration 10": ({"init_concentration": 10.0}, 1.0),
    "init concentration 0.3": ({"init_concentration": 0.3}, 1.0),
    "lr 0.01": ({"lr": 0.01}, 1.0),
    "lr 0.03": ({"lr": 0.03}, 1.0),
    "lr 0.3": ({"lr": 0.3}, 1.0),
    "prior 0.1": ({}, 0.1),
    "prior 10": ({}, 10.0),
    "Monte Carlo KL": ({"analytic_kl": False}, 1.0),
    "4 particles": ({"num_particles": 4}, 1.0),
}
#: The ranking rows: ``{row: (registered criterion, fold)}``; every other row ranks by the mean and folds.
_RANKING_CRITERIA = {
    "rank by HDI lower bound": ("posterior-lower-bound", True),
    "rank by P(top-k)": ("top-k-probability", True),
    "no folding": ("posterior-mean", False),
    "l1-norm (reference)": ("l1-norm", False),
    "random (reference)": ("random", False),
}
RANKINGS = tuple(_RANKING_CRITERIA)


def channels_in_use(fitted: Fitted) -> float:
    """Mean over layers of exp(entropy of the posterior mean) / width: 1.0 is a uniform posterior."""
    ratios = []
    for mean in fitted.means.values():
        p = mean.clamp_min(1e-300)
        ratios.append(math.exp(float(-(p * p.log()).sum())) / len(p))
    return sum(ratios) / len(ratios)


def _scores(study: Study, seed: int, name: str, fitted: Fitted, target: dict[str, int]) -> tuple[dict, bool]:
    if name not in _RANKING_CRITERIA:
        return fitted.means, True
    registered, fold = _RANKING_CRITERIA[name]
    options = {"posterior-lower-bound": {"posterior": fitted.posterior},
               "top-k-probability": {"posterior": fitted.posterior, "counts": target},
               "posterior-mean": {"posterior": fitted.posterior},
               "random": {"seed": seed}}.get(registered, {})
    return get_criterion(registered, **options)(study.network(seed), fitted.switches.layers, study.data.train), fold


def run(study: Study) -> dict:
    rows = []
    for seed in study.seeds:
        network = study.network(seed)
        for name in (*REFITS, *RANKINGS):
            if name == "defaults" or name in RANKINGS:
                fitted = study.default_fit(seed)
            else:
                overrides, prior = REFITS[name]
                fitted = fit_switches(network, study.data, seed=seed, prior=prior, **{**study.fit_kwargs, **overrides})
            row = {"seed": seed, "setting": name, "fit_seconds": fitted.result.seconds,
                   "channels_in_use": channels_in_use(fitted), "final_elbo": fitted.result.elbo[-1]}
            for budget, target in study.budgets.items():
                scores, fold = _scores(study, seed, name, fitted, target)
                scored = study.score(network, study.pruner(network, fitted).plan(scores, target), seed=seed,
                                     fold_means=fitted.means if fold else None, splits=("validation",))
                row[budget] = scored["validation_pruned"]
            rows.append(row)
            study.log(f"ablation seed {seed} {name}: " + ", ".join(f"{b} {row[b]:.4f}" for b in study.budgets)
                      + f", in use {row['channels_in_use']:.2f}, {row['fit_seconds']:.1f} s")
    result = {"part": "ablation", "model": study.model, "seeds": list(study.seeds), "budgets": study.budgets,
              "defaults": {k: getattr(DEFAULTS, k) for k in ("lr", "init_concentration", "analytic_kl", "num_particles", "epochs", "batch_size")},
              "rows": rows}
    result["summary"] = summarise(rows, list(study.budgets))
    return result


def summarise(rows: list[dict], budgets: list[str]) -> list[dict]:
    table = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        members = [r for r in rows if r["setting"] == name]
        entry = {"setting": name, "channels_in_use": mean_sd(m["channels_in_use"] for m in members),
                 "fit_seconds": mean_sd(m["fit_seconds"] for m in members)}
        entry.update({budget: mean_sd(m[budget] for m in members) for budget in budgets})
        table.append(entry)
    return table


def markdown(result: dict) -> str:
    budgets = list(result["budgets"])
    d = result["defaults"]
    lines = [
        f"# {result['model']}: ablation of the one-epoch fit",
        "",
        f"Defaults: Adam lr {d['lr']} on log-concentrations, guide initialised at {d['init_concentration']} per channel, "
        f"prior Dirichlet(1), analytic KL, {d['num_particles']} particle, {d['epochs']} epoch at batch {d['batch_size']}, "
        "rank by posterior mean, fold E[s]*C into the kept weights. Each row changes one thing. "
        f"**Validation** accuracy (%) right after pruning (no fine-tuning), mean ± sd over seeds {result['seeds']}.",
        "",
        "| setting | " + " | ".join(budgets) + " | channels in use | fit seconds |",
        "|---|" + "---|" * len(budgets) + "---|---|",
    ]
    for e in result["summary"]:
        reused = e["setting"] in RANKINGS
        in_use = "(defaults' fit)" if reused else f"{100 * e['channels_in_use'][0]:.0f}%"
        seconds = "-" if reused else f"{e['fit_seconds'][0]:.1f}"
        lines.append(f"| {e['setting']} | " + " | ".join(percent(e[b]) for b in budgets) + f" | {in_use} | {seconds} |")
    lines += ["", "Fit seconds are wall-clock means on a shared 2-core machine: compare them within a row's order of "
              "magnitude only (the defaults' fits ran while other jobs held the cores)."]
    return "\n".join(lines) + "\n"
