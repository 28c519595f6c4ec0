"""The README and docs/ as a reader meets them: every relative link and image resolves, and the published figures
stay small enough for a README."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_the_gallery_shows_published_figures_under_300_kb():
    gallery = [t for t in LINK.findall((ROOT / "README.md").read_text()) if t.endswith(".png")]
    assert gallery and all(t.startswith(("docs/figures/", "docs/figures-gpu/")) for t in gallery)
    for figure in (ROOT / "docs").glob("figures*/*.png"):
        assert figure.stat().st_size < 300_000, f"{figure.name} is {figure.stat().st_size:,} bytes"
