"""`repbench plot reconstructions`: a PNG from a real 1-epoch digits run, and one clear line for every bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bench.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1-epoch digits runs: mae, a denoising autoencoder, and supervised (no decoder)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: 2 OpenMP threads on 2 busy cores only spin-wait
    out = tmp_path_factory.mktemp("plot_runs")
    common = ["--dataset", "digits", "--epochs", "1", "--batch-size", "128", "--out", str(out), "--protocols", "",
              "--no-progress"]
    for args in (["--method", "mae"], ["--method", "autoencoder", "--method-arg", "noise=mask"],
                 ["--method", "supervised"]):
        assert main(["run", *args, *common]) == 0
    yield {d.name.split("-")[0]: d for d in (out / "runs" / "adhoc").iterdir()}
    torch.set_num_threads(before)


@pytest.mark.parametrize("name,rows", [("mae", 5), ("autoencoder", 4)])
def test_plot_writes_a_png_grid(runs, name, rows, tmp_path, cli):
    from matplotlib.image import imread

    out = tmp_path / "figs" / f"{name}.png"
    code, stdout, err = cli("plot", "reconstructions", "--run", runs[name], "--out", out, "--images", "6", "--steps", "5")
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(out) in stdout
    img = imread(out)
    # rows x 6 columns of thumbnails: taller for more rows, and wider than tall
    assert img.shape[1] > img.shape[0] > 60 * rows
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the atomic write left no temp file


def test_plot_is_deterministic_for_a_seed(runs, tmp_path, cli):
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    for path, seed in ((a, 0), (b, 0), (c, 1)):
        assert cli("plot", "reconstructions", "--run", runs["mae"], "--out", path, "--seed", seed)[0] == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()  # the seed picks MAE's masks


def bad_inputs(runs, tmp):
    """(case, --run, --out) for each kind of bad input."""
    no_ckpt = tmp / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(runs["mae"] / "record.json", no_ckpt / "record.json")
    broken = tmp / "broken"
    shutil.copytree(runs["mae"], broken)
    (broken / "record.json").write_text("{not json")
    no_config = tmp / "no_config"
    shutil.copytree(runs["mae"], no_config)
    (no_config / "record.json").write_text(json.dumps({"metrics": {}}))
    a_file = tmp / "a_file"
    a_file.write_text("x")
    ok_out = tmp / "out.png"
    return {
        "missing run dir": (tmp / "nope", ok_out, "does not exist"),
        "not a run dir": (tmp, ok_out, "no record.json"),
        "no checkpoint": (no_ckpt, ok_out, "no checkpoint.pt"),
        "no decoder": (runs["supervised"], ok_out, "no decoder"),
        "corrupt record": (broken, ok_out, "cannot read"),
        "record without config": (no_config, ok_out, "no run config"),
        "unwritable out": (runs["mae"], a_file / "x.png", "not a writable directory"),
        "out not a png": (runs["mae"], tmp / "out.jpg", ".png"),
        "out is a directory": (runs["mae"], tmp / "dir.png", "is a directory"),
    }


CASES = ["missing run dir", "not a run dir", "no checkpoint", "no decoder", "corrupt record", "record without config",
         "unwritable out", "out not a png", "out is a directory"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(runs, case, tmp_path, cli):
    (tmp_path / "dir.png").mkdir()
    run_dir, out, expected = bad_inputs(runs, tmp_path)[case]
    code, stdout, err = cli("plot", "reconstructions", "--run", run_dir, "--out", out)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("repbench: error: ") and expected in err, err
    assert not (tmp_path / "out.png").exists() and not out.is_file()


def test_unknown_kind_and_missing_flags_are_one_line(cli, tmp_path):
    for args in (("plot", "losses", "--run", tmp_path, "--out", tmp_path / "x.png"), ("plot", "reconstructions")):
        code, _, err = cli(*args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("repbench: error: ")
