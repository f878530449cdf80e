"""`repbench reproduce --table NAME`: table files, rows x seeds through run_many (records reused), the side-by-side table."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import presets, reproduce
from bench.config import RunConfig
from bench.reproduce import Request, Row, markdown, read_table, scaled, summarise, table_names

TABLE = "lightly-cifar10-e200-b128"
SMOKE = ["--table", TABLE, "--methods", "simclr,byol", "--seeds", "0,1", "--scale", "0.005", "--per-class", "10",
         "--test-per-class", "5", "--set", "batch_size=50", "--no-progress"]


def write_cifar10(root: Path, per_class: int = 10) -> Path:
    """torchvision's CIFAR-10 python batches: pickled dicts of (N, 3072) uint8 rows and labels, 10 classes."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(name: str, n: int) -> None:
        y = np.arange(n) % 10
        x = (rng.integers(0, 60, (n, 3072)) + y[:, None] * 19).astype(np.uint8)  # a per-class brightness to find
        (folder / name).write_bytes(pickle.dumps({"data": x, "labels": y.tolist()}, protocol=2))

    for i in range(1, 6):
        batch(f"data_batch_{i}", 2 * per_class)
    batch("test_batch", 5 * 10)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return root


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REPBENCH_IMAGE_SIZE", "16")  # ResNet-18 at 16 px: a run is about a second
    return write_cifar10(tmp_path / "data")


# --------------------------------------------------------------------------- table files


@pytest.mark.parametrize("name", table_names())
def test_table_rows_exist_and_share_dataset_and_metric(name):
    table = read_table(name)
    rows = [presets.read(presets.path_of(p)) for p in table.presets]
    assert table.title and table.source and rows
    assert len({r["dataset"] for r in rows}) == 1
    # One metric per table, except a table gathering several papers, whose notes say which row reports what.
    metrics = {r["published"]["metric"] for r in rows}
    assert len(metrics) == 1 or (name.startswith("papers-") and "metric" in table.notes)


def test_lightly_tables_have_the_seven_methods_of_their_budget(cli):
    code, out, _ = cli("list", "tables")
    assert code == 0
    for budget in ("e200-b128", "e200-b512", "e800-b512"):
        assert f"lightly-cifar10-{budget}" in out.split()
        table = read_table(f"lightly-cifar10-{budget}")
        assert len(table.presets) == 7 and all(p.endswith(budget) for p in table.presets)


def test_scale_caps_the_monitor_period():
    cfg = RunConfig(method="simclr", dataset="cifar10", epochs=200, knn_every=10)
    assert (scaled(cfg, 0.01).epochs, scaled(cfg, 0.01).knn_every) == (2, 2)
    assert (scaled(cfg, 0.001).epochs, scaled(cfg, 1.0).epochs, scaled(cfg, 1.0).knn_every) == (1, 200, 10)
    assert reproduce.out_dir(Request(TABLE), Path("r")) == Path("r/reproduce") / TABLE
    assert reproduce.out_dir(Request(TABLE, scale=0.5), Path("r")).name == f"{TABLE}-scale0.5"


# --------------------------------------------------------------------------- end to end on fake CIFAR-10


def test_reproduce_smoke_then_reuse(cli, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    code, stdout, err = cli("reproduce", *SMOKE, "--data-root", data, "--out", out)
    assert code == 0, err
    folder = out / "reproduce" / f"{TABLE}-scale0.005"
    csv = pd.read_csv(folder / "table.csv")
    assert list(csv["method"]) == ["byol", "simclr"]  # the table's order
    assert list(csv["published"]) == [presets.read(presets.path_of(f"lightly-cifar10-{m}-e200-b128"))["published"]["value"]
                                      for m in ("byol", "simclr")]
    assert list(csv["scored"]) == [2, 2] and list(csv["asked"]) == [2, 2] and list(csv["epochs"]) == [1, 1]
    assert all(0 <= m <= 1 for m in csv["mean"]) and all(math.isfinite(c) for c in csv["ci95"])
    assert np.allclose(csv["diff_pts"], 100 * (csv["mean"] - csv["published"]))
    assert all(csv["wall_s"] > 0) and all(isinstance(h, str) and h != "-" for h in csv["hardware"])
    md = (folder / "table.md").read_text()
    assert md in stdout and md.count("n=2/2") == 2 and "87.2" in md and "82.2" in md
    assert "Not comparable" in md and "epochs x 0.005" in md and "--set batch_size=50" in md and "--per-class 10" in md
    assert len(list((out / "runs" / f"reproduce-{TABLE}").glob("*/record.json"))) == 4
    if csv["metric"][0] == "monitor_knn.best":  # the kNN monitor's entry: its last epoch shown beside the best
        assert list(csv["last.scored"]) == [2, 2] and "ours % (last)" in md

    # Same command again: every cell is read back, nothing trains.
    def no_training(*args, **kwargs):
        raise AssertionError("a reused cell was trained again")

    monkeypatch.setattr("bench.runner.run_one", no_training)
    code, _, err = cli("reproduce", *SMOKE, "--data-root", data, "--out", out)
    assert code == 0, err
    assert pd.read_csv(folder / "table.csv").equals(csv)

    # A published metric the records do not hold (e.g. from a monitor not built yet) shows as missing, never crashes.
    real_read = presets.read

    def unrecorded_metric(path):
        d = real_read(path)
        return d | {"published": d["published"] | {"metric": "not_recorded.best"}}

    monkeypatch.setattr(presets, "read", unrecorded_metric)
    code, stdout, err = cli("reproduce", *SMOKE, "--data-root", data, "--out", out)
    assert code == 0, err
    assert stdout.count("missing") >= 2 and stdout.count("n=0/2") == 2 and "2x no not_recorded.best" in stdout


# --------------------------------------------------------------------------- rows from records


def _rec(status: str = "ok", metrics: dict | None = None) -> dict:
    return {"status": status, "metrics": metrics or {}, "timing": {"train_s": 3.0, "eval_s": 1.0},
            "provenance": {"device_name": "Some CPU"}}


def _row(metric: str) -> Row:
    cfg = RunConfig(method="byol", dataset="cifar10", epochs=2)
    return Row("p", {"metric": metric, "value": 0.5}, (cfg, cfg, cfg))


def test_monitor_entry_shows_last_and_best_and_failed_runs_are_counted_not_scored():
    monitor = [{"monitor_knn": {"last": 0.4, "best": 0.6}}, {"monitor_knn": {"last": 0.5, "best": 0.7}}]
    records = [_rec(metrics=monitor[0]), _rec(metrics=monitor[1]), _rec("diverged")]
    row = summarise(_row("monitor_knn.best"), records)
    assert (row["scored"], row["asked"], row["mean"], row["last.mean"]) == (2, 3, pytest.approx(0.65), pytest.approx(0.45))
    assert row["diff_pts"] == pytest.approx(15) and row["wall_s"] == 4.0 and row["flags"] == "1x diverged"
    md = markdown(pd.DataFrame([row]))
    header = md.splitlines()[0]
    assert header.index("ours %") < header.index("ours % (last)") and "n=2/3" in md and "+15.0" in md


def test_errored_rows_show_no_number_and_missing_metric_shows_missing():
    errored = summarise(_row("knn_k200.top1"), [{"status": "error", "metrics": {}}] * 3)
    missing = summarise(_row("knn_k200.top1"), [_rec(metrics={"knn_k200": {"skipped": "too few"}})] * 3)
    md = markdown(pd.DataFrame([errored, missing])).splitlines()
    assert "n=0/3" in md[2] and "3x error" in md[2] and "missing" not in md[2]
    assert "missing" in md[3] and "n=0/3" in md[3] and "3x no knn_k200.top1" in md[3]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv,fragment", [
    (["--table", "lightly-cifar10-e200-b12"], "unknown table"),
    (["--table", TABLE, "--methods", "simclr,mae"], "'mae' is not a method of table"),
    (["--table", TABLE, "--methods", "simclr,"], "--methods"),
    (["--table", TABLE, "--scale", "0"], "--scale"),
    (["--table", TABLE, "--scale", "1.5"], "--scale"),
    (["--table", TABLE, "--scale", "nan"], "--scale"),
    (["--table", TABLE, "--scale", "inf"], "--scale"),
    (["--table", TABLE, "--seeds", "0,x"], "--seeds"),
    (["--table", TABLE, "--seeds", "0,0"], "repeats"),
    (["--table", TABLE, "--seeds", "-1"], "--seeds"),
    (["--table", TABLE, "--seeds", ""], "--seeds"),
    (["--table", TABLE, "--set", "bogus=1"], "--set bogus"),
    (["--table", TABLE, "--set", "recipe.lr=-1"], "lr"),
    (["--table", TABLE, "--device", "tpu"], "tpu"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, fragment, cli, refused, tmp_path):
    refused(cli("reproduce", *argv, "--out", tmp_path / "out"), fragment, tmp_path / "out")


@pytest.mark.parametrize("text,fragment", [
    ('title = "t"\nsource = "s"\npresets = ["lightly-cifar10-simclr-e200-b128"]\ncolour = "red"\n', "unknown key colour"),
    ('title = "t"\npresets = ["lightly-cifar10-simclr-e200-b128"]\n', "missing key source"),
    ('title = "t"\nsource = "s"\npresets = []\n', "non-empty list"),
    ('title = "t"\nsource = "s"\npresets = ["no-such-preset"]\n', "unknown preset 'no-such-preset'"),
    ('title = "t"\nsource = "s"\npresets = ["lightly-cifar10-simclr-e200-b128"] * 2\n', "cannot read table file"),
    ('title = "t"\nsource = "s"\npresets = ["lightly-cifar10-simclr-e200-b128", "lightly-cifar10-simclr-e200-b128"]\n',
     "listed twice"),
    ('title = 3\nsource = "s"\npresets = ["lightly-cifar10-simclr-e200-b128"]\n', "title should be text"),
])
def test_bad_table_file_is_one_line(text, fragment, cli, tmp_path, monkeypatch):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "mine.toml").write_text(text)
    monkeypatch.setattr(reproduce, "TABLE_DIR", tables)
    out = tmp_path / "out"
    code, _, err = cli("reproduce", "--table", "mine", "--out", out)
    assert code == 2 and err.count("\n") == 1 and fragment in err and "mine.toml" in err
    assert not out.exists()
