"""Choose the ResNet-20 fine-tune recipe on the validation split, from one comparison per candidate.

Each candidate is a run of ``analysis.resnet20_cifar10`` that differs only in its fine-tune
recipe (``--finetune-epochs``, ``--finetune-lr``, ``--finetune-batch-size``,
``--finetune-distillation``, ``--finetune-label-smoothing``): the same
weights, seed, budget and rows. The chosen recipe has the highest mean validation accuracy
over every fine-tuned row; the test accuracy is listed for information and decides nothing.
``analysis/gpu_finetune.sh`` runs the candidates side by side on a lent GPU with the
gain row and L1-norm at 50% of the FLOPs, so the recipe serves the method and its strongest
competitor alike.

    python -m analysis.finetune_recipe --json analysis/results/X/recipe.json probe-*/comparison.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from analysis.comparison_files import read_comparisons
from pyro_dirichlet.io.atomic import atomic_write_json

__all__ = ["RECIPE_FIELDS", "choose", "main", "recipe_of"]

#: The protocol fields a candidate sets.
RECIPE_FIELDS = ("finetune_epochs", "finetune_lr", "finetune_batch_size", "finetune_distillation", "finetune_label_smoothing")
#: Values of recipe fields that runs made before the field existed leave out.
RECIPE_DEFAULTS = {"finetune_distillation": 0.0, "finetune_label_smoothing": 0.0}
#: Protocol fields that only say which rows a run holds; the rows themselves are compared instead.
ROW_FIELDS = ("seeds", "flop_budgets", "keep_ratios", "criteria", "finetune_only")


def recipe_of(protocol: dict) -> dict:
    """The :data:`RECIPE_FIELDS` of a comparison's protocol, a field it leaves out read as its default."""
    return {field: protocol.get(field, RECIPE_DEFAULTS[field]) if field in RECIPE_DEFAULTS else protocol[field]
            for field in RECIPE_FIELDS}


def choose(results: list[dict], names: list[str] | None = None, *, criterion: str | None = None,
           budget: str | None = None) -> dict:
    """The candidates' validation and test means, and the recipe with the best validation mean.

    Only the fine-tuned rows count, and of those only ``criterion``'s and ``budget``'s where
    given: a run holding more rows can then stand beside a run of those rows alone. Ties go
    to fewer epochs, then the smaller learning rate, then no distillation, then no label
    smoothing (the cheaper, gentler recipe, the one that changes less). A
    candidate's ``device`` is recorded: the same seed draws other random numbers on another.

    Raises:
        ValueError: no candidates; a candidate with no such fine-tuned row; candidates whose
            counted rows, weights, data or protocol (but for :data:`RECIPE_FIELDS` and
            :data:`ROW_FIELDS`) differ; two with one recipe.
    """
    if not results:
        raise ValueError("no candidates to choose from.")
    names = names or [f"candidate {index}" for index in range(len(results))]
    candidates, reference = [], None
    for name, result in zip(names, results):
        rows = [row for row in result["rows"] if "validation_finetuned" in row
                and criterion in (None, row["criterion"]) and budget in (None, row["budget"])]
        if not rows:
            raise ValueError(f"{name}: no such row was fine-tuned, so it says nothing about its recipe.")
        protocol = result["protocol"]
        setting = ({k: v for k, v in protocol.items() if k not in (*RECIPE_FIELDS, *ROW_FIELDS)},
                   sorted((row["seed"], row["budget"], row["criterion"]) for row in rows),
                   result.get("weights", {}).get("sha256"), result.get("data"))
        if reference is None:
            reference = (name, setting)
        elif setting != reference[1]:
            raise ValueError(f"{name}: differs from {reference[0]} in more than the recipe ({', '.join(RECIPE_FIELDS)}) "
                             "or fine-tunes other rows; candidates must be alike but for the recipe.")
        candidates.append({
            "source": name, "device": result.get("device"),
            **recipe_of(protocol),
            "validation_mean": statistics.fmean(row["validation_finetuned"] for row in rows),
            "test_mean": statistics.fmean(row["test_finetuned"] for row in rows),
            "rows": [{"seed": r["seed"], "budget": r["budget"], "criterion": r["criterion"],
                      "validation_finetuned": r["validation_finetuned"], "test_finetuned": r["test_finetuned"],
                      "finetune_seconds": r.get("finetune_seconds")} for r in rows],
        })
    recipes = [tuple(c[field] for field in RECIPE_FIELDS) for c in candidates]
    if len(set(recipes)) < len(recipes):
        raise ValueError("two candidates share one recipe: nothing tells them apart.")
    chosen = max(candidates, key=lambda c: (c["validation_mean"], -c["finetune_epochs"], -c["finetune_lr"],
                                            -c["finetune_distillation"], -c["finetune_label_smoothing"]))
    counted = " of " + ", ".join(filter(None, (criterion, budget))) if criterion or budget else ""
    return {"rule": f"highest mean validation accuracy over the fine-tuned rows{counted} (test: information only)",
            "candidates": candidates, "chosen": {"source": chosen["source"], **{field: chosen[field] for field in RECIPE_FIELDS}}}


def flags(recipe: dict) -> str:
    """The chosen recipe as ``analysis.resnet20_cifar10`` flags (those at the command line's default left out)."""
    return " ".join(f"--{field.replace('_', '-')} {recipe[field]}" for field in RECIPE_FIELDS
                    if field not in RECIPE_DEFAULTS or recipe[field] != RECIPE_DEFAULTS[field])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", type=Path, help="comparison.json (or .partial.json) of each candidate")
    parser.add_argument("--json", type=Path, default=None, help="write the candidates and the choice here")
    parser.add_argument("--criterion", default=None, help="count only this row's fine-tunes (e.g. l1-norm)")
    parser.add_argument("--budget", default=None, help="count only this budget's fine-tunes (e.g. '50%% FLOPs')")
    args = parser.parse_args(argv)
    try:
        choice = choose(read_comparisons(args.candidates, "candidate"), [str(path) for path in args.candidates],
                        criterion=args.criterion, budget=args.budget)
    except (ValueError, KeyError) as error:
        detail = f"a candidate lacks {error}" if isinstance(error, KeyError) else str(error)
        print(f"error: {detail}", file=sys.stderr)
        return 2
    print(f"{'epochs':>6s} {'lr':>7s} {'batch':>5s} {'distil':>6s} {'smooth':>6s} {'validation':>10s} {'test (info)':>11s}")
    for c in choice["candidates"]:
        mark = "  <- chosen" if all(c[f] == choice["chosen"][f] for f in RECIPE_FIELDS) else ""
        print(f"{c['finetune_epochs']:6d} {c['finetune_lr']:7g} {c['finetune_batch_size']:5d} {c['finetune_distillation']:6g} {c['finetune_label_smoothing']:6g} "
              f"{100 * c['validation_mean']:10.2f} {100 * c['test_mean']:11.2f}{mark}")
    print(f"chosen: {flags(choice['chosen'])}")
    if args.json:
        atomic_write_json(args.json, choice)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
