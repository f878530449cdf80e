"""bench/stats.py: t and BCa intervals against scipy, paired differences, expected max against brute force."""

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


def test_three_seeds_get_a_t_interval_not_a_bootstrap_capped_at_their_range():
    v = [0.70, 0.72, 0.75]
    lo, hi, kind = stats.mean_interval(v)
    assert kind == "t" and (hi - lo) / 2 == pytest.approx(0.0625, abs=5e-4)  # the issue's +-.063
    assert stats.t_halfwidth(v) == pytest.approx(sps.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3))
    assert stats.bootstrap_ci(v) == pytest.approx((0.70, 0.75), abs=1e-9)  # what the old tables showed
    s = stats.summarise([0.70, float("nan"), 0.72, 0.75])
    assert (s["n"], s["runs"], s["ci"]) == (3, 4, "t") and (s["ci_lo"], s["ci_hi"]) == pytest.approx((lo, hi))


def test_bca_only_from_ten_seeds():
    v = np.random.default_rng(1).normal(0.7, 0.02, size=stats.MIN_BCA_SEEDS)
    lo, hi, kind = stats.mean_interval(v)
    assert kind == "BCa" and (lo, hi) == stats.bootstrap_ci(v)
    assert stats.mean_interval(v[:-1])[2] == "t"


def test_paired_difference_resolves_an_offset_that_unpaired_cannot():
    a = {0: 0.70, 1: 0.75, 2: 0.80}
    b = {s: x - off for (s, x), off in zip(a.items(), (0.010, 0.011, 0.012), strict=True)}
    paired = stats.difference(a, b)
    assert paired.kind == "paired" and paired.n == 3 and paired.diff == pytest.approx(0.011)
    assert paired.lo > 0 and paired.verdict == "resolved"
    unpaired = stats.difference(list(a.values()), list(b.values()))  # seeds lost: never paired
    assert unpaired.kind == "Welch" and unpaired.diff == pytest.approx(0.011) and unpaired.verdict == "n.s."
    ref = sps.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval()
    assert (unpaired.lo, unpaired.hi) == pytest.approx((ref.low, ref.high))


def test_difference_pairs_only_shared_scored_seeds_and_welch_only_without_shared_ones():
    a = {0: 0.70, 1: 0.72, 2: float("nan"), 3: 0.74}  # seed 2 diverged in a
    b = {0: 0.60, 1: 0.63, 2: 0.61, 3: 0.66}
    d = stats.difference(a, b)
    assert (d.kind, d.n) == ("paired", 3) and d.diff == pytest.approx(np.mean([0.10, 0.09, 0.08]))
    apart = stats.difference({0: 0.7, 1: 0.72}, {5: 0.6, 6: 0.63})
    assert apart.kind == "Welch" and apart.n == 4
    one = stats.difference({0: 0.7, 1: 0.72}, {1: 0.6, 6: 0.63})
    assert (one.kind, one.n, one.verdict) == ("paired", 1, "-") and one.diff == pytest.approx(0.12)
    assert stats.difference({}, {0: 0.5}).kind == "-"


def test_cell_differences_pair_by_seed_within_a_method():
    df = pd.DataFrame({"method": ["m"] * 6, "cell": ["x"] * 3 + ["y"] * 3, "seed": [0, 1, 2, 2, 1, 0],
                       "value": [0.50, 0.60, 0.70, 0.71, 0.61, 0.51], "status": ["ok"] * 6})
    t = stats.cell_differences(df)
    assert len(t) == 1 and (t.iloc[0]["a"], t.iloc[0]["b"]) == ("y", "x")
    assert t.iloc[0]["diff"] == pytest.approx(0.01) and t.iloc[0]["verdict"] == "resolved"
    assert "+1.0 [+1.0, +1.0] resolved" in stats.differences_markdown(t)


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
    seeded = lambda *v: dict(enumerate(v))  # noqa: E731
    values = {("a", "paper"): seeded(0.60, 0.61, 0.62), ("b", "paper"): seeded(0.70, 0.71, 0.72),
              ("a", "unified"): seeded(0.66, 0.67, 0.68), ("b", "unified"): seeded(0.70, 0.71, 0.72),
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
    assert row["paper_gap_resolved"] and (row["gap_paper_kind"], row["gap_paper_n"]) == ("paired", 3)
    assert row["gap_tuned_kind"] == "Welch"  # lists carry no seeds
    md = stats.method_vs_engineering_markdown(t)
    assert "+10.0 [+10.0, +10.0] resolved" in md and "60%" in md and "(Welch)" in md
    noisy = stats.method_vs_engineering({("a", "paper"): seeded(0.60, 0.70, 0.65), ("b", "paper"): seeded(0.66, 0.62, 0.70),
                                         ("a", "unified"): seeded(0.6, 0.6, 0.6), ("b", "unified"): seeded(0.7, 0.7, 0.7)})
    assert not noisy.iloc[0]["paper_gap_resolved"] and "n.s." in stats.method_vs_engineering_markdown(noisy)


def test_cell_table_counts_seeds_and_flags():
    df = pd.DataFrame({"method": ["m"] * 3 + ["n"] * 3, "cell": ["x"] * 3 + ["y"] * 3,
                       "value": [0.5, 0.6, 0.7, 0.1, 0.1, float("nan")],
                       "status": ["ok", "ok", "ok", "collapsed", "collapsed", "diverged"]})
    t = stats.cell_table(df, ["method", "cell"]).set_index("method")
    assert t.loc["m", "n"] == 3 and t.loc["m", "mean"] == pytest.approx(0.6) and t.loc["m", "ci"] == "t"
    assert t.loc["m", "ci_hi"] - 0.6 == pytest.approx(sps.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert t.loc["n", "n"] == 2 and t.loc["n", "seeds"] == 3
    assert "2/3 collapsed" in t.loc["n", "flags"] and "1/3 diverged" in t.loc["n", "flags"]


def test_plots_are_png(tmp_path):
    stats.plot_budget_curves({"a": stats.budget_curve([0.2, 0.5, 0.4])}, tmp_path / "b.png")
    table = pd.DataFrame({"label": ["x", "y"], "mean": [0.5, 0.6], "ci_lo": [0.4, float("nan")], "ci_hi": [0.6, float("nan")]})
    stats.plot_cells(table, "label", tmp_path / "c.png")
    for name in ("b.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_search_summary_shows_t_intervals_and_is_remade_from_its_csvs(tmp_path):
    from types import SimpleNamespace

    from bench.experiments import search_report
    from bench.experiments.scales import SCALES

    suite = SimpleNamespace(name="s", scale=SCALES["smoke"], val_fraction=0.2)
    tuned = {1000: 0.70, 1001: 0.72, 1002: 0.75, 1003: float("nan")}  # seed 1003 diverged
    t = stats.summarise(list(tuned.values()))
    row = {"method": "m", "study": "m-s", "trials": 2, "complete": 2, "pruned": 0, "fail": 0, "val_paper": 0.7,
           "val_best": 0.72, "best_params": {}, "test_tuned_n": t["n"], "test_tuned_runs": t["runs"],
           "test_tuned_mean": t["mean"], "test_tuned_lo": t["ci_lo"], "test_tuned_hi": t["ci_hi"], "test_tuned_ci": t["ci"],
           "tuned": tuned, "fanova": "-", "ped_anova": "-", "fanova_top3": "-", "ped_anova_top3": "-",
           "curve": stats.budget_curve([0.7, 0.72])}
    search_report.write_summary([row], suite, 2, tmp_path, "cmd")
    first = (tmp_path / "summary.md").read_text()
    assert "| 3/4 " in first and "[66.1, 78.6]" in first and "bootstrap" in first  # 72.3 +- 6.3: the t-interval
    assert pd.read_csv(tmp_path / "tuned.csv")["seed"].tolist() == [1000, 1001, 1002, 1003]
    assert search_report.rewrite_summary(tmp_path, suite, "cmd") == first
    assert (tmp_path / "summary.md").read_text() == first
