"""`repbench report` shows the generation protocol: a run page's "Generation" section (generation.json's metrics and a
picture drawn at report time) and the index's table across decoded runs; a run whose decoder is gone gets a note."""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.generation.decoder import DECODER_FILE
from bench.generation.pipeline import RESULT_FILE
from bench.site.build import build
from bench.site.generation import COLUMNS, DETAILS, field, read_result, section

TINY = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50",
        "--protocols", "", "--no-progress"]
DECODE = ["--epochs", "2", "--test-per-class", "3", "--samples", "4"]
PNG = b"\x89PNG\r\n\x1a\n"


def _quiet(argv: list) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A decoded CLIP run (decoder and prior), a copy of it without decoder.pt, and an undecoded raw-pixels run."""
    root = tmp_path_factory.mktemp("repgen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPBENCH_CACHE", str(root / "cache"))
        for method in ("clip", "raw"):
            assert _quiet(["run", "--method", method, *TINY, "--out", root]) == 0
        clip = next((root / "runs").glob("*/clip-*"))
        assert _quiet(["decode", "--run", clip, *DECODE]) == 0
    broken = clip.with_name(clip.name + "-nodecoder")
    shutil.copytree(clip, broken)
    (broken / DECODER_FILE).unlink()
    return root / "runs"


def _pages(site: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in (site / "runs").glob("*.html")}


def _generation(page: str) -> str:
    """The page's Generation section: from its heading to the next one."""
    return page.split("<h2>Generation</h2>", 1)[1].split("<h2>", 1)[0]


def test_run_pages_and_index_show_generation(runs, tmp_path):
    site = tmp_path / "site"
    notes: list[str] = []
    build(runs, site, [], log=notes.append)
    pages = _pages(site)
    good = next(p for name, p in pages.items() if "clip" in name and "nodecoder" not in name)
    broken = next(p for name, p in pages.items() if "nodecoder" in name)
    assert not any("<h2>Generation</h2>" in p for name, p in pages.items() if "raw" in name)

    decoded = next(d for d in runs.glob("*/clip-*") if (d / DECODER_FILE).is_file())
    result = json.loads((decoded / RESULT_FILE).read_text())
    section = _generation(good)
    for label, keys in COLUMNS + DETAILS:
        value = field(result, keys)
        if isinstance(value, float):
            assert f"<td>{html.escape(label)}</td><td>{value:.6g}</td>" in section, label
    assert field(result, ("text_to_image", "top1")) is not None
    img = re.search(r'<img src="\.\./([^"]+)" alt="generation">', section)
    assert img and (site / img.group(1)).read_bytes()[:8] == PNG

    lost = _generation(broken)
    assert "<img" not in lost and f"no {DECODER_FILE}" in lost and "repbench decode --run" in lost
    assert f"no {DECODER_FILE}" in " ".join(notes)

    index = (site / "index.html").read_text()
    table = index.split("<h2>Generation</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    assert len(rows) == 2  # the decoded run and its copy; raw pixels has no generation.json
    mse, top1 = f"{result['reconstruction']['mse']:.4f}", f"{100 * result['text_to_image']['top1']:.1f}"
    assert all(">clip</a>" in r and f">{mse}<" in r and f">{top1}<" in r for r in rows)
    assert "<th>text-to-image top-1 %</th>" in table
    assert {re.search(r'href="([^"]+)"', r).group(1) for r in rows} <= {f"runs/{n}.html" for n in pages}


def test_no_drawing_keeps_the_metrics(runs, tmp_path):
    site = tmp_path / "site"
    build(runs, site, [], reconstructions=False, log=lambda _: None)
    good = next(p for name, p in _pages(site).items() if "clip" in name and "nodecoder" not in name)
    section = _generation(good)
    assert "pixel MSE" in section and "<img" not in section
    assert not list((site / "runs").glob("*-generation.png"))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unreadable_generation_json_is_a_note(tmp_path, text):
    (tmp_path / RESULT_FILE).write_text(text)
    result, note = read_result(tmp_path)
    assert result is None and RESULT_FILE in note and "repbench decode --run" in note
    assert note in html.unescape(section(result, "", note))


def test_compositional_summary_is_shown():
    result = {"reconstruction": {"mse": 0.25}, "compositional": {"held_out": {"shape": 0.125, "colour": 0.5, "both": 0.0625},
                                                                  "seen": {"shape": 0.75, "colour": 0.875, "both": 0.625}}}
    body = section(result, "", "")
    for split, k, v in (("held_out", "both", 0.0625), ("seen", "colour", 0.875)):
        assert f"<td>compositional {split} pairs: {k}</td><td>{v:.6g}</td>" in body
    assert "<img" not in body and "decoded top-1" not in body  # absent keys are left out, not shown as "-"
