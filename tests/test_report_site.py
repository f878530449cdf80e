"""`repbench report`: the static site's structure from real 1-epoch digits runs, escaping of names, and bad input.

tests/test_report_browser.py opens the same site in headless chromium; ``make_runs`` is shared with it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.site.reports import KINDS

ROOT = Path(__file__).resolve().parent.parent
ABLATION = ROOT / "results" / "ablations" / "dino-centering"  # a committed grid: table.md, runs.csv and its plot
TINY = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50",
        "--protocols", "knn", "--no-progress"]
STEPS = "step,epoch,loss,lr,images_per_s,entropy\n1,1,2.5,0.1,900,3.1\n2,1,2.1,0.05,950,2.9\n3,1,1.9,0.0,1000,2.7\n"


def make_runs(root: Path) -> Path:
    """Real records: raw pixels (two seeds: an interval), simclr (trained; its steps.csv is set to a known one) and
    the autoencoder (a decoder: its page gets reconstructions); plus a copy of a committed ablation grid."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: 2 OpenMP threads on 2 busy cores only spin-wait
    try:
        for args in (["--method", "raw", "--seed", "0"], ["--method", "raw", "--seed", "1"], ["--method", "simclr"],
                     ["--method", "autoencoder"]):
            assert main(["run", *args, *TINY, "--out", str(root)]) == 0
    finally:
        torch.set_num_threads(before)
    runs = root / "runs"
    simclr = next(runs.glob("*/simclr-*"))
    (simclr / "steps.csv").write_text(STEPS)
    shutil.copytree(ABLATION, runs / "grids" / ABLATION.name)
    return runs


def build(runs: Path, out: Path, *extra: str) -> int:
    return main(["report", "--runs", str(runs), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("report_runs"))


@pytest.fixture(scope="module")
def site(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_site") / "site"
    assert build(runs, out) == 0
    return out


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_one_page_per_run_and_per_grid(site, runs):
    assert len(list((site / "runs").glob("*.html"))) == len(list(runs.rglob("record.json"))) == 4
    assert [p.name for p in (site / "reports").glob("*.html")] == [f"grids__{ABLATION.name}.html"]
    assert (site / "reports" / f"grids__{ABLATION.name}" / f"{ABLATION.name}.png").stat().st_size > 1000


def test_every_local_link_and_picture_exists(site):
    for page in pages(site):
        for target in re.findall(r'(?:href|src)="([^"#:]+)"', page.read_text()):
            assert (page.parent / target).resolve().is_file(), f"{page.name} links {target}"


def test_overview_has_interval_and_counts(site):
    index = (site / "index.html").read_text()
    row = re.search(r"<tr><td>raw</td>(.*?)</tr>", index).group(1)
    assert re.search(r"\d+\.\d ± \d+\.\d <small>2/2</small>", row), row  # two seeds: mean ± interval, n scored / run
    assert re.search(r"<td>simclr</td>.*?<small>1/1</small>", index)
    assert 'class="sortable"' in index and 'data-filter="overview"' in index and "<svg" in index


@pytest.mark.parametrize("method,wanted,unwanted", [
    ("simclr", ["per-step log (steps.csv)", "entropy", "images_per_s", "Collapse statistics", "Provenance", "git_sha"],
     ["Reconstructions"]),
    ("autoencoder", ["Reconstructions", '<img src="../runs/', "Throughput and timing", "&quot;method&quot;: &quot;autoencoder"],
     []),
    ("raw", ["no training curve recorded: this method does not train"], ["Reconstructions"]),
])
def test_run_page_sections(site, method, wanted, unwanted):
    page = next((site / "runs").glob(f"*{method}-*.html")).read_text()
    for text in wanted:
        assert text in page, text
    for text in unwanted:
        assert text not in page, text


def test_broken_steps_csv_falls_back_to_history(runs, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(next(runs.glob("*/simclr-*")), copy / "simclr-run")
    (copy / "simclr-run" / "steps.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert build(copy, tmp_path / "site") == 0
    page = next((tmp_path / "site" / "runs").glob("*.html")).read_text()
    assert "steps.csv unreadable" in page and "curves from the per-epoch history" in page
    assert "<polyline" in page and "per-step log" not in page


def test_names_are_escaped(runs, tmp_path):
    """A folder and a method name made of markup stay text; the page's file name is made of safe characters."""
    evil = '<img src=x onerror=alert(1)>&"q'
    src = next(runs.glob("*/raw-*"))
    dst = tmp_path / "runs" / evil.replace("/", "")
    shutil.copytree(src, dst)
    rec = json.loads((dst / "record.json").read_text())
    rec["config"]["method"] = evil
    (dst / "record.json").write_text(json.dumps(rec))
    assert build(tmp_path / "runs", tmp_path / "site") == 0
    for page in pages(tmp_path / "site"):
        text = page.read_text()
        assert "<img src=x" not in text and "onerror=alert(1)>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;q" in (tmp_path / "site" / "index.html").read_text()
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in (tmp_path / "site" / "runs").iterdir())


def test_rebuild_replaces_an_earlier_site_and_leaves_no_temp(runs, tmp_path):
    out = tmp_path / "site"
    assert build(runs, out, "--no-reconstructions") == 0
    (out / "stale.html").write_text("old")
    assert build(runs, out, "--no-reconstructions") == 0
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_report_kinds_are_found_under_ablations(runs, tmp_path):
    """--ablations adds folders of every report kind; each kind's page is made from its Markdown file."""
    extra = tmp_path / "extra"
    for kind, md, marker in KINDS:
        folder = extra / kind.replace(" ", "-")
        folder.mkdir(parents=True)
        (folder / md).write_text(f"## {kind} <b>\n\n| a | b |\n|:--|--:|\n| x | 1.5 |\n\n- item `code`\n")
        (folder / marker).write_text("a,b\n")
    assert build(runs, tmp_path / "site", "--ablations", str(extra), "--no-reconstructions") == 0
    names = sorted(p.name for p in (tmp_path / "site" / "reports").glob("*.html"))
    assert names == sorted([f"grids__{ABLATION.name}.html"] + [f"{k.replace(' ', '-')}.html" for k, _, _ in KINDS])
    page = (tmp_path / "site" / "reports" / "search-summary.html").read_text()
    assert "search summary &lt;b&gt;" in page and "<code>code</code>" in page
    assert '<td class="num" data-sort="1.5">1.5</td>' in page


def _bad_cases(runs: Path, tmp: Path):
    empty = tmp / "empty"
    empty.mkdir()
    broken = tmp / "broken" / "r1"
    broken.mkdir(parents=True)
    (broken / "record.json").write_text("{not json")
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    a_file = tmp / "a-file"
    a_file.write_text("x")
    return {
        "empty runs folder": (["--runs", str(empty), "--out", str(tmp / "o1")], "no record.json under", tmp / "o1"),
        "missing runs folder": (["--runs", str(tmp / "nope"), "--out", str(tmp / "o2")], "no results directory", tmp / "o2"),
        "malformed record": (["--runs", str(tmp / "broken"), "--out", str(tmp / "o3")], "cannot read", tmp / "o3"),
        "out is a file": (["--runs", str(runs), "--out", str(a_file)], "is a file", tmp / "o4"),
        "out holds other files": (["--runs", str(runs), "--out", str(foreign)], "not a repbench report", tmp / "o5"),
        "ablations not a folder": (["--runs", str(runs), "--out", str(tmp / "o6"), "--ablations", str(tmp / "nope")],
                                   "is not a folder", tmp / "o6"),
    }


@pytest.mark.parametrize("case", ["empty runs folder", "missing runs folder", "malformed record", "out is a file",
                                  "out holds other files", "ablations not a folder"])
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, case, cli, refused):
    args, fragment, out = _bad_cases(runs, tmp_path)[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    refused(cli("report", *args), fragment, out)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "keep me"
