"""The smoke suite end to end through the CLI: every registered method, every protocol, one table."""

import json

import pytest

import methods
import protocols
from bench.experiments import SUITES


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from bench.cli import main

    out = tmp_path_factory.mktemp("smoke")
    code = main(["run", "--suite", "smoke", "--out", str(out), "--no-progress"])
    return code, out


def test_smoke_suite_covers_every_method():
    assert sorted(c.method for c in SUITES.get("smoke")()) == methods.METHODS.names()


def test_smoke_suite_runs_and_tables(smoke_run, capsys):
    code, out = smoke_run
    assert code == 0
    records = [json.loads(p.read_text()) for p in sorted((out / "runs" / "smoke").glob("*/record.json"))]
    assert sorted(r["config"]["method"] for r in records) == methods.METHODS.names()
    table = (out / "runs" / "smoke" / "table.md").read_text()
    for name in methods.METHODS.names():
        assert f"| {name} " in table
    for r in records:
        assert r["status"] in ("ok", "collapsed"), (r["config"]["method"], r["status"])
        assert r["provenance"]["seed"] == 0 and r["provenance"]["torch"]
        assert "knn" in r["metrics"] and "linear" in r["metrics"], r["config"]["method"]
        # every metric entry records its settings beside its values
        for key, entry in r["metrics"].items():
            assert isinstance(entry, dict) and len(entry) >= 2, key
        cls = methods.METHODS.get(r["config"]["method"])
        if cls.trained_by == "sgd":
            assert r["throughput"]["images_per_s"] > 0


def test_every_registered_protocol_reports(smoke_run):
    _, out = smoke_run
    rec = json.loads(next((out / "runs" / "smoke").glob("raw-*/record.json")).read_text())
    for name in protocols.PROTOCOLS.names():
        if name == "zero-shot":  # needs a text tower; raw pixels have none
            continue
        assert any(k == name or k.startswith(f"{name}_") or k.startswith(f"{name}-") for k in rec["metrics"]), name
