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


README = (ROOT / "README.md").read_text()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def test_the_readme_counts_the_notebooks_there_are():
    count = re.search(r"in (\w+) notebooks you run", README).group(1)
    assert NUMBER_WORDS.index(count) == len(NOTEBOOKS)
    intro = README.split("## ")[0]
    assert re.findall(r"^(\d+)\. \*\*", intro, re.M) == [str(n) for n in range(1, len(NOTEBOOKS) + 1)]
    rows = re.findall(r"^\| `(\d\d_\w+)` \|", README, re.M)
    assert rows == [nb.stem for nb in NOTEBOOKS]


def test_the_course_times_add_up():
    """The notebooks' total matches the table's rows (07 takes seconds), its minutes match its seconds, and the
    command table gives the same minutes."""
    total, minutes = map(float, re.search(r"\*\*(\d+) s of notebooks \((\d+\.\d) min\)", README).groups())
    assert round(total / 60, 1) == minutes
    rows = re.findall(r"^\| `\d\d_\w+` \|.*\| (\d+) s \| [^|]+\|$", README, re.M)
    assert total - 10 <= sum(map(int, rows)) <= total and len(rows) == len(NOTEBOOKS) - 1
    assert f"| {minutes} min of notebooks (`cpu` profile" in README
