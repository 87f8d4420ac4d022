"""Every relative link in README.md and docs/*.md names a file that exists, and every ``#anchor`` a heading there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The page without its fenced code blocks (a ``# comment`` in a block is no heading, ``[x](y)`` no link)."""
    return FENCE.sub("", path.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to hyphens."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets GitHub's ``-1``, ``-2``... suffix."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_slug_follows_githubs_rule():
    assert slug("Does it work? The method studies") == "does-it-work-the-method-studies"
    assert slug("`posterior.nc` in ArviZ 1.x") == "posteriornc-in-arviz-1x"
    assert slug("Extending: a new criterion") == "extending-a-new-criterion"


def test_every_page_is_found_and_the_readme_links_each_docs_page():
    assert len(PAGES) >= 8
    linked = {(ROOT / target.split("#")[0]).resolve() for target in relative_links(ROOT / "README.md")}
    assert set(PAGES[1:]) <= linked, "README.md does not link every page of docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    links = relative_links(page)
    assert links, f"{page.name} links nowhere"
    for target in links:
        file, _, anchor = target.partition("#")
        destination = (page.parent / file).resolve() if file else page
        assert destination.exists(), f"{page.name}: {target} names no file"
        if anchor:
            assert destination.suffix == ".md", f"{page.name}: {target} has an anchor into a file that is not Markdown"
            assert anchor in anchors(destination), f"{page.name}: {target} names no heading of {destination.name}"
