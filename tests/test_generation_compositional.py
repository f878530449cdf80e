"""Compositional text-to-image on shapes (bench/generation/compositional.py): recorded by decode, and a scorer that
gives a planted perfect generator full marks and a prompt-blind one chance."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from bench.cli import main
from bench.data.captions import BACKGROUNDS, COLOURS, HELD_OUT, SHAPE_TEMPLATES, SHAPES, render_shapes, shapes
from bench.generation import compositional
from bench.generation.shape_classifier import shape_classifier

TINY = ["--method", "clip", "--dataset", "shapes", "--per-class", "10", "--test-per-class", "5", "--epochs", "1",
        "--batch-size", "50", "--protocols", "", "--no-progress"]
SAMPLES = 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A temp $REPBENCH_CACHE for the module: the shape classifier trains once here (about 20 s), then is reused."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def data():
    return shapes()


@pytest.fixture(scope="module")
def clf(cache, data):
    return shape_classifier(data, None, log=lambda _: None)


def test_decode_records_compositional_scores(cache, cli, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([*map(str, ["run", *TINY, "--out", tmp_path])]) == 0
    run = next(tmp_path.glob("runs/adhoc/*"))
    code, out, err = cli("decode", "--run", run, "--epochs", "1", "--test-per-class", "3", "--samples", SAMPLES,
                         "--table", tmp_path / "table", "--figures", tmp_path / "fig")
    assert code == 0, err
    table = (tmp_path / "table" / "compositional-table.md").read_text()
    assert "| held-out: blue circle | 0 |" in table and "| seen pairs (mean of 30, reference) | 0 |" in table
    assert len((tmp_path / "table" / "compositional.csv").read_text().splitlines()) == 1 + 6 + 4
    assert (tmp_path / "fig" / "generation-compositional.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "compositional: held-out pairs shape" in out
    comp = json.loads((run / "generation.json").read_text())["compositional"]
    assert set(comp["held_out"]["per_pair"]) == {f"{c} {s}" for s, c in HELD_OUT}
    assert comp["seen"]["pairs"] == len(SHAPES) * len(COLOURS) - len(HELD_OUT)
    assert comp["chance"] == pytest.approx({"shape": 1 / 6, "colour": 1 / 6, "both": 1 / 36})
    assert comp["samples_per_prompt"] == SAMPLES and comp["prompt_template"] == "a {colour} {shape}."
    for part in ("held_out", "seen"):
        for scores in (comp[part], *comp[part]["per_pair"].values()):
            assert all(0 <= scores[k] <= 1 for k in ("shape", "colour", "both"))
            assert scores["both"] <= min(scores["shape"], scores["colour"])
    real = comp["real_held_out"]
    assert real["n"] == 5 * len(SHAPES) and real["colour"] == 1 and real["shape"] >= 0.8
    assert 0.9 <= comp["classifier"]["test_top1"] <= 1


def _real(data, s: int, c: int, n: int) -> torch.Tensor:
    """n real images of the pair: from the test split for held-out pairs, the training split for seen ones."""
    for split, x in (("test", data.test_x), ("train", data.train_x)):
        attrs = data.extras["attributes"][split]
        idx = ((attrs["shape"] == s) & (attrs["colour"] == c)).nonzero().flatten()
        if len(idx):
            return x[idx[:n]].float() / 255
    raise AssertionError(f"no image of pair {s, c}")


def test_planted_perfect_generator_scores_near_one(data, clf):
    scored = compositional.score_generator(lambda s, c, n, _: _real(data, s, c, n), clf, 20)
    for part in ("held_out", "seen"):
        assert scored[part]["shape"] >= 0.9 and scored[part]["colour"] >= 0.99 and scored[part]["both"] >= 0.9, part


@pytest.mark.parametrize("image", ["one real image", "grey"])
def test_prompt_blind_generator_scores_chance(data, clf, image):
    same = data.train_x[:1].float() / 255 if image == "one real image" else torch.full((1, 3, 32, 32), 0.5)
    scored = compositional.score_generator(lambda s, c, n, _: same.expand(n, -1, -1, -1), clf, 5)
    for part in ("held_out", "seen"):  # every shape and every colour is a target equally often in each part
        assert scored[part]["shape"] == pytest.approx(1 / 6)
        assert scored[part]["colour"] == pytest.approx(1 / 6 if image == "one real image" else 0)
        assert scored[part]["both"] <= 1 / 6


@pytest.mark.parametrize("background", BACKGROUNDS)
@pytest.mark.parametrize("colour", COLOURS)
def test_colour_of_finds_the_foreground_colour_sharp_and_blurred(colour, background):
    every = np.arange(12)  # each shape twice, both sizes, all positions
    images = render_shapes(every % len(SHAPES), np.full(12, COLOURS.index(colour)), every % 2, every % 3,
                           np.full(12, BACKGROUNDS.index(background)), np.random.default_rng(0)).float() / 255
    for view in (images, gaussian_blur(images, 7, 2.0)):
        assert (compositional.colour_of(view) == COLOURS.index(colour)).all()


def test_prompt_is_the_datasets_own_caption_template():
    assert compositional.PROMPT in SHAPE_TEMPLATES
    assert compositional.prompt(SHAPES.index("ring"), COLOURS.index("purple")) == "a purple ring."
