"""Automatic per-layer allocation under a global FLOP budget against uniform per-layer ratios.

For each seed and FLOP budget: the keep counts from one threshold on ``E[s]*C`` across all
layers (:func:`pyro_dirichlet.planning.allocation.budget_counts`) and from the largest uniform
fraction of every layer that fits (:func:`uniform_counts`). Both keep each layer's channels
of highest posterior mean and fold the scales in, so only the allocation differs. Writes
``allocation.json`` and ``allocation.md``.
"""

from __future__ import annotations

from analysis.study import Study, keep_sizes, mean_sd, percent, stage_headers, stage_names, stage_summary
from pyro_dirichlet.planning.allocation import uniform_counts

#: Fractions of the baseline's FLOPs per model. The ResNets only prune their inner convs
#: (block outputs are tied by the additions), so about half their FLOPs are reachable.
FLOP_BUDGETS = {"lenet5": (0.05, 0.08, 0.12), "vgg16": (0.2, 0.4), "resnet56": (0.6, 0.75), "resnet20": (0.6, 0.75)}
STAGES = ("pruned", "finetune_1", "finetune_3")


def run(study: Study, budgets: tuple[float, ...] | None = None) -> dict:
    budgets = budgets or FLOP_BUDGETS[study.model]
    stages = stage_names(study.finetune_epochs)
    rows = []
    for seed in study.seeds:
        fitted, network = study.default_fit(seed), study.network(seed)
        widths = {layer.name: layer.channels for layer in fitted.switches.layers}
        pruner = study.pruner(network, fitted)
        for budget in budgets:
            allocations = {
                "automatic (posterior threshold)": pruner.counts(fitted.means, budget=budget, cost="flops"),
                "uniform ratio": uniform_counts(network, widths, study.example, budget=budget, cost="flops", layers=pruner.layers),
            }
            for name, counts in allocations.items():
                keep = pruner.plan(fitted.means, counts)
                row = {"seed": seed, "budget": budget, "allocation": name, "architecture": keep_sizes(keep), "counts": counts}
                row.update(study.score(network, keep, seed=seed, fold_means=fitted.means, finetune_epochs=study.finetune_epochs))
                rows.append(row)
                study.log(f"allocation seed {seed} FLOPs {budget:g} {name} {row['architecture']}: "
                          + ", ".join(f"{s} {row['test_' + s]:.4f}" for s in stages))
    result = {"part": "allocation", "model": study.model, "seeds": list(study.seeds), "flop_budgets": list(budgets),
              "stages": stages, "data": study.describe_data(), "rows": rows}
    result["summary"] = summarise(rows, stages)
    result["verdicts"] = {
        str(budget): {stage: _auto_minus_uniform(rows, budget, stage) for stage in stages} for budget in budgets
    }
    return result


def _auto_minus_uniform(rows: list[dict], budget: float, stage: str) -> dict:
    by = {(r["seed"], r["allocation"]): r[f"test_{stage}"] for r in rows if r["budget"] == budget}
    seeds = sorted({s for s, _ in by})
    differences = [by[(s, "automatic (posterior threshold)")] - by[(s, "uniform ratio")] for s in seeds]
    mean, sd = mean_sd(differences)
    return {"mean": mean, "sd": sd, "per_seed": differences, "automatic_ahead": mean > 0}


def summarise(rows: list[dict], stages=STAGES) -> list[dict]:
    groups: dict[tuple[float, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["budget"], row["allocation"]), []).append(row)
    table = []
    for (budget, allocation), members in groups.items():
        entry = {
            "budget": budget,
            "allocation": allocation,
            "architectures": sorted({m["architecture"] for m in members}),
            "flops": mean_sd(m["flops"] for m in members)[0],
            "params": mean_sd(m["params"] for m in members)[0],
        }
        entry.update(stage_summary(members, stages))
        table.append(entry)
    return table


def markdown(result: dict) -> str:
    stages = result["stages"]
    headers = stage_headers(stages)
    lines = [
        f"# {result['model']}: automatic allocation vs uniform per-layer ratios at equal FLOPs",
        "",
        f"Test accuracy (%), mean ± sd over seeds {result['seeds']}. Both keep each layer's highest posterior means "
        f"and fold the scales in; only the per-layer counts differ. Data: {result['data']}.",
        "",
        "| FLOP budget | allocation | widths (per seed) | mean FLOPs | mean params | " + " | ".join(headers) + " |",
        "|---|---|---|---|---|" + "---|" * len(headers),
    ]
    for e in result["summary"]:
        cells = " | ".join(percent((e[f"{s}_mean"], e[f"{s}_sd"])) for s in stages)
        lines.append(f"| {e['budget']:.0%} | {e['allocation']} | {', '.join(e['architectures'])} | {e['flops']:,.0f} | "
                     f"{e['params']:,.0f} | {cells} |")
    lines += ["", "Automatic minus uniform (points, mean ± sd of the paired per-seed differences):", "",
              "| FLOP budget | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    for budget, entry in result["verdicts"].items():
        lines.append(f"| {float(budget):.0%} | " + " | ".join(
            f"{100 * entry[s]['mean']:+.2f} ± {100 * entry[s]['sd']:.2f}" for s in stages) + " |")
    return "\n".join(lines) + "\n"
