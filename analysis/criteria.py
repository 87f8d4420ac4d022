"""Importance criteria at equal keep counts: does the posterior pick better channels than simple baselines?

Protocol (issue 4): for every seed, the same trained network and one default SVI fit; for
every budget, the same per-layer keep counts for every criterion; test accuracy right after
pruning and after 1 and 3 fine-tune epochs (each keeps its best epoch on the validation
split -- the test set is only reported). Writes ``criteria.json`` and ``criteria.md``.
"""

from __future__ import annotations

import math

from torch import nn

from analysis.study import Study, mean_sd, percent, stage_headers, stage_names, stage_summary
from pyro_dirichlet.criteria import CRITERIA, get_criterion

STAGES = ("pruned", "finetune_1", "finetune_3")
#: The method and the two baselines the quality bar names.
METHOD, BASELINES = "dirichlet mean + fold", ("random", "l1-norm")

#: Each row of the comparison: ``{row name: (registered criterion, fold E[s]*C into the kept weights)}``.
ROWS: dict[str, tuple[str, bool]] = {
    METHOD: ("posterior-mean", True),
    "dirichlet mean, no fold": ("posterior-mean", False),
    "dirichlet P(top-k) + fold": ("top-k-probability", True),
    "dirichlet HDI lower + fold": ("posterior-lower-bound", True),
    "random": ("random", False),
    "l1-norm": ("l1-norm", False),
    "taylor": ("taylor", False),
    "batchnorm |gamma|": ("batchnorm-scale", False),
}


def criterion_options(name: str, study: Study, seed: int, target: dict[str, int]) -> dict:
    """What registered criterion ``name`` is built with in a study: the seed's fit, the budget, the seed."""
    posterior = {"posterior": study.default_fit(seed).posterior}
    return {
        "posterior-mean": posterior,
        "posterior-lower-bound": posterior,
        "top-k-probability": {**posterior, "counts": target},
        "random": {"seed": seed},
        # One pass over the training split: the data the fit sees (issue 15's equal treatment).
        "taylor": {"seed": seed, "batches": None},
    }.get(name, {})


def criteria(study: Study, seed: int, target: dict[str, int]) -> dict[str, tuple[dict, bool]]:
    """``{row name: (scores, fold)}`` of the rows ``study.criteria`` names (all that apply when ``None``).

    A name is a row of :data:`ROWS` or any registered criterion (a row of its own, not
    folded). Only the asked-for criteria are computed. BatchNorm |gamma| applies only where
    every layer has a BatchNorm after it; naming anything else is an error.
    """
    names = list(ROWS) if study.criteria is None else list(study.criteria)
    unknown = [name for name in names if name not in ROWS and name not in CRITERIA]
    if unknown:
        raise ValueError(f"criteria {unknown} are not rows of the comparison; known rows: {list(ROWS)} "
                         f"and the registered criteria {sorted(CRITERIA)}.")
    network, layers = study.network(seed), study.default_fit(seed).switches.layers
    found = {}
    for name in names:
        registered, fold = ROWS.get(name, (name, False))
        if registered == "batchnorm-scale" and not _has_batchnorm_after_every(network, layers):
            continue
        criterion = get_criterion(registered, **criterion_options(registered, study, seed, target))
        found[name] = (criterion(network, layers, study.data.train), fold)
    return found


def _has_batchnorm_after_every(network: nn.Module, layers) -> bool:
    modules = dict(network.named_modules())
    return all(isinstance(modules[layer.switch_at], nn.modules.batchnorm._BatchNorm) for layer in layers)


def run(study: Study) -> dict:
    stages = stage_names(study.finetune_epochs, calibrated=study.calibration is not None)
    rows = []
    for seed in study.seeds:
        fitted = study.default_fit(seed)
        pruner = study.pruner(study.network(seed), fitted)
        for budget, target in study.budgets.items():
            for name, (scores, fold) in criteria(study, seed, target).items():
                keep = pruner.plan(scores, target)
                row = {"seed": seed, "budget": budget, "criterion": name}
                row.update(study.score(
                    study.network(seed), keep, seed=seed, fold_means=fitted.means if fold else None,
                    finetune_epochs=study.finetune_epochs, calibration=study.calibration,
                ))
                rows.append(row)
                study.log(f"criteria seed {seed} {budget} {name}: " + ", ".join(f"{s} {row['test_' + s]:.4f}" for s in stages))
    result = {"part": "criteria", "model": study.model, "seeds": list(study.seeds), "budgets": study.budgets,
              "finetune_lr": study.finetune_lr, "stages": stages, "data": study.describe_data(),
              "baseline_test_accuracy": [study.baseline_accuracy(seed) for seed in study.seeds], "rows": rows}
    result["summary"] = summarise(rows, stages)
    result["verdicts"] = verdicts(rows, list(study.budgets), stages)
    return result


def summarise(rows: list[dict], stages=STAGES) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["budget"], row["criterion"]), []).append(row)
    table = []
    for (budget, criterion), members in groups.items():
        entry = {"budget": budget, "criterion": criterion, "params": members[0]["params"], "flops": members[0]["flops"]}
        entry.update(stage_summary(members, stages))
        table.append(entry)
    return table


def paired_difference(rows: list[dict], budget: str, stage: str, other: str, method: str = METHOD) -> dict:
    """``method`` minus ``other`` per seed (same network, same counts): mean, sd and standard error."""
    by = {(r["seed"], r["criterion"]): r[f"test_{stage}"] for r in rows if r["budget"] == budget}
    seeds = sorted({seed for seed, _ in by})
    differences = [by[(s, method)] - by[(s, other)] for s in seeds]
    mean, sd = mean_sd(differences)
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(len(differences)), "per_seed": differences}


def verdicts(rows: list[dict], budgets: list[str], stages=STAGES) -> dict:
    """The issue's bar per budget: ahead of random and L1 right after pruning, not worse after fine-tuning.

    "Not worse" after fine-tuning is read as: the mean paired difference is not below zero
    by more than two standard errors (seed-to-seed noise after fine-tuning is about 0.05
    points, the size of the differences being compared). With a calibration column, "beats
    after calibration" asks for a paired difference above two standard errors (issue 15).
    """
    out = {}
    for budget in budgets:
        entry = {}
        for other in BASELINES:
            pruned = paired_difference(rows, budget, "pruned", other)
            entry[other] = {"pruned_difference": pruned, "beats_right_after_pruning": pruned["mean"] > 0}
            if "calibrated" in stages:
                calibrated = paired_difference(rows, budget, "calibrated", other)
                entry[other].update({
                    "calibrated_difference": calibrated,
                    "beats_after_calibration": calibrated["mean"] > 2 * calibrated["se"],
                })
            if stages[-1].startswith("finetune"):  # runs without fine-tuning have nothing more to judge
                tuned = paired_difference(rows, budget, stages[-1], other)
                entry[other].update({
                    "finetuned_difference": tuned,
                    "not_worse_after_finetune": tuned["mean"] + 2 * tuned["se"] >= 0,
                    "ahead_after_finetune_in_mean": tuned["mean"] >= 0,
                })
        out[budget] = entry
    return out


def markdown(result: dict) -> str:
    stages = result["stages"]
    headers = stage_headers(stages)
    lines = [
        f"# {result['model']}: importance criteria at equal keep counts",
        "",
        f"Test accuracy (%), mean ± sd over seeds {result['seeds']}; each seed its own baseline "
        f"({percent(mean_sd(result['baseline_test_accuracy']))}% before pruning) and default fit. "
        f"Fine-tuning: Adam, peak lr {result['finetune_lr']}, cosine, best epoch on the validation split. "
        f"Data: {result['data']}.",
        "",
        "| budget | criterion | params | FLOPs | " + " | ".join(headers) + " |",
        "|---|---|---|---|" + "---|" * len(headers),
    ]
    for e in result["summary"]:
        cells = " | ".join(percent((e[f"{s}_mean"], e[f"{s}_sd"])) for s in stages)
        lines.append(f"| {e['budget']} | {e['criterion']} | {e['params']:,} | {e['flops']:,} | {cells} |")
    lines += ["", f"Paired differences, {METHOD} minus baseline (points, mean ± standard error over seeds):", "",
              "| budget | vs | right after pruning | after calibration | after fine-tuning (longest) | beats after pruning "
              "| beats after calibration (> 2 se) | not worse after fine-tuning |",
              "|---|---|---|---|---|---|---|---|"]
    for budget, entry in result["verdicts"].items():
        for other, v in entry.items():
            p, c, t = v["pruned_difference"], v.get("calibrated_difference"), v.get("finetuned_difference")
            tuned = f"{100 * t['mean']:+.2f} ± {100 * t['se']:.2f}" if t else "-"
            calibrated = f"{100 * c['mean']:+.2f} ± {100 * c['se']:.2f}" if c else "-"
            beats_calibrated = "-" if c is None else ("yes" if v["beats_after_calibration"] else "NO")
            not_worse = "-" if t is None else ("yes" if v["not_worse_after_finetune"] else "NO")
            lines.append(f"| {budget} | {other} | {100 * p['mean']:+.2f} ± {100 * p['se']:.2f} | {calibrated} | {tuned} "
                         f"| {'yes' if v['beats_right_after_pruning'] else 'NO'} | {beats_calibrated} | {not_worse} |")
    return "\n".join(lines) + "\n"


def _digits(stage: str) -> int:
    # After fine-tuning every criterion is within tenths of a point: those columns need hundredths.
    return 2 if stage.startswith("finetune") else 1


#: The question docs/results.md asks per row pair: the posterior as the library uses it (folded), and the ranking alone.
README_PAIRS = ((METHOD, "l1-norm"), (METHOD, "random"), (METHOD, "taylor"),
                ("dirichlet mean, no fold", "l1-norm"), ("dirichlet mean, no fold", "random"))


def readme_tables(result: dict) -> str:
    """The two tables docs/results.md's "Does it work?" quotes, made from ``criteria.json`` (a test keeps them in sync).

    Means over seeds per budget and criterion at every stage, then paired differences
    (points, mean ± standard error) for :data:`README_PAIRS`; bold where the mean is beyond
    two standard errors of 0.
    """
    stages = result["stages"]
    headers = stage_headers(stages)
    lines = ["| budget | criterion | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(stages)]
    for e in result["summary"]:
        lines.append(f"| {e['budget']} | {e['criterion']} | " + " | ".join(f"{100 * e[f'{s}_mean']:.{_digits(s)}f}" for s in stages) + " |")
    lines += ["", "| budget | difference | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(stages)]
    present = {r["criterion"] for r in result["rows"]}
    for budget in result["budgets"]:
        for method, other in README_PAIRS:
            if method not in present or other not in present:
                continue
            cells = []
            for stage in stages:
                d = paired_difference(result["rows"], budget, stage, other, method)
                mark = "**" if abs(d["mean"]) > 2 * d["se"] else ""
                cells.append(f"{mark}{100 * d['mean']:+.{_digits(stage)}f} ± {100 * d['se']:.{_digits(stage)}f}{mark}")
            lines.append(f"| {budget} | {method} − {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _digits(stage: str) -> int:
    # After fine-tuning every criterion is within tenths of a point: those columns need hundredths.
    return 2 if stage.startswith("finetune") else 1
