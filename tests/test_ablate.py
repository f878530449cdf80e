"""`repbench ablate`: grids declared in code, >= 3 seeds per cell, tables with mean / CI / n."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from bench.experiments import SUITES, ablate, ablate_report, ablate_signals
from bench.report import load_records
from bench.runner import validate
from methods.base import Batch


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
    for column in ("kNN top-1 %", "95% CI", "n scored / run", "| 3/3 ", "Paired differences"):
        assert column in md
    table = pd.read_csv(tmp_path / "smoke" / "table.csv")
    assert sorted(table["cell"]) == ["head=mlp", "head=none"]
    assert (table["n"] == 3).all() and (table["seeds"] == 3).all() and (table["ci"] == "t").all()
    assert ((table["ci_lo"] <= table["mean"]) & (table["mean"] <= table["ci_hi"])).all()
    diffs = pd.read_csv(tmp_path / "smoke" / "differences.csv")
    assert len(diffs) == 1 and diffs.iloc[0]["kind"] == "paired" and diffs.iloc[0]["n"] == 3
    runs = pd.read_csv(tmp_path / "smoke" / "runs.csv")
    assert sorted(runs["seed"].unique()) == [0, 1, 2] and runs["value"].between(0, 1).all()
    assert (tmp_path / "smoke" / "smoke.png").read_bytes()[:4] == b"\x89PNG"
    signals = pd.read_csv(tmp_path / "smoke" / "signals.csv")
    assert len(signals) == 6 and signals["embed_std_ratio"].between(0, 2).all() and (signals["epoch"] == 1).all()
    assert "### Collapse signals" in md
    # A second call reads the records back instead of training again.
    records = sorted((tmp_path / "runs").rglob("record.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert cli("ablate", "--grid", "smoke", "--seeds", 3, "--out", tmp_path)[0] == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps


@pytest.mark.parametrize("args", [("--grid", "simclr-haed"), ("--grid", "smoke", "--seeds", "2"),
                                  ("--grid", "smoke", "--tuned", "/nonexistent/dir"),
                                  ("--grid", "smoke", "--backbone", "vitt"),
                                  ("--method", "simclr", "--vary", "method.temperature=0.1,0.2", "--backbone", "vit")])
def test_bad_input_one_line(cli, tmp_path, args):
    code, _, err = cli("ablate", *args, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_backbone_flag_runs_a_built_in_grid_on_that_backbone(cli, tmp_path):
    code, _, err = cli("ablate", "--grid", "smoke", "--seeds", 3, "--backbone", "vit", "--out", tmp_path)
    assert code == 0, err
    backbones = {r["config"]["backbone"] for r in load_records(tmp_path / "runs")}
    assert backbones == {"vit"}
    assert "--backbone vit" in (tmp_path / "smoke" / "table.md").read_text()


def test_signals_table_pairs_each_cell_with_the_methods_first():
    rows = [("paper", 0, "ok", 0.80), ("paper", 1, "ok", 0.90), ("paper", 2, "ok", 0.85),
            ("ablated", 0, "collapsed", 0.10), ("ablated", 1, "ok", 0.30), ("ablated", 2, "collapsed", 0.05)]
    frame = pd.DataFrame([{"method": "m", "cell": c, "seed": s, "status": st, "embed_std_ratio": v, "loss": None}
                          for c, s, st, v in rows])
    md = ablate_signals.signals_markdown(frame)
    paper, ablated = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if "| m " in line]
    assert paper == ["m", "paper", "0", "0.85"]
    # ablated - paper per seed: -0.7, -0.6, -0.8, mean -0.7; flagged counts the collapsed runs; loss has no values
    assert ablated[:3] == ["m", "ablated", "2"] and ablated[3].startswith("0.15 (-0.7 [") and "loss" not in md


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
    # Paper and unified cells share seeds 0-2: paired; the tuned runs were given without seeds: Welch, labelled.
    assert (mve["gap_paper_kind"], mve["gap_paper_n"], mve["gap_paper_verdict"]) == ("paired", 3, "resolved")
    assert mve["gap_tuned_kind"] == "Welch" and "(Welch)" in text
    assert set(pd.read_csv(tmp_path / "recipe" / "tuned.csv")["method"]) == {"a", "b"}


def _smoke_runs(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"grid": "smoke", "method": "simclr", "cell": cell, "recipe": "unified", "seed": s,
                          "status": "ok" if v == v else "diverged", "value": v}
                         for cell, vals in values.items() for s, v in enumerate(vals)])


def test_a_diverged_seed_shows_as_n_scored_of_n_run_and_drops_from_the_pairs(tmp_path):
    df = _smoke_runs({"head=none": [0.60, 0.65, 0.70], "head=mlp": [0.62, float("nan"), 0.72]})
    text = ablate_report.write_grid_report(ablate.Grid("smoke"), df, tmp_path, ablate.SCALES["smoke"])
    assert "| 2/3 " in text and "| 3/3 " in text and "1/3 diverged" in text
    diff = pd.read_csv(tmp_path / "smoke" / "differences.csv").iloc[0]
    assert (diff["a"], diff["b"], diff["n"]) == ("head=mlp", "head=none", 2) and diff["diff"] == pytest.approx(0.02)


def test_rewrite_reports_remakes_tables_from_committed_runs_csv(tmp_path):
    (tmp_path / "smoke").mkdir()
    _smoke_runs({"head=mlp": [0.60, 0.65, 0.70], "head=none": [0.50, 0.56, 0.61]}).to_csv(tmp_path / "smoke" / "runs.csv")
    text = ablate_report.rewrite_reports(tmp_path, "smoke")
    assert "-9.3 [-10.8, -7.9] resolved" in text and "tables remade from the committed runs.csv" in text
    assert (tmp_path / "smoke" / "table.md").read_text() == text
    with pytest.raises(ablate.UsageError, match="no runs.csv"):
        ablate_report.rewrite_reports(tmp_path / "empty", "smoke")


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


def _method(name: str, **args):
    from methods import METHODS
    from methods.base import Context

    cls = METHODS.get(name)
    torch.manual_seed(0)
    ctx = Context(in_channels=1, image_size=8, num_classes=3, num_train=60, backbone_args={"widths": (8, 16)})
    return cls(ctx, cls.Config(**args))


@pytest.mark.parametrize("name", sorted(ablate.SCALES))
def test_every_scale_builds_a_paper_grid_at_its_own_budget(name):
    scale = ablate.SCALES[name]
    configs = [c.config for c in ablate.build("simsiam-stopgrad", scale)[0].cells]
    assert {(c.dataset, c.epochs, c.batch_size, c.per_class) for c in configs} == \
        {(scale.dataset, scale.epochs, scale.batch_size, scale.per_class)}
    assert len({c.run_id() for c in configs}) == len(configs)


def test_collapse_grids_set_their_knobs():
    scale = ablate.SCALES["collapse"]
    simsiam = {c.label: c.config for c in ablate.build("simsiam-stopgrad", scale)[0].cells}
    assert simsiam["no stop-gradient"].method_args == {"stop_gradient": False}
    assert simsiam["stop-gradient (paper)"].method_args == {}
    byol = {c.label: c.config for c in ablate.build("byol-predictor", scale)[0].cells}
    assert byol["no predictor"].method_args == {"predictor": False}
    temps = [c.config.method_args.get("temperature", 0.5) for c in ablate.build("simclr-temperature", scale)[0].cells]
    assert temps == [0.05, 0.1, 0.5, 1.0]
    assert {c.config.epochs for c in ablate.build("dino-centering", scale)[0].cells} == {scale.epochs}


def test_simsiam_without_stop_gradient_trains_the_target_branch():
    """With the predictor's output made input-independent, only the target branch z can carry gradient to the
    encoder: zero with the stop-gradient, non-zero without it."""
    x = torch.randn(16, 1, 8, 8)
    grads = {}
    for stop in (True, False):
        m = _method("simsiam", stop_gradient=stop)
        last = m.predictor[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.normal_(last.bias)
        loss = m.training_step(Batch(views=[x, x.flip(-1)], images=x, labels=torch.zeros(16, dtype=torch.long),
                                     index=torch.arange(16)))["loss"]
        loss.backward()
        grads[stop] = sum(float(p.grad.abs().sum()) for p in m.encoder.parameters() if p.grad is not None)
    assert grads[True] == 0.0 and grads[False] > 1e-6


def test_byol_without_predictor_regresses_the_target_directly():
    x = torch.randn(16, 1, 8, 8)
    batch = Batch(views=[x, x], images=x, labels=torch.zeros(16, dtype=torch.long), index=torch.arange(16))
    plain, full = _method("byol", predictor=False), _method("byol")
    assert not any(n.startswith("predictor.") for n, _ in plain.named_parameters())
    # At step 0 the target is a copy of the online network: on identical views the loss is 0 without a predictor.
    assert float(plain.training_step(batch)["loss"].detach()) == pytest.approx(0.0, abs=1e-5)
    assert float(full.training_step(batch)["loss"].detach()) > 0.1
