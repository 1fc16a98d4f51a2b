"""The documentation: the README is a landing page, the generated reference pages are current, and every link
between the pages leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(heading_anchor(line.lstrip("#")))
    return found


def test_the_readme_is_a_landing_page_that_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")


@pytest.mark.parametrize("name", ["parameters.md", "cli-reference.md"])
def test_the_generated_reference_pages_are_current(name):
    from clipomaly_ros.tools.docs import PAGES as GENERATED

    assert (REPO / "docs" / name).read_text() == GENERATED[name](), (
        f"docs/{name} is stale: run python -m clipomaly_ros.tools.docs")


def test_every_setting_is_on_the_parameters_page_once():
    from clipomaly_ros.core.config import SETTINGS

    page = (REPO / "docs" / "parameters.md").read_text()
    for setting in SETTINGS:
        assert page.count(f"| `{setting.name}` |") == 1, setting.name


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_between_the_pages_leads_somewhere(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target}: no heading with that anchor"
