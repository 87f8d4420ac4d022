"""Regenerate every generated table of the results pages from the committed JSON, in one command.

Each table of ``docs/*.md`` that comes from a measurement sits between two markers::

    <!-- generated:NAME -->
    ...the table...
    <!-- /generated:NAME -->

and :data:`SECTIONS` says which JSON and which function make ``NAME``. The prose around the
tables is written by hand and quotes their figures; tests check those quotes against the same
JSON. Regenerating on a clean checkout changes nothing (``tests/test_results_pages.py``).

    python -m analysis.results_pages            # rewrite the tables
    python -m analysis.results_pages --check    # exit 1 and name each table that would change
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SECTIONS", "Section", "main", "markers", "regenerate", "replace_section"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "analysis" / "results"
BENCHMARK_RESULTS = ROOT / "benchmarks" / "results"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Section:
    """One generated table: the page it is on and the function that makes it from committed JSON."""

    page: str
    render: Callable[[], str]


def _ranking_quality() -> str:
    from analysis.ranking_quality import markdown

    return markdown([_json(RESULTS / "ranking-quality" / f"{name}.json") for name in ("head-resnet", "resnet20", "lenet5")])


def _ranking_summary() -> str:
    from analysis.ranking_summary import markdown

    return markdown(_json(RESULTS / "ranking-quality" / "summary.json"))


def _criteria() -> str:
    from analysis.criteria import readme_tables

    return readme_tables(_json(RESULTS / "lenet5-mnist" / "criteria.json"))


def _resnet20(folder: str, name: str) -> Callable[[], str]:
    def render() -> str:
        from analysis.resnet20_cifar10 import readme_tables

        return readme_tables(_json(RESULTS / folder / name))

    return render


def _precision() -> str:
    from benchmarks.precision import render_table

    return render_table(_json(BENCHMARK_RESULTS / "precision.json"))


def _versus_torch_pruning() -> str:
    from benchmarks.versus_torch_pruning import readme_table

    return readme_table(_json(BENCHMARK_RESULTS / "versus_torch_pruning.json"))


def _versus_torch_pruning_full() -> str:
    from benchmarks.versus_torch_pruning import readme_table

    return readme_table(_json(BENCHMARK_RESULTS / "versus_torch_pruning_full.json"))


def _run_cost() -> str:
    from benchmarks.run_cost import render_table

    return render_table(_json(BENCHMARK_RESULTS / "run_cost.json"))


def _timm_coverage() -> str:
    from benchmarks.coverage_table import render_bars, rows

    return render_bars(rows(_json(BENCHMARK_RESULTS / "coverage_timm.json")))


def _threads() -> str:
    from benchmarks.threads import render_table

    return render_table(_json(BENCHMARK_RESULTS / "threads.json"))


#: Every generated table, by the name its markers carry.
SECTIONS: dict[str, Section] = {
    "ranking-summary": Section("docs/results.md", _ranking_summary),
    "ranking-quality": Section("docs/results.md", _ranking_quality),
    "lenet5-criteria": Section("docs/results.md", _criteria),
    "resnet20-h200": Section("docs/results.md", _resnet20("resnet20-cifar10-h200", "comparison.partial.json")),
    "resnet20-30pct-finetune": Section("docs/results.md", _resnet20("resnet20-cifar10-30pct-finetune", "comparison.json")),
    "resnet20-h200-finetune": Section("docs/results.md", _resnet20("resnet20-cifar10-h200-finetune", "comparison.json")),
    "precision": Section("docs/results.md", _precision),
    "versus-torch-pruning": Section("docs/results.md", _versus_torch_pruning),
    "versus-torch-pruning-full": Section("docs/results.md", _versus_torch_pruning_full),
    "run-cost": Section("docs/results.md", _run_cost),
    "threads": Section("docs/results.md", _threads),
    "timm-coverage": Section("docs/architectures.md", _timm_coverage),
}


def markers(name: str) -> tuple[str, str]:
    """The comment lines that open and close the generated table ``name``."""
    return f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"


def replace_section(text: str, name: str, table: str) -> str:
    """``text`` with the table between ``name``'s markers replaced by ``table``.

    Raises:
        ValueError: ``text`` lacks the markers, or holds them more than once.
    """
    start, end = markers(name)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.S)
    found = pattern.findall(text)
    if len(found) != 1:
        raise ValueError(f"the page must hold the markers of {name!r} exactly once; found {len(found)}.")
    table = table.strip("\n")
    return pattern.sub(lambda _: f"{start}\n{table}\n{end}", text)


def regenerate(*, root: Path = ROOT, names: list[str] | None = None) -> dict[Path, str]:
    """``{page: its text with every generated table made afresh}`` for the pages that hold one.

    Raises:
        ValueError: a page lacks a section's markers, or holds them more than once.
    """
    pages: dict[Path, str] = {}
    for name in names or list(SECTIONS):
        section = SECTIONS[name]
        path = root / section.page
        try:
            pages[path] = replace_section(pages.get(path, path.read_text()), name, section.render())
        except ValueError as error:
            raise ValueError(f"{section.page}: {error}") from None
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.results_pages", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each page that would change")
    parser.add_argument("names", nargs="*", choices=[[], *SECTIONS], metavar="NAME",
                        help=f"only these tables (default: all of {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    changed = []
    for path, text in regenerate(names=args.names or None).items():
        if path.read_text() == text:
            continue
        changed.append(path)
        if not args.check:
            path.write_text(text)
        print(f"{path.relative_to(ROOT)}: {'would change' if args.check else 'rewritten'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
