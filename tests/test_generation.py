"""Generation from representations (bench/generation/): decode, score, generate from text, resume, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.generation.decoder import DECODER_FILE, DecoderSettings, train_decoder
from bench.generation.prior import PRIOR_FILE
from bench.store import load_checkpoint

TINY = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50",
        "--protocols", "", "--no-progress"]
DECODE = ["--epochs", "2", "--test-per-class", "3", "--samples", "4"]


def _quiet(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny finished runs on digits (CLIP, SimCLR, raw pixels), and the fixed classifier's cache in a temp folder."""
    root = tmp_path_factory.mktemp("gen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPBENCH_CACHE", str(root / "cache"))
        found = {}
        for method in ("clip", "simclr", "raw"):
            assert _quiet(["run", "--method", method, *TINY, "--out", root / method]) == 0
            found[method] = next((root / method).glob("runs/adhoc/*"))
        yield found


@pytest.fixture
def cache(runs, monkeypatch, tmp_path):
    monkeypatch.setenv("REPBENCH_CACHE", str(next(iter(runs.values())).parents[3] / "cache"))


def test_decode_scores_and_generate_draws(runs, cache, cli, tmp_path):
    clip = tmp_path / "clip"
    shutil.copytree(runs["clip"], clip)
    code, out, err = cli("decode", "--run", clip, "--run", runs["raw"], *DECODE, "--table", tmp_path / "table",
                         "--figures", tmp_path / "fig")
    assert code == 0, err
    assert "decoded top-1" in out and "text-to-image top-1" in out
    result = json.loads((clip / "generation.json").read_text())
    rec = result["reconstruction"]
    assert 0 <= rec["mse"] < 1 and 0 <= rec["decoded_top1"] <= 1 and rec["n_test"] == 30
    assert rec["decoder"]["epochs"] == 2 and 0 < rec["classifier"]["test_top1"] <= 1
    t2i = result["text_to_image"]
    assert 0 <= t2i["top1"] <= 1 and t2i["samples_per_prompt"] == 4 and len(t2i["prompts"]) == 10
    assert "text_to_image" not in json.loads((runs["raw"] / "generation.json").read_text())
    assert load_checkpoint(clip / DECODER_FILE)["epoch"] == 2 and load_checkpoint(clip / PRIOR_FILE)["epoch"] > 0
    table = (tmp_path / "table" / "table.md").read_text()
    assert "| clip | convnet | 0 | 30 |" in table and "| raw |" in table
    for name in ("generation-reconstructions.png", "generation-text-to-image.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = tmp_path / "grid.png"
    code, out, err = cli("generate", "--run", clip, "--text", "a photo of a 3", "--n", "6", "--out", png)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Killed(Exception):
    pass


def test_decoder_resumes_to_the_same_weights(tmp_path):
    torch.manual_seed(0)
    feats, images = torch.randn(64, 5), torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    settings = DecoderSettings(epochs=3, batch_size=16)
    whole = train_decoder(tmp_path / "a.pt", feats, images, (0.5,), (0.3,), settings, log=lambda _: None)

    def kill_after_first(line: str) -> None:
        if line.startswith("decoder epoch 1/"):
            raise _Killed

    with pytest.raises(_Killed):
        train_decoder(tmp_path / "b.pt", feats, images, (0.5,), (0.3,), settings, log=kill_after_first)
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 1
    lines: list[str] = []
    resumed = train_decoder(tmp_path / "b.pt", feats, images, (0.5,), (0.3,), settings, log=lines.append)
    assert lines[0].startswith("resuming") and len(lines) == 3
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _no_checkpoint(runs, d: Path) -> Path:
    shutil.copytree(runs["simclr"], d / "run")
    (d / "run" / "checkpoint.pt").unlink()
    return d / "run"


def _fresh_clip(runs, d: Path) -> Path:
    shutil.copytree(runs["clip"], d / "run")
    return d / "run"


BAD = {
    "decode-no-checkpoint": (lambda r, d: ["decode", "--run", _no_checkpoint(r, d), "--table", d / "out"],
                             "has no checkpoint.pt"),
    "decode-missing-run": (lambda r, d: ["decode", "--run", d / "nope", "--table", d / "out"], "does not exist"),
    "generate-not-clip": (lambda r, d: ["generate", "--run", r["simclr"], "--text", "a 3", "--out", d / "out" / "g.png"],
                          "without a text encoder"),
    "generate-empty-prompt": (lambda r, d: ["generate", "--run", r["clip"], "--text", "  ", "--out", d / "out" / "g.png"],
                              "--text is empty"),
    "generate-n-0": (lambda r, d: ["generate", "--run", r["clip"], "--text", "a 3", "--n", "0", "--out", d / "out" / "g.png"],
                     "below the minimum 1"),
    "generate-no-decoder": (lambda r, d: ["generate", "--run", _fresh_clip(r, d), "--text", "a 3", "--out",
                                          d / "out" / "g.png"], "no decoder.pt"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(name, runs, cache, cli, refused, tmp_path):
    make, fragment = BAD[name]
    argv = make(runs, tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    refused(cli(*argv), fragment, tmp_path / "out")
    assert sorted(p for p in tmp_path.rglob("*")) == before
