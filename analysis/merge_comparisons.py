"""Join parts of one ResNet-20 comparison, run in parallel, into one ``comparison.json``.

A lent GPU runs a ResNet-20 fine-tune far below its capacity (a step is bound by kernel
launches, not arithmetic), so ``analysis/gpu_finetune.sh`` runs one process per (seed,
budget) -- ``python -m analysis.resnet20_cifar10 --seed S --flop-budgets B ...``, or per
criterion with ``--criterion C`` -- and this
joins what they wrote: the rows side by side, the summary and the paired differences
recomputed over all of them, exactly as one process running every seed and budget would
report them. Parts stopped early (``comparison.partial.json``) join too; the result is then
marked incomplete.

    python -m analysis.merge_comparisons --out analysis/results/X parts/*/comparison*.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.comparison_files import read_comparisons
from analysis.resnet20_cifar10 import markdown, paired_differences, summarise
from pyro_dirichlet.io.atomic import atomic_write_json, atomic_write_text

__all__ = ["merge", "main"]

#: Protocol fields the parts may differ in: what the parts were split along (a part per
#: criterion too, e.g. one row fine-tuned while another process fine-tunes the other).
SPLIT_FIELDS = ("seeds", "flop_budgets", "keep_ratios", "criteria", "finetune_only")
#: Two processes score the same baseline on the same device; a larger difference means other weights or data.
BASELINE_TOLERANCE = 1e-3


def merge(parts: list[dict], names: list[str] | None = None) -> dict:
    """One comparison from ``parts`` (results of :func:`analysis.resnet20_cifar10.run`, each
    with its ``weights``), refusing parts that do not belong together.

    ``names`` (one per part, e.g. file names) only label the errors.

    Raises:
        ValueError: no parts; parts of other weights, data, devices or protocols (apart from
            :data:`SPLIT_FIELDS`); a budget counted differently; the same (seed, budget,
            criterion) row in two parts.
    """
    if not parts:
        raise ValueError("no parts to merge.")
    names = names or [f"part {index}" for index in range(len(parts))]
    first = parts[0]
    for name, part in zip(names, parts):
        for key in ("model", "data", "device"):
            if part.get(key) != first.get(key):
                raise ValueError(f"{name}: its {key} {part.get(key)!r} is not {first.get(key)!r} (of {names[0]}).")
        if part.get("weights", {}).get("sha256") != first.get("weights", {}).get("sha256"):
            raise ValueError(f"{name}: comes from other weights than {names[0]} (SHA-256 differs).")
        shared = {k: v for k, v in part["protocol"].items() if k not in SPLIT_FIELDS}
        if shared != {k: v for k, v in first["protocol"].items() if k not in SPLIT_FIELDS}:
            raise ValueError(f"{name}: its protocol differs from {names[0]}'s beyond {', '.join(SPLIT_FIELDS)}.")
        for key in ("test_accuracy", "validation_accuracy"):
            if abs(part["baseline"][key] - first["baseline"][key]) > BASELINE_TOLERANCE:
                raise ValueError(f"{name}: baseline {key} {part['baseline'][key]} is not {first['baseline'][key]} (of {names[0]}).")
    budgets: dict[str, dict[str, int]] = {}
    for name, part in zip(names, parts):
        for budget, counts in (part.get("budgets") or {}).items():
            if budgets.setdefault(budget, counts) != counts:
                raise ValueError(f"{name}: budget {budget!r} keeps other counts than an earlier part.")
    budgets = {budget: budgets[budget] for budget in sorted(budgets, key=_budget_order)}
    # The order one process writes: seed, then budget, then criterion (parts split by
    # criterion: in the order the parts are given).
    criteria = list(dict.fromkeys(name for part in parts for name in part["protocol"]["criteria"]))
    order = {budget: index for index, budget in enumerate(budgets)}
    rows, seen = [], {}
    for name, part in zip(names, parts):
        for row in part["rows"]:
            key = (row["seed"], row["budget"], row["criterion"])
            if key in seen:
                raise ValueError(f"{name}: row {key} is in {seen[key]} too.")
            seen[key] = name
            rows.append(row)
    rows.sort(key=lambda r: (r["seed"], order[r["budget"]], criteria.index(r["criterion"])))
    protocol = dict(first["protocol"])
    protocol["seeds"] = sorted({seed for part in parts for seed in part["protocol"]["seeds"]})
    protocol["criteria"] = criteria
    for key in ("flop_budgets", "keep_ratios"):
        protocol[key] = sorted({value for part in parts for value in part["protocol"][key]}, reverse=True)
    if any(part["protocol"]["finetune_only"] != first["protocol"]["finetune_only"] for part in parts):
        protocol["finetune_only"] = "per part"
    return {
        "model": first["model"], "protocol": protocol, "data": first["data"], "device": first["device"],
        "baseline": first["baseline"], "budgets": budgets,
        "finetuned": sorted(map(list, {tuple(pair) for part in parts for pair in part["finetuned"]})),
        "rows": rows, "summary": summarise(rows), "paired": paired_differences(rows),
        # The parts ran side by side: the comparison took as long as the slowest.
        "seconds": max(part["seconds"] for part in parts), "part_seconds": [part["seconds"] for part in parts],
        "complete": all(part["complete"] for part in parts), "parts": len(parts),
        "weights": first["weights"], "reduced": first.get("reduced", False),
    }


def _budget_order(name: str) -> tuple[int, float]:
    # Shares of the FLOPs, then keep ratios, the mildest first: the order of Protocol.budget_names.
    if name.endswith("% FLOPs"):
        return 0, -float(name.removesuffix("% FLOPs"))
    return 1, -float(name.removeprefix("keep "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", type=Path, help="comparison.json or comparison.partial.json of each part")
    parser.add_argument("--out", type=Path, required=True, help="folder for the joined comparison.json and comparison.md")
    args = parser.parse_args(argv)
    try:
        loaded = read_comparisons(args.parts, "part")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = merge(loaded, [str(path) for path in args.parts])
    except (ValueError, KeyError, TypeError) as error:
        detail = f"a part lacks {error}" if isinstance(error, KeyError) else str(error)
        print(f"error: these parts do not make one comparison: {detail}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "comparison.json", result)
    atomic_write_text(args.out / "comparison.md", markdown(result))
    print(f"{len(result['rows'])} rows from {len(loaded)} parts ({'complete' if result['complete'] else 'INCOMPLETE'}) "
          f"-> {args.out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
