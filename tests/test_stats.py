"""bench/stats.py: bootstrap intervals against scipy, expected max against brute force, the gap table."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import stats


def test_bootstrap_ci_matches_scipy():
    v = np.random.default_rng(3).normal(0.8, 0.02, size=7)
    ref = sps.bootstrap((v,), np.mean, confidence_level=0.95, n_resamples=9999, rng=np.random.default_rng(0))
    lo, hi = stats.bootstrap_ci(v)
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert lo < v.mean() < hi


def test_bootstrap_ci_edge_cases():
    assert all(math.isnan(x) for x in stats.bootstrap_ci([0.5]))
    assert stats.bootstrap_ci([0.7, 0.7, 0.7]) == (0.7, 0.7)
    # Non-finite seeds are dropped, not propagated.
    assert stats.summarise([0.5, float("nan"), 0.7, 0.6])["n"] == 3


def test_gap_matches_scipy_two_sample_bootstrap():
    a, b = np.array([0.81, 0.83, 0.80, 0.84]), np.array([0.70, 0.75, 0.72])
    d, lo, hi = stats.gap(a, b)
    ref = sps.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), vectorized=True,
                        method="percentile", n_resamples=9999, rng=np.random.default_rng(0))
    assert d == pytest.approx(a.mean() - b.mean())
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))


def brute_force_expected_max(values, n):
    return np.mean([max(draw) for draw in itertools.product(values, repeat=n)])


@pytest.mark.parametrize("values", [[0.3, 0.9, 0.5, 0.7], [0.5, 0.5, 0.2], [0.1, 0.4, 0.4, 0.8, 0.6]])
def test_expected_max_matches_brute_force(values):
    for n in range(1, 5):
        assert stats.expected_max(values, n) == pytest.approx(brute_force_expected_max(values, n))


def test_budget_curve_shape_and_std():
    values = [0.3, 0.9, 0.5, 0.7]
    c = stats.budget_curve(values, n_max=6)
    assert c["trials"].tolist() == [1, 2, 3, 4, 5, 6]
    assert c["expected_max"].iloc[0] == pytest.approx(np.mean(values))
    assert (np.diff(c["expected_max"]) > 0).all() and c["expected_max"].iloc[-1] < max(values)
    draws = [max(d) for d in itertools.product(values, repeat=2)]
    assert c["std"].iloc[1] == pytest.approx(np.std(draws))


def test_method_vs_engineering_orients_and_explains():
    values = {("a", "paper"): [0.60, 0.61, 0.62], ("b", "paper"): [0.70, 0.71, 0.72],
              ("a", "unified"): [0.66, 0.67, 0.68], ("b", "unified"): [0.70, 0.71, 0.72],
              ("a", "tuned"): [0.75, 0.75, 0.75], ("b", "tuned"): [0.74, 0.74, 0.74]}
    t = stats.method_vs_engineering(values)
    assert len(t) == 1
    row = t.iloc[0]
    assert (row["method_a"], row["method_b"]) == ("b", "a")  # b wins under the paper recipes
    assert row["gap_paper"] == pytest.approx(0.10)
    assert row["gap_unified"] == pytest.approx(0.04)
    assert row["gap_tuned"] == pytest.approx(-0.01)
    assert row["recipe_share"] == pytest.approx(0.6)
    assert row["gap_paper_lo"] <= row["gap_paper"] <= row["gap_paper_hi"]
    assert row["paper_gap_resolved"]
    md = stats.method_vs_engineering_markdown(t)
    assert "+10.0" in md and "60%" in md
    noisy = stats.method_vs_engineering({("a", "paper"): [0.60, 0.70, 0.65], ("b", "paper"): [0.66, 0.62, 0.70],
                                         ("a", "unified"): [0.6] * 3, ("b", "unified"): [0.7] * 3})
    assert not noisy.iloc[0]["paper_gap_resolved"] and "n.s." in stats.method_vs_engineering_markdown(noisy)


def test_cell_table_counts_seeds_and_flags():
    df = pd.DataFrame({"method": ["m"] * 3 + ["n"] * 3, "cell": ["x"] * 3 + ["y"] * 3,
                       "value": [0.5, 0.6, 0.7, 0.1, 0.1, float("nan")],
                       "status": ["ok", "ok", "ok", "collapsed", "collapsed", "diverged"]})
    t = stats.cell_table(df, ["method", "cell"]).set_index("method")
    assert t.loc["m", "n"] == 3 and t.loc["m", "mean"] == pytest.approx(0.6)
    assert t.loc["n", "n"] == 2 and t.loc["n", "seeds"] == 3
    assert "2/3 collapsed" in t.loc["n", "flags"] and "1/3 diverged" in t.loc["n", "flags"]


def test_plots_are_png(tmp_path):
    stats.plot_budget_curves({"a": stats.budget_curve([0.2, 0.5, 0.4])}, tmp_path / "b.png")
    table = pd.DataFrame({"label": ["x", "y"], "mean": [0.5, 0.6], "ci_lo": [0.4, float("nan")], "ci_hi": [0.6, float("nan")]})
    stats.plot_cells(table, "label", tmp_path / "c.png")
    for name in ("b.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))
