"""`repbench ablate`: grids declared in code, >= 3 seeds per cell, tables with mean / CI / n."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from bench.experiments import SUITES, ablate, ablate_report
from bench.runner import validate


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models; on a shared 2-core machine a second OpenMP thread only adds barrier waits.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_smoke_grid_table_has_mean_ci_and_n(cli, tmp_path):
    code, out, err = cli("ablate", "--grid", "smoke", "--seeds", 3, "--out", tmp_path)
    assert code == 0, err
    md = (tmp_path / "smoke" / "table.md").read_text()
    for column in ("kNN top-1 %", "95% bootstrap CI", "|   n |"):
        assert column in md
    table = pd.read_csv(tmp_path / "smoke" / "table.csv")
    assert sorted(table["cell"]) == ["head=mlp", "head=none"]
    assert (table["n"] == 3).all() and (table["seeds"] == 3).all()
    assert ((table["ci_lo"] <= table["mean"]) & (table["mean"] <= table["ci_hi"])).all()
    runs = pd.read_csv(tmp_path / "smoke" / "runs.csv")
    assert sorted(runs["seed"].unique()) == [0, 1, 2] and runs["value"].between(0, 1).all()
    assert (tmp_path / "smoke" / "smoke.png").read_bytes()[:4] == b"\x89PNG"
    # A second call reads the records back instead of training again.
    records = sorted((tmp_path / "runs").rglob("record.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert cli("ablate", "--grid", "smoke", "--seeds", 3, "--out", tmp_path)[0] == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps


@pytest.mark.parametrize("args", [("--grid", "simclr-haed"), ("--grid", "smoke", "--seeds", "2"),
                                  ("--grid", "smoke", "--tuned", "/nonexistent/dir")])
def test_bad_input_one_line(cli, tmp_path, args):
    code, _, err = cli("ablate", *args, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unknown_grid_suggests():
    with pytest.raises(ablate.UsageError, match="simclr-head"):
        ablate.build("simclr-haed", ablate.SCALES["quick"])


@pytest.mark.parametrize("name", ablate.grid_names())
def test_every_grid_builds_valid_distinct_cells(name):
    grids = ablate.build(name, ablate.SCALES["quick"])
    assert grids and all(g.cells for g in grids)
    for g in grids:
        labels = [(c.method, c.label) for c in g.cells]
        assert len(labels) == len(set(labels))
        keys = [c.config.key() for c in g.cells]
        assert len(keys) == len(set(keys)), f"{g.name}: two cells run the same config"
        for c in g.cells:
            validate(c.config)
            assert c.config.protocols is None  # every protocol is recorded; the tables read scales.METRIC


def test_headline_cells_set_the_knob():
    scale = ablate.SCALES["quick"]
    moco = {c.label: c.config for c in ablate.build("moco-momentum", scale)[0].cells}
    assert moco["momentum=0.0"].method_args == {"momentum": 0.0}
    dino = {c.label: c.config for c in ablate.build("dino-centering", scale)[0].cells}
    assert dino["no centering"].method_args == {"center_momentum": 1.0}
    head = {c.label: c.config for c in ablate.build("simclr-head", scale)[0].cells}
    assert head["head=none"].method_args == {"head": "none"}
    recipe = ablate.build("recipe", scale)[0]
    paper = [c for c in recipe.cells if c.label == "paper"]
    assert paper and all(c.config.recipe_name == "paper" for c in paper)
    assert {c.method for c in paper} == set(ablate.trainable_methods())


def test_quick_ablation_suite_has_three_seeds_per_config():
    configs = SUITES.get("quick-ablation")()
    seeds_per_cell = pd.Series([replace(c, seed=0).key() for c in configs]).value_counts()
    assert (seeds_per_cell == 3).all() and len(seeds_per_cell) >= 10
    assert {c.dataset for c in configs} == {"fashion-mnist"}


def test_recipe_report_has_method_vs_engineering(tmp_path):
    rows = []
    for method, paper, unified in (("a", 0.60, 0.66), ("b", 0.70, 0.70)):
        for recipe, base in (("paper", paper), ("unified", unified)):
            for s in range(3):
                rows.append({"grid": "recipe", "method": method, "cell": recipe, "recipe": recipe, "seed": s,
                             "status": "ok", "value": base + 0.01 * s})
    text = ablate_report.write_grid_report(ablate.Grid("recipe"), pd.DataFrame(rows), tmp_path, ablate.SCALES["smoke"],
                                    tuned={"a": [0.75, 0.76, 0.74], "b": [0.74, 0.73, 0.75]})
    assert "Method vs engineering" in text
    mve = pd.read_csv(tmp_path / "recipe" / "method_vs_engineering.csv").iloc[0]
    assert (mve["method_a"], mve["method_b"]) == ("b", "a")
    assert mve["gap_paper"] == pytest.approx(0.10) and mve["gap_unified"] == pytest.approx(0.04)
    assert mve["recipe_share"] == pytest.approx(0.6) and mve["gap_tuned"] == pytest.approx(-0.01)


def test_parallel_jobs_write_the_same_runs(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # spawned workers: one thread each
    code, _, err = cli("ablate", "--grid", "smoke", "--seeds", 3, "--jobs", 2, "--out", tmp_path)
    assert code == 0, err
    runs = pd.read_csv(tmp_path / "smoke" / "runs.csv")
    expected = {replace(c.config, seed=s).run_id() for c in ablate.build("smoke", ablate.SCALES["smoke"])[0].cells
                for s in range(3)}
    assert set(runs["run_id"]) == expected and (runs["status"] == "ok").all()
    assert runs["value"].between(0, 1).all()
    assert len(list((tmp_path / "runs").rglob("record.json"))) == 6
