"""The contracts live in the repository: every citation points at docs/design.md, at a section it has.

A clone of the project has no ``../shared/DESIGN.md``; code, tests and docs cite ``docs/design.md §N``
(or link ``design.md#anchor`` from docs/). This reads every tracked kind of text file below the project
root and checks that no citation of the old file is left, that every cited section exists, and that
every link into design.md or an ADR lands on a heading or a file that exists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
SKIP_DIRS = {".venv", ".git", "build", "data", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".lua"}
SELF = Path(__file__).resolve()


def text_files() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            p = Path(folder) / name
            if (p.suffix in SUFFIXES or name == "Makefile") and p != SELF:
                out.append(p)
    return out


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def design_sections() -> tuple[set[str], set[str]]:
    """The section numbers (``"3"``) and heading anchors of docs/design.md."""
    numbers, anchors = set(), set()
    for line in DESIGN.read_text().splitlines():
        m = re.match(r"#{2,3} (.+)", line)
        if m:
            anchors.add(anchor(m.group(1)))
            n = re.match(r"(\d+)\. ", m.group(1))
            if n:
                numbers.add(n.group(1))
    return numbers, anchors


def test_nothing_cites_the_design_file_outside_the_repository() -> None:
    stale = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in text_files()
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if "DESIGN.md" in line or "shared/DESIGN" in line or re.search(r"\bDESIGN §", line)
    ]
    assert stale == [], f"cite docs/design.md instead: {stale}"


def test_every_cited_section_exists() -> None:
    numbers, _ = design_sections()
    assert numbers == {str(n) for n in range(1, 9)}
    bad = []
    for p in text_files():
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            for cite in re.finditer(r"design\.md\)? (§\d+(?:(?:, | and |-)§\d+)*)", line):
                bad += [
                    f"{p.relative_to(ROOT)}:{i} §{n}" for n in re.findall(r"§(\d+)", cite.group(1)) if n not in numbers
                ]
    assert bad == []


def test_links_into_the_design_doc_and_the_adrs_resolve() -> None:
    _, anchors = design_sections()
    bad = []
    for p in text_files():
        if p.suffix != ".md":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)#\s]*(?:design\.md|adr/[^)#\s]*)(?:#[^)\s]*)?)\)", line):
                path, _, frag = target.partition("#")
                dest = (p.parent / path).resolve()
                if not dest.exists() or (frag and dest == DESIGN.resolve() and frag not in anchors):
                    bad.append(f"{p.relative_to(ROOT)}:{i} {target}")
    assert bad == []


def test_readme_links_the_contracts_and_adr_numbers_are_unique() -> None:
    assert "(docs/design.md)" in (ROOT / "README.md").read_text()
    numbers = [p.name[:4] for p in (ROOT / "docs" / "adr").glob("[0-9][0-9][0-9][0-9]-*.md")]
    assert len(numbers) == len(set(numbers)), f"two ADRs share a number: {sorted(numbers)}"
