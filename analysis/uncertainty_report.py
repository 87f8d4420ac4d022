"""How sure the posterior is about its pruning decisions.

Per layer and budget: the channels whose 95% HDI straddles the keep threshold (the
decisions the posterior is unsure of), the posterior mass curve (how many channels hold
50/90/99% of the layer's switch mass), and ranking stability: the top-k overlap of the
kept sets of fits with different SVI seeds on the *same* trained network. Writes
``uncertainty.json``, ``uncertainty.md`` and ``uncertainty_mass.png``.
"""

from __future__ import annotations

import itertools

import numpy as np

from analysis.study import Study, fit_switches, mean_sd
from pyro_dirichlet.io.atomic import atomic_write
from pyro_dirichlet.app.plots import mass_curves_png
from pyro_dirichlet.posterior import layer_summaries
from pyro_dirichlet.posterior.uncertainty import mass_curve, straddling_channels, top_k_overlap

LEVELS = (0.5, 0.9, 0.99)
CI_PROB = 0.95


def run(study: Study, svi_seeds: int = 3) -> dict:
    seed = study.seeds[0]
    network = study.network(seed)
    fits = [study.default_fit(seed)] + [
        fit_switches(network, study.data, seed=seed + 1000 * k, **study.fit_kwargs) for k in range(1, svi_seeds)
    ]
    summaries = layer_summaries(fits[0].posterior, ci_prob=CI_PROB)
    pruner = study.pruner(network, fits[0])
    layers = {}
    for name, summary in summaries.items():
        entry = {"width": len(summary.channels), "mass_curve": {str(k): v for k, v in mass_curve(summary, LEVELS).items()},
                 "sorted_mean_times_width": (np.sort(summary.mean)[::-1] * len(summary.mean)).tolist(), "budgets": {}}
        for budget, target in study.budgets.items():
            if name not in target:
                continue
            keep = pruner.plan(fits[0].means, {name: target[name]})[name]
            overlaps = [top_k_overlap(a.means[name], b.means[name], target[name]) for a, b in itertools.combinations(fits, 2)]
            entry["budgets"][budget] = {
                "keep": target[name],
                "straddling": straddling_channels(summary, keep),
                "top_k_overlap_across_svi_seeds": mean_sd(overlaps),
            }
        layers[name] = entry
        study.log(f"uncertainty {name}: mass curve {entry['mass_curve']}, "
                  + ", ".join(f"{b}: {len(v['straddling'])} straddling, overlap {v['top_k_overlap_across_svi_seeds'][0]:.2f}"
                              for b, v in entry["budgets"].items()))
    result = {"part": "uncertainty", "model": study.model, "seed": seed, "svi_seeds": svi_seeds, "ci_prob": CI_PROB,
              "levels": list(LEVELS), "layers": layers}
    # The report's own figure: the first budget's keep counts are the dots on the curves.
    first = next(iter(study.budgets.values()))
    study.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(study.out / "uncertainty_mass.png") as file:
        file.write(mass_curves_png(summaries, {n: k for n, k in first.items() if n in summaries}))
    return result


def markdown(result: dict) -> str:
    levels = result["levels"]
    lines = [
        f"# {result['model']}: uncertainty of the pruning decisions",
        "",
        f"Seed {result['seed']}'s network and default fit; {round(100 * result['ci_prob'])}% HDIs. Straddling: channels "
        "whose interval contains the keep threshold (midway between the last kept and first dropped posterior mean). "
        f"Overlap: |top-k of one fit ∩ top-k of another| / k, mean ± sd over the pairs of {result['svi_seeds']} SVI seeds "
        "on the same network.",
        "",
        "| layer | width | " + " | ".join(f"channels for {int(100 * l)}% of mass" for l in levels)
        + " | budget (keep) | straddling | top-k overlap across SVI seeds |",
        "|---|---|" + "---|" * len(levels) + "---|---|---|",
    ]
    for name, entry in result["layers"].items():
        for budget, b in entry["budgets"].items():
            straddling = b["straddling"]
            shown = ", ".join(map(str, straddling[:12])) + (" …" if len(straddling) > 12 else "")
            lines.append(f"| {name} | {entry['width']} | " + " | ".join(str(entry["mass_curve"][str(l)]) for l in levels)
                         + f" | {budget} ({b['keep']}) | {len(straddling)}: {shown or '-'} | "
                         f"{b['top_k_overlap_across_svi_seeds'][0]:.2f} ± {b['top_k_overlap_across_svi_seeds'][1]:.2f} |")
    lines += ["", "![mass curves](uncertainty_mass.png)"]
    return "\n".join(lines) + "\n"
