import math

import pytest
from scipy import stats

from bench.report import aggregate, flatten, markdown


def _record(method, seed, top1, status="ok"):
    return {"config": {"suite": "s", "dataset": "d", "backbone": "b", "method": method, "recipe_name": "unified",
                       "seed": seed}, "status": status, "timing": {"train_s": 1.0}, "throughput": {},
            "metrics": {"knn": {"k": 20, "temperature": 0.07, "top1": top1}}}


def test_mean_and_t_interval_over_seeds():
    vals = [0.80, 0.82, 0.87]
    agg = aggregate(flatten([_record("a", i, v) for i, v in enumerate(vals)] + [_record("b", 0, 0.5, "collapsed")]))
    a = agg[agg.method == "a"].iloc[0]
    assert a["seeds"] == 3
    assert a["knn.top1.mean"] == pytest.approx(sum(vals) / 3)
    sd = stats.tstd(vals)
    assert a["knn.top1.ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    b = agg[agg.method == "b"].iloc[0]
    assert math.isnan(b["knn.top1.ci95"]) and b["flags"] == "1x collapsed"
    text = markdown(agg)
    assert "83.0 ±" in text and "collapsed" in text


def _paired(method, seed, knn, linear, backbone="b", status="ok"):
    rec = _record(method, seed, knn, status)
    rec["config"]["backbone"] = backbone
    rec["metrics"]["linear"] = {"top1": linear}
    if status == "diverged":
        rec["metrics"] = {}
    return rec


def test_vs_random_init_is_the_paired_t_interval_per_backbone():
    floor = [0.70, 0.75, 0.80]
    # Gains over the same seed's floor: knn +2, +3, +4 points (paired: the floor's spread cancels), linear +1, -1, +1.
    recs = [_paired("random", s, f, f) for s, f in enumerate(floor)]
    recs += [_paired("m", s, f + 0.02 + 0.01 * s, f + (-0.01 if s == 1 else 0.01)) for s, f in enumerate(floor)]
    # A ViT method is paired with the random ViT's records (0.5 on every seed), never the convnet's.
    recs += [_paired("random", s, 0.5, 0.5, backbone="vit") for s in range(3)]
    recs += [_paired("v", s, 0.52, 0.53 + 0.01 * s, backbone="vit") for s in range(3)]
    agg = aggregate(flatten(recs)).set_index("method")
    half = stats.t.ppf(0.975, 2) * stats.tstd([2, 3, 4]) / math.sqrt(3)
    assert agg.loc["m", "vs_random.knn.top1.gain"] == pytest.approx(3.0)
    assert agg.loc["m", "vs_random.knn.top1.lo"] == pytest.approx(3.0 - half)
    assert agg.loc["m", "vs random init"] == f"knn +3.0 [{3 - half:+.1f}, {3 + half:+.1f}], linear +0.3 [-2.5, +3.2]: no"
    assert agg.loc["v", "vs_random.knn.top1.gain"] == pytest.approx(2.0)
    assert agg.loc["v", "vs random init"] == "knn +2.0 [+2.0, +2.0], linear +4.0 [+1.5, +6.5]: yes"
    assert agg.loc["random", "vs random init"].isna().all()  # the floors themselves (convnet and ViT)
    assert "| knn +3.0 [" in markdown(agg.reset_index())


def test_vs_random_init_yes_only_when_every_seed_is_scored():
    recs = [_paired("random", s, 0.70, 0.70) for s in range(3)]
    recs += [_paired("m", s, 0.72 + 0.01 * s, 0.73 + 0.01 * s) for s in range(3)]
    recs += [_paired("d", s, 0.72 + 0.01 * s, 0.73 + 0.01 * s, status="diverged" if s == 2 else "ok") for s in range(3)]
    agg = aggregate(flatten(recs)).set_index("method")
    assert agg.loc["m", "vs random init"] == "knn +3.0 [+0.5, +5.5], linear +4.0 [+1.5, +6.5]: yes"
    assert agg.loc["d", "vs random init"] == "knn +2.5 [-3.9, +8.9] (2/3 scored), linear +3.5 [-2.9, +9.9] (2/3 scored): no"


def test_no_vs_random_column_without_floor_records():
    agg = aggregate(flatten([_record("a", s, 0.8) for s in range(2)]))
    assert "vs random init" not in agg and "vs random init" not in markdown(agg)
