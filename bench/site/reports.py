"""Ablation and search pages: the Markdown reports that `repbench ablate` and `repbench search` write beside their
runs (table.md + runs.csv per grid; summary.md per search; report.md + trials.csv per study), shown as HTML with
their PNG plots copied into the site.

The reports are Markdown made by this package (headings, paragraphs, bullet lists, pipe tables, one picture
per line), so that subset is what is rendered; every text is escaped before any tag is added.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.site.html import cell, esc, page, slug, table

# (kind, Markdown file, file beside it that marks the folder as one of that kind)
KINDS = (("ablation", "table.md", "runs.csv"), ("search summary", "summary.md", "summary.csv"),
         ("search study", "report.md", "trials.csv"))
PICTURE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$")


@dataclass
class Report:
    kind: str
    folder: Path
    markdown: Path
    page: str  # path inside the site
    title: str


def find_reports(roots: list[Path]) -> list[Report]:
    """Every ablation grid, search and study folder under ``roots``, each once, in path order."""
    found: dict[Path, Report] = {}
    for root in roots:
        for kind, md, marker in KINDS:
            for path in sorted(Path(root).rglob(md)):
                folder = path.parent
                if (folder / marker).is_file() and folder.resolve() not in found:
                    rel = folder.relative_to(root).as_posix() if folder != Path(root) else folder.name
                    found[folder.resolve()] = Report(kind, folder, path, "", f"{kind}: {rel}")
    reports = sorted(found.values(), key=lambda r: (r.kind, r.title))
    names: set[str] = set()
    for r in reports:
        name = slug(r.title.split(": ", 1)[1].replace("/", "__"))
        while f"{name}.html" in names:
            name += "_"
        names.add(f"{name}.html")
        r.page = f"reports/{name}.html"
    return reports


def write_report(report: Report, site: Path) -> None:
    """The report's page and its pictures (site/reports/<name>/<picture>.png)."""
    pictures = site / report.page.removesuffix(".html")
    body = render(report.markdown.read_text(errors="replace"), report.folder, pictures)
    listed = {p.name for p in pictures.glob("*.png")} if pictures.is_dir() else set()
    rest = [p for p in sorted(report.folder.glob("*.png")) if p.name not in listed]
    for p in rest:  # a plot the Markdown does not show is still part of the grid's results
        body += "\n" + _picture(p.stem, p.name, report.folder, pictures)
    source = f'<p class="muted">from <code>{esc(report.markdown)}</code></p>'
    (site / report.page).write_text(page(report.title, source + body, root="../"))


def _picture(alt: str, src: str, folder: Path, pictures: Path) -> str:
    """Copy a picture the report names (a file in its own folder only) and show it; a missing one is said."""
    path = folder / src
    if "/" in src or "\\" in src or src.startswith(".") or not path.is_file() or path.suffix.lower() != ".png":
        return f'<p class="muted">(picture {esc(src)} is not in {esc(folder)})</p>'
    pictures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, pictures / slug(src))
    return f'<p><img src="{esc(pictures.name)}/{esc(slug(src))}" alt="{esc(alt)}"></p>'


def inline(text: str) -> str:
    out = esc(text.replace("\\|", "|"))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _table(lines: list[str]) -> str:
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip().strip("|"))] for ln in lines]
    head, body = split[0], [r for r in split[1:] if not all(set(c) <= set(":-") and c for c in r)]
    rows = ["".join(cell(inline(c), _sort_key(c), "num" if _sort_key(c) is not None else "") for c in r) for r in body]
    return table([c.replace("\\|", "|") for c in head], rows, sortable=True)


def _sort_key(text: str) -> float | None:
    first = text.split(" ")[0].strip("[],")
    return float(first) if NUMBER.match(first) else None


def render(text: str, folder: Path, pictures: Path) -> str:
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
            continue
        i += 1
        if not line:
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif m := PICTURE.match(line):
            out.append(_picture(m.group(1), m.group(2), folder, pictures))
        elif line.startswith("- "):
            out.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        else:
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out).replace("</ul>\n<ul>", "\n")
