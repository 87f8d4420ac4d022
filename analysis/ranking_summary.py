"""The ranking study over seeds: the issue's bars, computed from the per-seed records.

:mod:`analysis.ranking_quality` writes one record per network and seed
(``<network>.json`` for seed 0, ``<network>-seed<k>.json``); this module pairs them by seed
and reports, per network, criterion and FLOPs budget, the mean validation accuracy after
calibration and after fine-tuning, and the posterior's paired difference to L1-norm and to
random with its standard error (the standard deviation of the per-seed differences over
the square root of their number). Validation accuracy throughout: the test split is recorded
by the study, never compared here.

    python -m analysis.ranking_summary            # prints the table, writes summary.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from analysis.study import mean_sd

__all__ = ["load_records", "main", "markdown", "paired", "seed_agreement", "summarize"]

RESULTS = Path(__file__).parent / "results" / "ranking-quality"
#: The posterior rows compared with the cheap criteria: the default fit (one gain per channel,
#: one Adam step scale per layer), the default before it (one gain per layer, Adam), and each
#: of its two changes alone.
POSTERIORS = ("default", "layer-gain-adam", "channel-gain", "layer-adam")
#: What each posterior row is paired with: the cheap criteria and the earlier default.
OTHERS = ("l1-norm", "random", "taylor", "layer-gain-adam")
BUDGETS = ("50% FLOPs", "30% FLOPs")
STAGES = ("calibrated", "fine_tuned")


def load_records(results: Path = RESULTS) -> dict[str, list[dict]]:
    """Every network's records, seed 0 first, keyed by network name."""
    records: dict[str, list[dict]] = {}
    for path in sorted(results.glob("*.json")):
        if path.name == "summary.json":
            continue
        record = json.loads(path.read_text())
        records.setdefault(record["network"], []).append(record)
    return {name: sorted(rows, key=lambda r: r["seed"]) for name, rows in records.items()}


def paired(values: list[float]) -> dict:
    """Mean and standard error of per-seed values (``se`` is ``None`` for one seed)."""
    mean, sd = mean_sd(values)
    # One seed has no standard error (as analysis.resnet20_cifar10.paired_differences).
    se = sd / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": mean, "se": se, "n": len(values)}


def seed_agreement(rows: list[dict]) -> float | None:
    """Mean over seed pairs and layers of the Spearman correlation between two seeds' scores:
    how far a criterion's ranking is fixed by the network and data rather than by its random
    numbers (1 for a deterministic one such as L1-norm); ``None`` with fewer than two seeds."""
    import itertools

    import torch

    from analysis.ranking_quality import spearman

    pairs = [statistics.fmean(spearman(torch.tensor(a["scores"][k]), torch.tensor(b["scores"][k])) for k in a["scores"])
             for a, b in itertools.combinations(rows, 2)]
    return statistics.fmean(pairs) if pairs else None


def _accuracy(row: dict, stage: str, budget: str) -> float | None:
    part = row.get(stage) or {}
    return part[budget]["validation"] if budget in part else None


def summarize(records: dict[str, list[dict]]) -> dict:
    """Per network: each criterion's mean accuracies and the posterior's paired differences.

    Only the seeds that have both rows of a comparison enter it, so a criterion measured on
    fewer seeds is compared on those.
    """
    summary: dict = {}
    for network, rows in records.items():
        names = sorted({name for record in rows for name in record["criteria"]})
        entry: dict = {"seeds": [r["seed"] for r in rows], "criteria": {}, "versus": {}}
        for name in names:
            present = [r["criteria"][name] for r in rows if name in r["criteria"]]
            criterion: dict = {"spearman_mean": paired([row["spearman_mean"] for row in present]),
                               "seed_agreement": seed_agreement(present)}
            for stage in STAGES:
                for budget in BUDGETS:
                    values = [v for row in present if (v := _accuracy(row, stage, budget)) is not None]
                    if values:
                        criterion.setdefault(stage, {})[budget] = paired(values)
            entry["criteria"][name] = criterion
        for posterior in POSTERIORS:
            # Each posterior variant against the cheap criteria and the earlier default.
            for other in OTHERS:
                if other == posterior:
                    continue
                versus = _versus(rows, posterior, other)
                if versus:
                    entry["versus"].setdefault(posterior, {})[other] = versus
        summary[network] = entry
    return summary


def _versus(rows: list[dict], posterior: str, other: str) -> dict:
    """The per-seed differences ``posterior - other``: accuracies by stage and budget, and Spearman."""
    versus: dict = {}
    pairs = [r["criteria"] for r in rows if posterior in r["criteria"] and other in r["criteria"]]
    for stage in STAGES:
        for budget in BUDGETS:
            differences = [mine - theirs for criteria in pairs
                           if (mine := _accuracy(criteria[posterior], stage, budget)) is not None
                           and (theirs := _accuracy(criteria[other], stage, budget)) is not None]
            if differences:
                versus.setdefault(stage, {})[budget] = paired(differences)
    if pairs:
        versus["spearman"] = paired([c[posterior]["spearman_mean"] - c[other]["spearman_mean"] for c in pairs])
    return versus


def _cell(stat: dict | None, *, scale: float = 100.0, digits: int = 1) -> str:
    if stat is None:
        return "-"
    mean = f"{scale * stat['mean']:+.{digits}f}"
    return f"{mean} (1 seed)" if stat["se"] is None else f"{mean} ± {scale * stat['se']:.{digits}f}"


def markdown(summary: dict) -> str:
    """Each posterior row's paired differences to L1-norm and random (points of validation
    accuracy, mean ± standard error over the seeds both were measured on), after calibration
    and after fine-tuning, and in mean Spearman correlation with removal cost."""
    lines = ["| network | posterior | versus | seeds | after calibration, 50% FLOPs | 30% FLOPs | after fine-tuning, 50% FLOPs | 30% FLOPs | Spearman difference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for network, entry in summary.items():
        for posterior, rows in entry["versus"].items():
            for other in ("layer-gain-adam", "l1-norm", "random"):
                if other not in rows:
                    continue
                versus = rows[other]
                cells = [network, posterior, other, str(versus.get("spearman", {}).get("n", "-")),
                         *(_cell(versus.get(stage, {}).get(budget)) for stage in STAGES for budget in BUDGETS),
                         _cell(versus.get("spearman"), scale=1.0, digits=2)]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    summary = summarize(load_records(args.results))
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
