"""Tables that fit: the terminal's default table within 120 characters (kNN, linear, K-Means NMI, train s, flags),
--wide and table.md with every column, "n scored / n run" seeds, the floors' encoder, and an unmatched --metrics
pattern refused with the list of metrics the records hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import ENCODER, WIDTH
from methods import METHODS

WIDE_ONLY = ("fewshot_1shot.top1 %", "knn_k200.top1 %", "vs random init")


def record(method: str, seed: int, status: str = "ok", flag: str = "") -> dict:
    backbone = METHODS.get(method).required_backbone or "convnet"
    metrics = {} if status == "diverged" else {
        "knn": {"top1": 0.7 + 0.01 * seed}, "knn_k200": {"top1": 0.6}, "linear": {"top1": 0.8 - 0.01 * seed},
        "kmeans": {"nmi": 0.5, "acc": 0.4}, "fewshot_1shot": {"top1": 0.3, "shots": 1}}
    rec = {"config": {"suite": "quick", "dataset": "fashion-mnist", "backbone": backbone, "method": method, "seed": seed,
                      "epochs": 4, "recipe_name": "unified"}, "status": status, "metrics": metrics,
           "timing": {"train_s": 12.5}, "data": {"train": 4000}}
    if flag:
        rec["training"] = {"status_detail": {"reason": flag}}
    return rec


def every_method(tmp_path: Path) -> Path:
    """3 seeds of every registered method; vicreg diverged on 2 seeds, byol collapsed on one."""
    runs = tmp_path / "runs"
    for name in METHODS:
        for seed in range(3):
            status = "diverged" if name == "vicreg" and seed else "collapsed" if name == "byol" and seed == 0 else "ok"
            rec = record(name, seed, status, "uniform: every embedding the same direction" if status == "collapsed" else "")
            (runs / f"{name}-{seed}").mkdir(parents=True)
            (runs / f"{name}-{seed}" / "record.json").write_text(json.dumps(rec))
    return runs


def rows(out: str, table: int = 0) -> dict[str, list[str]]:
    """Rows by method of the output's ``table``-th table (the main one, then the vs-random one): cells between pipes."""
    blocks, current = [], []
    for line in out.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks, current = [*blocks, current], []
    return {cells[0]: cells for line in blocks[table] if line.startswith("| ") and not line.startswith("| method")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_default_table_fits_and_names_its_columns(cli, tmp_path):
    code, out, err = cli("table", "--runs", every_method(tmp_path), "--out", tmp_path / "t")
    assert code == 0, err
    assert max(map(len, out.splitlines())) <= WIDTH
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    for col in ("kNN %", "linear %", "NMI %", "train s", "flags", "seeds"):
        assert col in header
    assert not any(col in header for col in WIDE_ONLY)
    assert set(rows(out)) == set(METHODS)


def test_default_output_adds_the_gain_over_random_init_within_the_width(cli, tmp_path):
    """The main job's question (every method against the untrained encoder of its backbone) has its own table."""
    code, out, err = cli("table", "--runs", every_method(tmp_path), "--out", tmp_path / "t")
    gains = rows(out, 1)
    assert max(map(len, out.splitlines())) <= WIDTH and "vs random init" in out
    # Every method but the floor itself, and MAE, whose ViT has no random floor among these records.
    assert set(gains) == set(METHODS) - {"random", "mae"}
    # kNN 0.70 + 0.01 seed for every method, the floor included: no gain, so no method is above it.
    assert gains["simclr"][2].startswith("+0.0") and gains["simclr"][-1] == "no"


def test_wide_and_table_md_hold_every_column(cli, tmp_path):
    code, out, err = cli("table", "--runs", every_method(tmp_path), "--out", tmp_path / "t", "--wide")
    assert code == 0, err
    md = (tmp_path / "t" / "table.md").read_text()
    for col in WIDE_ONLY:
        assert col in out and col in md
    assert out.strip() == md.strip()


@pytest.mark.parametrize("wide", [False, True], ids=["default", "wide"])
def test_seeds_are_n_scored_over_n_run(cli, tmp_path, wide):
    code, out, _ = cli("table", "--runs", every_method(tmp_path), "--out", tmp_path / "t", *(["--wide"] if wide else []))
    seeds = {m: cells[2] for m, cells in rows(out).items()}
    assert seeds["vicreg"] == "1/3" and seeds["simclr"] == "3/3"
    assert seeds["byol"] == "3/3"  # a collapsed run is scored as measured
    assert "2x diverged" in rows(out)["vicreg"][-1]


@pytest.mark.parametrize("method", sorted(ENCODER))
def test_floors_show_the_encoder_they_use(cli, tmp_path, method):
    code, out, _ = cli("table", "--runs", every_method(tmp_path), "--out", tmp_path / "t")
    assert rows(out)[method][1] == ENCODER[method].format("convnet")
    assert rows(out)["simclr"][1] == "convnet"


def test_long_flags_are_cut_to_fit(cli, tmp_path):
    runs = tmp_path / "runs"
    reasons = ["uniform: x", "dimensional: y", "teacher: z"]
    for seed, reason in enumerate(reasons):
        rec = record("dino", seed, "collapsed", reason)
        rec["training"]["status_detail"]["reason"] = f"{reason.split(':')[0]} collapse of a very long kind {seed}: x"
        (runs / str(seed)).mkdir(parents=True)
        (runs / str(seed) / "record.json").write_text(json.dumps(rec))
    (runs / "m").mkdir()
    (runs / "m" / "record.json").write_text(json.dumps(record("kmeans-features", 0)))
    code, out, _ = cli("table", "--runs", runs, "--out", tmp_path / "t")
    assert max(map(len, out.splitlines())) <= WIDTH and "…" in out
    assert "long kind 2" in (tmp_path / "t" / "table.md").read_text()  # the file keeps them whole


def test_unmatched_metrics_pattern_lists_the_available_metrics(cli, refused, tmp_path):
    runs = every_method(tmp_path)
    result = cli("table", "--runs", runs, "--out", tmp_path / "t", "--metrics", "knn.top1,lineer.top1")
    refused(result, "--metrics 'lineer.top1' matches no metric", tmp_path / "t")
    assert "kmeans.nmi" in result[2] and "linear.top1" in result[2]


def test_matched_metrics_pattern_shows_those_columns(cli, tmp_path):
    code, out, err = cli("table", "--runs", every_method(tmp_path), "--out", tmp_path / "t", "--metrics", "knn*.top1")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    assert "knn.top1 %" in header and "knn_k200.top1 %" in header and "linear" not in header
