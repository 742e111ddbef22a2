"""docs/DESIGN.md §2 lists every module, one line each: a module added without a line fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "trailingstop"


def design_map() -> str:
    text = (REPO / "docs" / "DESIGN.md").read_text()
    section = text[text.index("## 2. Repository layout"):text.index("## 3.")]
    return section[section.index("```"):section.rindex("```")]


def test_every_module_has_its_line_in_the_design_map() -> None:
    listed = design_map()
    folder = ""
    names: set[str] = set()
    for line in listed.splitlines():
        entry = line[:31].strip()  # the name column
        if entry.endswith("/") and line.startswith("  ") and not line.startswith("    "):
            folder = entry
        for name in re.findall(r"[\w/]+\.py", entry):
            names.add(name if "/" in name else (folder + name if line.startswith("    ") else name))
    skipped = ("__init__.py", "__main__.py")
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in skipped}
    assert modules - names == set(), "add these to docs/DESIGN.md §2"
    assert names - modules == set(), "these are listed but no longer exist"
