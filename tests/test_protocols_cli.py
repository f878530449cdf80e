"""`repbench eval-features`: the output contract, and every bad input is one line, exit 2, no output file."""

import json

import numpy as np
import pytest


def features(n, d=8, c=4, seed=0):
    """Gaussian blobs around the same class centres for every seed (so train and test match)."""
    centers = np.random.default_rng(0).normal(size=(c, d)) * 3
    rng = np.random.default_rng(seed + 1)
    y = np.arange(n) % c
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


@pytest.fixture
def npz(tmp_path):
    """Write an .npz from keyword arrays; returns its path."""
    count = iter(range(100))

    def make(**arrays):
        path = tmp_path / f"f{next(count)}.npz"
        np.savez(path, **arrays)
        return path

    return make


@pytest.fixture
def good(npz):
    tx, ty = features(240)
    sx, sy = features(120, seed=1)
    return npz(x=tx, y=ty), npz(x=sx, y=sy)


def test_all_protocols_write_fixed_keys_as_fractions(cli, good, tmp_path):
    out = tmp_path / "m.json"
    code, stdout, err = cli("eval-features", "--train", good[0], "--test", good[1], "--out", out)
    assert code == 0, err
    m = json.loads(out.read_text())
    assert m["knn"]["k"] == 20 and m["knn"]["temperature"] == 0.07
    assert {"knn", "knn_k200", "linear", "kmeans", "fewshot_1shot", "fewshot_10pct"} <= set(m)
    for key, field in [("knn", "top1"), ("knn_k200", "top1"), ("linear", "top1"), ("kmeans", "nmi"),
                       ("kmeans", "ari"), ("kmeans", "acc"), ("fewshot_5shot", "top1")]:
        assert 0.0 <= m[key][field] <= 1.0
    assert m["linear"]["regularisation"] > 0
    assert m["knn"]["top5"] is None  # 4 classes: top-5 is undefined, stored as null
    assert m["linear"]["top1"] > 0.9  # well separated blobs
    assert not list(tmp_path.glob(".m.json.*"))  # no temp file left behind


def test_prints_json_without_out(cli, good):
    code, stdout, _ = cli("eval-features", "--train", good[0], "--test", good[1], "--protocols", "knn")
    assert code == 0
    assert json.loads(stdout)["knn"]["n_test"] == 120


def bad_cases(npz, tmp_path):
    tx, ty = features(60)
    sx, sy = features(30, seed=1)
    nan_x = tx.copy()
    nan_x[3, 2] = np.nan
    inf_x = sx.copy()
    inf_x[0, 0] = np.inf
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    good_train, good_test = npz(x=tx, y=ty), npz(x=sx, y=sy)
    return [
        ([good_train, npz(x=sx[:, :5], y=sy)], [], "dimensions differ"),
        ([npz(x=nan_x, y=ty), good_test], [], "NaN or inf"),
        ([good_train, npz(x=inf_x, y=sy)], [], "NaN or inf"),
        ([npz(x=tx, y=ty + 1), good_test], [], "0..C-1"),
        ([good_train, npz(x=sx, y=sy + 7)], [], "0..C-1"),
        ([npz(x=tx, y=-ty), good_test], [], "0..C-1"),
        ([npz(x=tx, y=ty.astype(np.float32)), good_test], [], "must be integers"),
        ([npz(features=tx, y=ty), good_test], [], "no array 'x'"),
        ([good_train, npz(x=sx)], [], "no array 'y'"),
        ([text, good_test], [], "not an .npz archive"),
        ([tmp_path / "missing.npz", good_test], [], "no such file"),
        ([good_train, good_test], ["--protocols", "knn,linaer"], "Did you mean 'linear'"),
        ([good_train, good_test], ["--protocols", ","], "--protocols is empty"),
        ([npz(x=tx[:0], y=ty[:0]), good_test], [], "empty"),
        ([good_train, npz(x=sx[:0], y=sy[:0])], [], "empty"),
        ([npz(x=tx, y=ty[:-1]), good_test], [], "one label per row"),
        ([npz(x=tx[:, :, None], y=ty), good_test], [], "2-D"),
        ([good_train, good_test], ["--seed", "-1"], "below the minimum"),
    ]


def test_bad_inputs_one_line_exit_2_no_output(cli, npz, tmp_path):
    for (train, test), extra, fragment in bad_cases(npz, tmp_path):
        out = tmp_path / "never.json"
        code, stdout, err = cli("eval-features", "--train", train, "--test", test, "--out", out, *extra)
        assert code == 2, (fragment, err)
        assert fragment in err, (fragment, err)
        assert err.count("\n") == 1 and err.startswith("repbench: error:"), err
        assert not out.exists()


def test_out_is_a_directory(cli, good, tmp_path):
    code, _, err = cli("eval-features", "--train", good[0], "--test", good[1], "--out", tmp_path)
    assert code == 2 and "is a directory" in err
