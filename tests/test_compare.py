"""`repbench compare A B` and `repbench table --baseline`: configs matched on all but what differs, runs paired by
seed, the paired t-interval and verdict; sets with no shared config or seed are refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from bench.compare import compare, config_fields, split_fields
from bench.report import DEFAULT_COLUMNS

QUICK = Path("/tmp/quick-check/runs/quick")


def record(method: str, seed: int, knn: float, epochs: int = 2, linear: float | None = None, **config) -> dict:
    metrics = {"knn": {"k": 20, "top1": knn}}
    if linear is not None:
        metrics["linear"] = {"top1": linear}
    return {"config": {"suite": "s", "dataset": "d", "backbone": "convnet", "method": method, "seed": seed,
                       "epochs": epochs, "recipe": {"lr": 0.1}, "method_args": {}, **config},
            "status": "ok", "metrics": metrics, "timing": {"train_s": 1.0 + seed}, "data": {"train": 100}}


def write(folder: Path, records: list[dict]) -> Path:
    for i, rec in enumerate(records):
        run = folder / f"run{i}"
        run.mkdir(parents=True)
        (run / "record.json").write_text(json.dumps(rec))
    return folder


def two_sets(tmp_path: Path) -> tuple[Path, Path]:
    """A: 4 epochs, B: 2; simclr gains +2, +3, +4 points on seeds 0-2, byol the same on its 2 shared seeds."""
    base = {"simclr": [0.70, 0.75, 0.80], "byol": [0.60, 0.62, 0.64]}
    a = [record(m, s, v + 0.02 + 0.01 * s, epochs=4) for m, vals in base.items() for s, v in enumerate(vals)]
    b = [record(m, s, v, epochs=2) for m, vals in base.items() for s, v in enumerate(vals) if (m, s) != ("byol", 2)]
    return write(tmp_path / "a", a), write(tmp_path / "b", b)


def test_fields_with_one_value_per_side_are_what_differs_the_rest_name_the_config():
    a = [config_fields(record(m, s, 0.5, epochs=4)) for m in ("simclr", "byol") for s in range(3)]
    b = [config_fields(record(m, s, 0.5, epochs=2, method_args={"temperature": 0.2})) for m in ("simclr", "byol")
         for s in range(3)]
    differs, key = split_fields(a, b)
    assert differs == {"epochs": ("4", "2"), "method_args.temperature": ("-", "0.2")}
    assert "method" in key and "seed" not in key and "epochs" not in key and "recipe.lr" in key


def test_paired_difference_interval_and_verdict_per_config_and_metric(tmp_path):
    a, b = two_sets(tmp_path)
    c = compare(a, b, DEFAULT_COLUMNS)
    assert c.differs == {"epochs": ("4", "2")} and c.key_fields == ["method"]
    rows = c.rows.set_index(["config", "metric"])
    simclr = rows.loc[("simclr", "knn.top1")]
    half = stats.t.ppf(0.975, 2) * stats.tstd([0.02, 0.03, 0.04]) / math.sqrt(3)
    assert (simclr["n"], simclr["kind"], simclr["verdict"]) == (3, "paired", "resolved")
    assert simclr["diff"] == pytest.approx(0.03) and simclr["lo"] == pytest.approx(0.03 - half)
    byol = rows.loc[("byol", "knn.top1")]
    assert byol["n"] == 2 and byol["diff"] == pytest.approx(0.025)  # seed 2 is only in A: not paired
    assert rows.loc[("simclr", "train_s"), "diff"] == pytest.approx(0.0)  # same train_s per seed on both sides


def test_compare_command_prints_and_writes_the_table(cli, tmp_path):
    a, b = two_sets(tmp_path)
    code, out, err = cli("compare", a, b, "--out", tmp_path / "cmp")
    assert (code, err) == (0, "")
    assert "they differ in: epochs 4 (A) vs 2 (B)" in out
    assert "| simclr   | knn.top1 " in out and "+3.0 [+0.5, +5.5] resolved" in out
    assert (tmp_path / "cmp" / "compare.md").read_text() == out.rstrip("\n") + "\n"
    assert "verdict" in (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0]


def test_table_baseline_adds_delta_columns(cli, tmp_path):
    a, b = two_sets(tmp_path)
    write(tmp_path / "a" / "dino", [record("dino", s, 0.5, epochs=4) for s in range(3)])  # not in the baseline
    code, out, err = cli("table", "--runs", a, "--out", tmp_path / "t", "--baseline", b)
    assert code == 0, err
    row = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "+3.0 [+0.5, +5.5] resolved" in row["simclr"] and "Δ knn.top1" in out
    assert "+2.5 [" in row["byol"]
    assert [c.strip() for c in row["dino"].split("|")][4] == "-"
    assert "Δ linear.top1" not in out  # no delta column for a metric the records lack
    assert "Δ knn.top1" in (tmp_path / "t" / "table.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("make_b, fragment", [
    (lambda: [record(m, s, 0.5, epochs=2) for m in ("moco", "swav") for s in range(3)], "share no config"),
    (lambda: [record(m, s, 0.5, epochs=2) for m in ("simclr", "byol") for s in (3, 4, 5)], "no seed scored on both sides"),
    (lambda: [record("simclr", 0, 0.5), record("simclr", 0, 0.6), record("byol", 0, 0.6)], "two records of one config"),
], ids=["no-shared-config", "no-shared-seed", "duplicate-seed"])
def test_bad_sets_are_refused_in_one_line(cli, refused, tmp_path, make_b, fragment):
    # One value per side of a field is what A and B differ in; a field that varies (method) must match.
    a = write(tmp_path / "a", [record(m, s, 0.6, epochs=4) for m in ("simclr", "byol") for s in range(3)])
    b = write(tmp_path / "b", make_b())
    refused(cli("compare", a, b, "--out", tmp_path / "cmp"), fragment, tmp_path / "cmp")


def test_unmatched_metrics_pattern_lists_the_metrics(cli, refused, tmp_path):
    a, b = two_sets(tmp_path)
    code, out, err = cli("compare", a, b, "--metrics", "knn.top5")
    refused((code, out, err), "matches no metric", tmp_path / "none")
    assert "knn.top1" in err and "linear" not in err


@pytest.mark.skipif(not QUICK.is_dir(), reason="the quick suite's records are not on this machine")
def test_quick_suite_against_itself_is_all_zero_differences(tmp_path):
    c = compare(QUICK, QUICK, ("knn.top1",))
    assert c.differs == {} and set(c.rows["diff"]) == {0.0} and len(c.rows) >= 2 * 16
