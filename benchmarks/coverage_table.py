"""``python -m benchmarks.coverage_table``: a coverage JSON as a Markdown table, one row a model.

Each row: the mode the model prunes in (``raise``, ``skip`` or ``no``), the fraction of
parameters kept at a random half of every reported site, the largest relative difference
between the pruned and the masked model's outputs, the sites found and the layers left out as
unsupported, and Torch-Pruning's kept fraction (or ``fails``). A run stopped part-way
(``complete: false``) can be filled in from the log of an earlier run (``--log``, the lines
``benchmarks.coverage`` prints): those rows are marked ``(log)`` and counted apart::

    python -m benchmarks.coverage_table benchmarks/results/coverage_timm.json \\
        --log benchmarks/results/coverage_timm_partial.log
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["bars", "log_rows", "main", "render", "render_bars", "rows"]


def rows(report: dict) -> list[dict]:
    """One summary per model of a coverage JSON (``benchmarks.coverage --json``)."""
    summaries = []
    for entry in report["models"]:
        ours, tp = entry.get("ours", {}), entry.get("torch_pruning", {})
        skip = ours.get("skip", {})
        mode = "raise" if ours.get("raise", {}).get("ok") else "skip" if skip.get("ok") else "no"
        summaries.append({
            "model": entry["model"],
            "mode": mode,
            "kept": skip.get("params_kept"),
            "difference": skip.get("relative_difference"),
            "sites": skip.get("sites", 0),
            "unsupported": len(skip.get("skipped_unsupported", [])),
            "torch_pruning": tp.get("params_kept") if tp.get("ok") else "fails",
            "note": entry.get("error") or skip.get("error") or ours.get("skip", {}).get("error") or "",
            "from_log": False,
        })
    return summaries


def log_rows(text: str) -> list[dict]:
    """The summaries in a log of ``benchmarks.coverage`` lines (models that measured, or the
    line's error)."""
    summaries = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) >= 13 and words[2] == "kept" and words[10] == "TP":
            summaries.append({
                "model": words[0], "mode": words[1], "kept": _number(words[3]),
                "difference": _number(words[5]), "sites": int(words[7]), "unsupported": int(words[9]),
                "torch_pruning": _number(words[11]) if words[11] != "fails" else "fails",
                "note": "", "from_log": True,
            })
        elif words[0].count(":") == 1:
            summaries.append({
                "model": words[0], "mode": "no", "kept": None, "difference": None, "sites": 0,
                "unsupported": 0, "torch_pruning": "fails", "note": " ".join(words[1:]), "from_log": True,
            })
    return summaries


def render(summaries: list[dict]) -> str:
    """The Markdown table, then the counts (measured and from a log apart)."""
    lines = [
        "| model | prunes | params kept | pruned vs masked | sites | unsupported | Torch-Pruning kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summaries:
        kept = f"{row['kept']:.3f}" if row["kept"] is not None else "-"
        difference = f"{row['difference']:.1e}" if row["difference"] is not None else "-"
        tp = f"{row['torch_pruning']:.3f}" if row["torch_pruning"] != "fails" else "fails"
        mode = row["mode"] + (" (log)" if row["from_log"] else "")
        note = f" ({row['note'][:60]})" if row["note"] and row["mode"] == "no" else ""
        lines.append(
            f"| {row['model']}{note} | {mode} | {kept} | {difference} | {row['sites']} | "
            f"{row['unsupported']} | {tp} |"
        )
    count = _counts(summaries)
    measured = [row for row in summaries if not row["from_log"]]
    lines += ["", f"{count}" + (f" ({_counts(measured)} measured in this run, the rest from the log)" if len(measured) < len(summaries) else "")]
    return "\n".join(lines)


def _counts(summaries: list[dict]) -> str:
    count = bars(summaries)
    return (
        f"{count['models']} models: {count['raise']} prune in raise mode, {count['skip']} in skip mode; "
        f"Torch-Pruning runs on {count['torch_pruning']}"
    )


def bars(summaries: list[dict], *, close: float = 0.05) -> dict:
    """The counts issue 33's bars are stated in: models, raise- and skip-mode exact prunes,
    Torch-Pruning's runs, the models only Torch-Pruning prunes, and where both run, how many keep
    a fraction of parameters within ``close`` of Torch-Pruning's."""
    both = [row for row in summaries if row["mode"] != "no" and row["torch_pruning"] != "fails"]
    return {
        "models": len(summaries),
        "raise": sum(row["mode"] == "raise" for row in summaries),
        "skip": sum(row["mode"] in ("raise", "skip") for row in summaries),
        "torch_pruning": sum(row["torch_pruning"] != "fails" for row in summaries),
        "torch_pruning_only": [row["model"] for row in summaries if row["mode"] == "no" and row["torch_pruning"] != "fails"],
        "both": len(both),
        "kept_close": sum(abs(row["kept"] - row["torch_pruning"]) <= close for row in both),
        "close": close,
    }


def render_bars(summaries: list[dict]) -> str:
    """One Markdown row of :func:`bars` (with its header): what a coverage page states of a population."""
    count = bars(summaries)
    only = ", ".join(f"`{name.partition(':')[2] or name}`" for name in count["torch_pruning_only"]) or "none"
    header = ("| models | prune exactly in raise mode | in skip mode | Torch-Pruning runs | pruned by Torch-Pruning only "
              f"| parameters kept within {count['close']} of Torch-Pruning's (both run) |")
    row = (f"| {count['models']} | {count['raise']} | {count['skip']} ({count['skip'] / count['models']:.0%}) "
           f"| {count['torch_pruning']} | {len(count['torch_pruning_only'])} ({only}) "
           f"| {count['kept_close']} of {count['both']} ({count['kept_close'] / max(count['both'], 1):.0%}) |")
    return f"{header}\n|---|---|---|---|---|---|\n{row}"


def _number(text: str) -> float | None:
    return None if text == "nan" else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage_table", description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a coverage JSON (benchmarks.coverage --json)")
    parser.add_argument("--log", type=Path, default=None, help="fill models the JSON lacks from this log of an earlier run")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    summaries = rows(report)
    if args.log is not None:
        measured = {row["model"] for row in summaries}
        summaries += [row for row in log_rows(args.log.read_text()) if row["model"] not in measured]
    print(render(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
