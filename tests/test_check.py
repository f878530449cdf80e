"""`repbench check`: tolerances, the comparison, --update, and the committed baseline's coverage."""

import json

import pytest

import methods
import protocols
from bench.config import RunConfig
from bench.experiments import SUITES
from bench.experiments.check import (
    DEFAULT_BASELINE,
    TOLERANCES,
    Tolerance,
    compare,
    flat_metrics,
    label,
    load_baseline,
    tolerance_for,
)


def test_tolerance_arithmetic():
    t = Tolerance(abs=0.01)
    assert t.allows(0.90, 0.909) and t.allows(0.90, 0.891)
    assert not t.allows(0.90, 0.92) and not t.allows(0.90, float("nan"))
    assert Tolerance(rel=0.02).allows(100.0, 101.9) and not Tolerance(rel=0.02).allows(100.0, 102.1)
    assert Tolerance().allows("cosine", "cosine") and not Tolerance().allows(20, 21)
    assert not Tolerance(abs=1).allows("a", "b") and not Tolerance(abs=1).allows(None, 0.5)
    assert Tolerance(compare=False).allows(1e-6, 1e-2)


def test_each_tolerance_has_a_reason_and_settings_are_exact():
    for pattern, tol, why in TOLERANCES:
        assert len(why) > 5, pattern
        assert tol.compare is False or tol.abs > 0 or tol.rel > 0, pattern
    assert tolerance_for("knn_k200.top1").abs > 0
    assert tolerance_for("kmeans.nmi_std").abs > 0
    for setting in ("knn.k", "knn.temperature", "linear.n_train", "linear.solver", "train.status", "train.steps"):
        assert tolerance_for(setting) == Tolerance(), setting


def test_compare_lists_every_kind_of_regression():
    base = {"a": {"knn.top1": 0.90, "knn.k": 20, "linear.top1": 0.8, "linear.regularisation": 1e-3},
            "gone": {"knn.top1": 0.5}}
    now = {"a": {"knn.top1": 0.85, "knn.k": 10, "linear.regularisation": 1e-1, "kmeans.nmi": 0.7},
           "new": {"knn.top1": 0.5}}
    regressions, n = compare(base, now)
    got = {(r.run, r.metric) for r in regressions}
    assert got == {("a", "knn.top1"), ("a", "knn.k"), ("a", "linear.top1"), ("a", "kmeans.nmi"),
                   ("gone", "(run)"), ("new", "(run)")}
    assert n == 5
    line = next(r for r in regressions if r.metric == "knn.top1").line()
    assert line == "REGRESSION a knn.top1: baseline 0.9, now 0.85, tolerance ±0.015"
    assert compare(base, base) == ([], 5)


def test_flat_metrics_reads_settings_values_and_training():
    rec = {"status": "ok", "training": {"history": [{"step": 3, "loss": 2.5, "embed_std_ratio": 0.5, "effective_rank": 9}]},
           "metrics": {"knn": {"k": 20, "top1": 0.5, "top5": float("nan")}}}
    flat = flat_metrics(rec)
    assert flat == {"train.status": "ok", "train.steps": 3, "train.loss": 2.5, "train.embed_std_ratio": 0.5,
                    "train.effective_rank": 9, "knn.k": 20, "knn.top1": 0.5, "knn.top5": None}


def test_ci_suite_is_deterministic_cpu_and_scores_every_protocol():
    configs = SUITES.get("ci")()
    assert len({label(c) for c in configs}) == len(configs)
    for c in configs:
        assert c.deterministic and c.device == "cpu" and c.protocols is None and c.suite == "ci"
        methods.METHODS.get(c.method)  # raises for a renamed method
    assert {"raw", "random", "supervised", "simclr"} <= {c.method for c in configs}


def test_committed_baseline_covers_the_suite_and_every_protocol():
    base = load_baseline(DEFAULT_BASELINE)
    fix = f"run 'repbench check --update' and commit {DEFAULT_BASELINE.name}"
    assert sorted(base["runs"]) == sorted(label(c) for c in SUITES.get("ci")()), f"the ci suite changed: {fix}"
    raw = base["runs"]["raw-digits-60pc-s0"]["metrics"]
    for name in protocols.PROTOCOLS.names():
        if name == "zero-shot":  # needs a text tower; none of the ci methods has one
            continue
        assert any(m.split(".")[0] == name or m.startswith((f"{name}_", f"{name}-")) for m in raw), \
            f"protocol {name} is not in the baseline: {fix}"
    for run, entry in base["runs"].items():
        assert entry["metrics"]["train.status"] == "ok", run


@pytest.fixture
def tiny_suite(monkeypatch):
    """A one-run suite (raw pixels, k-NN only: a second) to drive the command end to end."""
    monkeypatch.setitem(SUITES._entries, "tiny", lambda: [
        RunConfig(method="raw", dataset="digits", seed=0, suite="tiny", deterministic=True, protocols=("knn",))])
    return "tiny"


def test_check_update_then_pass_then_fail(cli, tmp_path, tiny_suite):
    path = tmp_path / "b" / "tiny.json"
    code, _, err = cli("check", "--suite", tiny_suite, "--baseline", path, "--update")
    assert code == 0 and "written" in err
    doc = json.loads(path.read_text())
    assert doc["format"] == 1 and list(doc["runs"]) == ["raw-digits-s0"]
    assert doc["runs"]["raw-digits-s0"]["metrics"]["knn.top1"] > 0.9
    assert not list(path.parent.glob(".*.tmp"))

    code, out, err = cli("check", "--suite", tiny_suite, "--baseline", path)
    assert code == 0 and out == "" and "OK" in err

    doc["runs"]["raw-digits-s0"]["metrics"]["knn.top1"] -= 0.05
    doc["runs"]["raw-digits-s0"]["metrics"]["knn_k200.k"] = 100
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    code, out, err = cli("check", "--suite", tiny_suite, "--baseline", path)
    lines = out.splitlines()
    assert code == 1 and len(lines) == 2
    assert lines[0].startswith("REGRESSION raw-digits-s0 knn.top1: baseline 0.") and lines[0].endswith("tolerance ±0.015")
    assert lines[1] == "REGRESSION raw-digits-s0 knn_k200.k: baseline 100, now 200, tolerance exact"
    assert "repbench check --update" in err
    assert path.read_bytes() == before  # a failing check never rewrites the baseline

    code, out, err = cli("check", "--suite", tiny_suite, "--baseline", path, "--update")
    assert code == 0 and out.count("ACCEPTED") == 2
    assert cli("check", "--suite", tiny_suite, "--baseline", path)[0] == 0


def test_check_keeps_runs_only_with_out(cli, tmp_path, tiny_suite):
    path = tmp_path / "tiny.json"
    cli("check", "--suite", tiny_suite, "--baseline", path, "--update", "--out", tmp_path / "runs")
    assert len(list((tmp_path / "runs").rglob("record.json"))) == 1
