"""The likelihood temperature: how the effective data size lets a user's prior change the posterior.

With the likelihood scaled to all 55,000 MNIST examples the prior's KL term is a rounding
error next to it, so Dirichlet(0.3) (favouring few channels) and Dirichlet(3) (favouring
even use) give the same posterior. ``FitConfig.effective_data_size`` scales the likelihood
to fewer examples, i.e. tempers it by ``effective_data_size / len(train)``; this study fits
the first seed's switches for each size and prior and measures how far apart the priors
pull the posterior means (total variation, averaged over layers), how many channels stay in
use, and the validation accuracy right after pruning at the first budget. Writes
``tempering.json``, ``tempering.md`` and ``tempering.png``.
"""

from __future__ import annotations

from analysis.ablation import channels_in_use
from analysis.study import Study, fit_switches

PRIORS = (0.3, 1.0, 3.0)
#: ``None`` is the full training split.
SIZES = (None, 5000, 500, 50)


def run(study: Study, sizes=SIZES, priors=PRIORS) -> dict:
    seed = study.seeds[0]
    network = study.network(seed)
    budget, target = next(iter(study.budgets.items()))
    rows = []
    for size in sizes:
        means = {}
        for prior in priors:
            fitted = fit_switches(network, study.data, seed=seed, prior=prior, effective_data_size=size, **study.fit_kwargs)
            means[prior] = fitted.means
            scored = study.score(network, study.pruner(network, fitted).plan(fitted.means, target), seed=seed,
                                 fold_means=fitted.means, splits=("validation",))
            rows.append({"effective_data_size": size or len(study.data.train), "prior": prior,
                         "channels_in_use": channels_in_use(fitted), "validation_pruned": scored["validation_pruned"],
                         "final_elbo": fitted.result.elbo[-1]})
            study.log(f"tempering size {size} prior {prior}: in use {rows[-1]['channels_in_use']:.3f}, "
                      f"validation {rows[-1]['validation_pruned']:.4f}")
        low, high = means[min(priors)], means[max(priors)]
        distance = sum(0.5 * float((low[layer] - high[layer]).abs().sum()) for layer in low) / len(low)
        for row in rows[-len(priors):]:
            row["prior_total_variation"] = distance
    result = {"part": "tempering", "model": study.model, "seed": seed, "budget": budget,
              "train_size": len(study.data.train), "priors": list(priors), "rows": rows}
    plot(result, study.out / "tempering.png")
    return result


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for prior in result["priors"]:
        rows = [r for r in result["rows"] if r["prior"] == prior]
        left.plot([r["effective_data_size"] for r in rows], [100 * r["channels_in_use"] for r in rows], marker="o",
                  label=f"Dirichlet({prior:g}) prior")
    rows = [r for r in result["rows"] if r["prior"] == result["priors"][0]]
    right.plot([r["effective_data_size"] for r in rows], [r["prior_total_variation"] for r in rows], marker="o", color="black")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("effective data size (likelihood scaled to this many examples)")
        axis.invert_xaxis()
    left.set_ylabel("channels in use (% of width)")
    left.legend()
    right.set_ylabel(f"TV distance, prior {min(result['priors']):g} vs {max(result['priors']):g}")
    figure.suptitle(f"{result['model']}: how far the prior moves the posterior, by effective data size")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(result: dict) -> str:
    priors = result["priors"]
    lines = [
        f"# {result['model']}: the prior's effect, with and without likelihood tempering",
        "",
        f"Seed {result['seed']}, {result['train_size']:,} training examples. Channels in use = exp(entropy) of the "
        "posterior mean over the width (averaged over layers); TV = total variation distance between the posterior "
        f"means under Dirichlet({min(priors):g}) and Dirichlet({max(priors):g}) priors; validation accuracy right after "
        f"pruning to {result['budget']}.",
        "",
        "| effective data size | " + " | ".join(f"in use, prior {p:g}" for p in priors) + " | TV between priors | "
        + " | ".join(f"val. acc., prior {p:g}" for p in priors) + " |",
        "|---|" + "---|" * (2 * len(priors) + 1),
    ]
    for size in dict.fromkeys(r["effective_data_size"] for r in result["rows"]):
        rows = {r["prior"]: r for r in result["rows"] if r["effective_data_size"] == size}
        lines.append(
            f"| {size:,} | " + " | ".join(f"{100 * rows[p]['channels_in_use']:.1f}%" for p in priors)
            + f" | {rows[priors[0]]['prior_total_variation']:.3f} | "
            + " | ".join(f"{100 * rows[p]['validation_pruned']:.2f}" for p in priors) + " |"
        )
    lines += ["", "![tempering](tempering.png)"]
    return "\n".join(lines) + "\n"
