"""One command regenerates every generated table of the results pages, and on this checkout it changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis import results_pages
from analysis.results_pages import SECTIONS, main, regenerate

ROOT = Path(__file__).resolve().parents[1]


def test_regenerating_the_results_pages_changes_nothing():
    pages = regenerate()
    assert {path.relative_to(ROOT).as_posix() for path in pages} == {section.page for section in SECTIONS.values()}
    for path, text in pages.items():
        assert text == path.read_text(), f"{path.relative_to(ROOT)}: run python -m analysis.results_pages"
    assert main(["--check"]) == 0


def test_a_stale_table_is_found_and_rewritten(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "results.md"
    fresh = page.read_text()
    start, end = "<!-- generated:ranking-summary -->\n", "<!-- /generated:ranking-summary -->"
    stale = fresh.replace(fresh[fresh.index(start) + len(start):fresh.index(end)], "| an old | table |\n")
    page.write_text(stale)
    monkeypatch.setattr(results_pages, "ROOT", tmp_path)
    monkeypatch.setattr(results_pages, "regenerate", lambda names=None: regenerate(root=tmp_path, names=names))
    assert main(["--check"]) == 1 and page.read_text() == stale
    assert "docs/results.md: would change" in capsys.readouterr().out
    assert main([]) == 0 and page.read_text() == fresh


def test_a_page_without_a_sections_markers_is_refused(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# no markers here\n")
    with pytest.raises(ValueError, match="docs/results.md: the page must hold the markers of 'ranking-summary' exactly once"):
        regenerate(root=tmp_path, names=["ranking-summary"])
