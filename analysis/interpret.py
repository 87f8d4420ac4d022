"""Interpretable features (the paper's by-product): which conv filters matter for which digit.

For each class, the first seed's switches are refit on that class's training examples only
(the frozen network's own 10-way likelihood), so a switch's posterior says how much the
network leans on that filter to recognise that digit. The figure shows, per conv layer, the
posterior mean times the width (1 = an average filter) for every class and filter, with a
dot where the 95% HDI lies entirely above 1 (credibly more important than average), and the
conv1 filters themselves on top. Writes ``interpret.json``, ``interpret.md``, ``interpret.png``.
"""

from __future__ import annotations

import numpy as np
import torch

from analysis.study import Study, fit_switches
from pyro_dirichlet.data import Split
from pyro_dirichlet.posterior import layer_summaries

CI_PROB = 0.95
#: A class has about a tenth of the training split; more, smaller steps give the fit about
#: as many steps as the default one-epoch fit on all classes.
FIT = {"epochs": 3, "batch_size": 64}


def run(study: Study, layers: tuple[str, ...] = ("conv1", "conv2")) -> dict:
    seed = study.seeds[0]
    network = study.network(seed)
    train = study.data.train
    classes = sorted(int(c) for c in train.labels.unique())
    per_class = {}
    for label in classes:
        mask = train.labels == label
        subset = Split(train.images[mask], train.labels[mask])
        fitted = fit_switches(network, study.data, seed=seed, train=subset, **{**study.fit_kwargs, **FIT})
        summaries = layer_summaries(fitted.posterior, ci_prob=CI_PROB)
        per_class[label] = {
            layer: {"mean": summaries[layer].mean.tolist(), "hdi_lower": summaries[layer].hdi_lower.tolist(),
                    "hdi_upper": summaries[layer].hdi_upper.tolist()}
            for layer in layers
        }
        top = np.argsort(-summaries[layers[0]].mean)[:3].tolist()
        study.log(f"interpret class {label}: {len(subset)} examples, top {layers[0]} filters {top}")
    result = {"part": "interpret", "model": study.model, "seed": seed, "layers": list(layers), "ci_prob": CI_PROB,
              "fit": FIT, "classes": classes, "per_class": {str(k): v for k, v in per_class.items()}}
    result["specificity"] = {layer: _specificity(result, layer) for layer in layers}
    plot(result, network, study.out / "interpret.png")
    return result


def _matrix(result: dict, layer: str, key: str) -> np.ndarray:
    return np.array([result["per_class"][str(c)][layer][key] for c in result["classes"]])


def _specificity(result: dict, layer: str) -> dict:
    """How class-specific the important filters are: credibly-important filters per class, and classes per filter."""
    width = _matrix(result, layer, "mean").shape[1]
    credible = _matrix(result, layer, "hdi_lower") * width > 1
    return {
        "credibly_important_per_class": credible.sum(1).tolist(),
        "classes_per_credible_filter": credible.sum(0)[credible.any(0)].tolist(),
        "filters_important_for_one_class_only": int((credible.sum(0) == 1).sum()),
    }


def plot(result: dict, network: torch.nn.Module, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result["layers"]
    first = dict(network.named_modules())[layers[0]].weight.detach().cpu()
    ratios = [0.9] + [1.0] * len(layers)
    figure, axes = plt.subplots(len(layers) + 1, 1, figsize=(12, 3.2 * len(layers) + 1.5), gridspec_kw={"height_ratios": ratios})
    # The conv1 filters, one small image per column of the first heatmap.
    axes[0].axis("off")
    count = first.shape[0]
    for index in range(count):
        inset = axes[0].inset_axes([index / count, 0.0, 1 / count * 0.9, 0.9])
        inset.imshow(first[index].mean(0), cmap="gray")
        inset.set_xticks([])
        inset.set_yticks([])
        inset.set_title(str(index), fontsize=7)
    axes[0].set_title(f"{layers[0]} filters", fontsize=9, loc="left")
    for axis, layer in zip(axes[1:], layers):
        means = _matrix(result, layer, "mean")
        width = means.shape[1]
        image = axis.imshow(means * width, aspect="auto", cmap="viridis")
        rows, columns = np.nonzero(_matrix(result, layer, "hdi_lower") * width > 1)
        axis.scatter(columns, rows, s=8, color="white", edgecolors="black", linewidths=0.4,
                     label=f"{round(100 * result['ci_prob'])}% HDI above 1")
        axis.set_yticks(range(len(result["classes"])), [str(c) for c in result["classes"]])
        axis.set_xticks(range(0, width, 1 if width <= 25 else 5))
        axis.set_ylabel("digit")
        axis.set_xlabel(f"{layer} filter")
        figure.colorbar(image, ax=axis, label="E[s] × width")
        axis.legend(loc="upper right", fontsize=7)
    figure.suptitle(f"{result['model']}: switch posteriors fit on one digit at a time")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(result: dict) -> str:
    layer = result["layers"][0]
    width = len(result["per_class"][str(result["classes"][0])][layer]["mean"])
    lines = [
        f"# {result['model']}: which filters matter for which digit",
        "",
        f"Seed {result['seed']}'s network; switches refit on each digit's training examples "
        f"({result['fit']['epochs']} epochs, batch {result['fit']['batch_size']}). Top {layer} filters by posterior mean, "
        f"with E[s]×width and its {round(100 * result['ci_prob'])}% HDI (1 = an average filter).",
        "",
        "| digit | top filters: E[s]×width [HDI] | credibly important filters |",
        "|---|---|---|",
    ]
    for c in result["classes"]:
        entry = result["per_class"][str(c)][layer]
        mean = np.asarray(entry["mean"])
        top = np.argsort(-mean)[:3]
        cells = ", ".join(f"#{i} {mean[i] * width:.2f} [{entry['hdi_lower'][i] * width:.2f}, {entry['hdi_upper'][i] * width:.2f}]"
                          for i in top)
        lines.append(f"| {c} | {cells} | {result['specificity'][layer]['credibly_important_per_class'][c]} |")
    for name, spec in result["specificity"].items():
        lines.append("")
        lines.append(f"{name}: {spec['filters_important_for_one_class_only']} filters are credibly important for exactly one "
                     f"digit; credibly important filters serve {np.mean(spec['classes_per_credible_filter'] or [0]):.1f} digits on average.")
    lines += ["", "![per-digit switches](interpret.png)"]
    return "\n".join(lines) + "\n"
