"""Every link and repository path the README and the results' READMEs name exists in a clone (issue 21: "every
link valid from a clone"): markdown links, and backticked paths under the project's top-level folders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "results/README.md", *sorted((ROOT / "results").glob("*/README.md")),
        ROOT / "examples/plugin_method/README.md"]
TOP = ("bench", "methods", "protocols", "scripts", "results", "docs", "tests", "benchmarks", "examples")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
TICKED = re.compile(r"`([^`\s]+)`")
# A path with a placeholder or pattern in it names a family of files, not one file.
PATTERN = re.compile(r"[<>*{}\[\]]|\bNAME\b|\bRUN\b|\.\.\.|<card>")


def named_paths(doc: Path) -> list[tuple[Path, str]]:
    text = doc.read_text()
    found = [(doc.parent / m, m) for m in LINK.findall(text) if "://" not in m]
    for token in TICKED.findall(text):
        token = token.rstrip(".,:;")
        if token.split("/")[0] in TOP and "/" in token and not PATTERN.search(token):
            found.append((ROOT / token, token))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_exists(doc):
    missing = sorted({name for path, name in named_paths(doc) if not path.exists()})
    assert not missing, f"{doc.relative_to(ROOT)} names paths a clone does not have: {missing}"


def test_the_check_finds_paths():
    assert len(named_paths(ROOT / "README.md")) > 20
