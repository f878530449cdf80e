"""Build the whole site in a temp folder beside ``out`` and rename it into place: a failure leaves nothing
half-written, and a reader of an older site sees the old one or the new one."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.core.errors import UsageError
from bench.figures import decoder_methods, reconstructions_png
from bench.generation.figures import run_picture
from bench.report import _load
from bench.site import generation
from bench.site.html import GENERATOR, slug
from bench.site.overview import index_page
from bench.site.reports import find_reports, write_report
from bench.site.runs import Run, run_page
from bench.store import current_umask, ensure_writable_dir


def collect_runs(runs_dir: Path) -> list[Run]:
    """Every record under ``runs_dir`` (bench/report.py's reader: a malformed record stops here with one line)."""
    runs, names = [], set()
    for path, rec in _load(runs_dir):
        folder = path.parent
        rel = folder.relative_to(runs_dir).as_posix() if folder != runs_dir else folder.name
        name = slug(rel.replace("/", "__"))
        while name in names:
            name += "_"
        names.add(name)
        result, note = generation.read_result(folder)
        runs.append(Run(folder, rec, f"runs/{name}.html", generation=result, generation_note=note))
    return runs


def check_out(out: Path) -> None:
    """``out`` may be new, empty, or an earlier report (which is replaced); anything else is not ours to delete."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not _is_site(out):
        raise UsageError(f"--out {out} holds files that are not a repbench report; pass a new or empty folder")
    ensure_writable_dir(out.parent, "--out")


def _is_site(folder: Path) -> bool:
    index = folder / "index.html"
    try:
        return index.is_file() and f'content="{GENERATOR}"' in index.read_text(errors="replace")[:2000]
    except OSError:
        return False


def draw_reconstructions(runs: list[Run], site: Path, data_root: str | None, log: Callable[[str], None]) -> None:
    """A reconstruction picture for every finished run of a decoder method; a run that cannot be drawn (no
    checkpoint, dataset not here) gets a note on its page instead."""
    decoders = set(decoder_methods())
    for run in runs:
        if run.record["config"]["method"] in decoders:
            run.reconstruction, run.note = _picture(
                run, site, lambda r=run: reconstructions_png(r.folder, data_root, 8, 8, 0), "", "reconstructions", log)


def draw_generation(runs: list[Run], site: Path, data_root: str | None, log: Callable[[str], None]) -> None:
    """The generation picture of every run with a generation.json; one whose decoder or data is missing gets a note."""
    for run in runs:
        if run.generation is not None:
            run.generation_png, run.generation_note = _picture(
                run, site, lambda r=run: run_picture(r.folder, data_root), "-generation", "generation", log)


def _picture(run: Run, site: Path, draw: Callable[[], bytes], suffix: str, what: str,
             log: Callable[[str], None]) -> tuple[str, str]:
    """(the picture's path inside the site, "") once drawn and written; ("", the note) when it cannot be drawn."""
    try:
        png = draw()
    except UsageError as err:
        note = f"not drawn: {err}"
        log(f"repbench report: {run.folder.name}: {what} {note}")
        return "", note
    path = f"{run.page.removesuffix('.html')}{suffix}.png"
    (site / path).write_bytes(png)
    return path, ""


def build(runs_dir: Path, out: Path, report_dirs: list[Path], data_root: str | None = None,
          reconstructions: bool = True, log: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Write the site; returns (runs, ablation and search pages)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    runs_dir, out = Path(runs_dir), Path(out)
    for d in report_dirs:
        if not Path(d).is_dir():
            raise UsageError(f"--ablations {d} is not a folder; pass a folder written by 'repbench ablate' or 'search'")
    check_out(out)
    runs = collect_runs(runs_dir)
    reports = find_reports([runs_dir, *report_dirs])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the site is for others to read
        (tmp / "runs").mkdir()
        (tmp / "reports").mkdir()
        if reconstructions:
            draw_reconstructions(runs, tmp, data_root, log)
            draw_generation(runs, tmp, data_root, log)
        for run in runs:
            (tmp / run.page).write_text(run_page(run))
        for report in reports:
            write_report(report, tmp)
        (tmp / "index.html").write_text(index_page(runs, str(runs_dir), [(r.title, r.page) for r in reports]))
        _swap(tmp, out)
    except OSError as err:
        raise UsageError(f"cannot write the site under {out}: {err.strerror or err}; pass a writable --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(runs), len(reports)


def _swap(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``; an earlier site there is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old.", suffix=".tmp"))
        os.replace(out, old / "site")
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
