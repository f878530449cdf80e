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
