"""User-defined ablations: `repbench ablate --vary KEY=V1,V2 --method M` and `--grid-file FILE` build every
combination on any method, dataset, scale and device, run each cell with every protocol, and report it like the
built-in grids; bad grids are refused in one line before anything runs."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pandas as pd
import pytest

from bench.experiments import search_space
from bench.experiments.scales import SCALES
from bench.experiments.user_grid import RUN_FIELDS, build_user_grid, parse_vary, read_grid_file
from methods import METHODS
from methods.spec import Knob

TINY = ["--scale", "smoke", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50"]


def test_cells_are_every_combination_of_the_axes():
    axes = parse_vary(["method.temperature=0.1,0.2", "recipe.lr=0.3,0.6,1.2", "batch_size=32"])
    assert axes == {"method.temperature": [0.1, 0.2], "recipe.lr": [0.3, 0.6, 1.2], "batch_size": [32]}
    grid = build_user_grid("simclr", axes, SCALES["quick"], device="cpu")
    assert grid.name == "vary-simclr-temperature-lr-batch_size" and len(grid.cells) == 6
    cfgs = {c.label: c.config for c in grid.cells}
    c = cfgs["temperature=0.2, lr=1.2, batch_size=32"]
    assert (c.method_args, c.recipe.lr, c.batch_size, c.dataset, c.epochs) == (
        {"temperature": 0.2}, 1.2, 32, "fashion-mnist", SCALES["quick"].epochs)
    assert c.protocols is None  # every registered protocol scores every cell
    assert len({c.config.run_id() for c in grid.cells}) == 6


@pytest.mark.parametrize("method", [m for m, cls in METHODS.items() if cls.trained_by == "sgd"])
def test_any_trainable_method_can_vary_its_recipe_and_own_fields(method):
    defaults = vars(METHODS.get(method).Config())
    axes = {"recipe.weight_decay": [0.0, 1e-4]}
    knob = next((k for k, v in defaults.items() if isinstance(v, float) and not isinstance(v, bool) and v > 0), None)
    if knob:
        axes[f"method.{knob}"] = [defaults[knob] / 2]
    grid = build_user_grid(method, axes, SCALES["smoke"])
    assert len(grid.cells) == 2 and [c.config.recipe.weight_decay for c in grid.cells] == [0.0, 1e-4]
    if knob:
        assert all(c.config.method_args == {knob: defaults[knob] / 2} for c in grid.cells)


def test_grid_file_gives_the_same_cells_as_vary(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('method = "simclr"\ndataset = "digits"\n[vary.method]\ntemperature = [0.1, 0.5]\n')
    data = read_grid_file(path)
    assert data["vary"] == {"method.temperature": [0.1, 0.5]}
    scale = replace(SCALES["quick"], dataset=data["dataset"])
    from_file = build_user_grid(data["method"], data["vary"], scale)
    from_flags = build_user_grid("simclr", parse_vary(["method.temperature=0.1,0.5"]), scale)
    assert [c.config.run_id() for c in from_file.cells] == [c.config.run_id() for c in from_flags.cells]


def test_device_and_scale_flags_reach_every_cell():
    scale = replace(SCALES["smoke"], dataset="fashion-mnist", epochs=3)
    grid = build_user_grid("byol", {"method.momentum": [0.9, 0.99]}, scale, recipe="paper", device="cuda")
    assert {(c.config.device, c.config.dataset, c.config.epochs, c.config.recipe_name) for c in grid.cells} == {
        ("cuda", "fashion-mnist", 3, "paper")}


def test_vary_runs_every_protocol_and_reports_like_a_built_in_grid(cli, tmp_path):
    code, out, err = cli("ablate", "--method", "simclr", "--vary", "method.temperature=0.1,0.5", *TINY, "--out", tmp_path)
    assert code == 0, err
    gdir = tmp_path / "vary-simclr-temperature"
    table = pd.read_csv(gdir / "table.csv")
    assert sorted(table["cell"]) == ["temperature=0.1", "temperature=0.5"] and (table["n"] == 3).all()
    diffs = pd.read_csv(gdir / "differences.csv")
    assert len(diffs) == 1 and diffs.iloc[0]["kind"] == "paired"
    md = (gdir / "table.md").read_text()
    assert "n scored / run" in md and "### Every protocol" in md and "linear.top1 %" in md and "kmeans.nmi %" in md
    assert "--vary method.temperature=0.1,0.5" in md and (gdir / f"{gdir.name}.png").exists()
    assert len(list((tmp_path / "runs").rglob("record.json"))) == 6


@pytest.mark.parametrize("argv, fragment", [
    (["--method", "simclr", "--vary", "method.temperature"], "is not KEY=V1,V2"),
    (["--method", "simclr", "--vary", "method.temprature=0.1,0.2"], "simclr has no method field 'temprature'"),
    (["--method", "simclr", "--vary", "optimizer=sgd,adam"], "unknown key"),
    (["--method", "simclr", "--vary", "recipe.lr=0.1"], "gives 1 cell(s)"),
    (["--method", "simclr", "--vary", "batch_size=1,2"], "batch_size"),
    (["--method", "simclr", "--vary", "method.temperature=hot,cold"], "temperature"),
    (["--vary", "method.temperature=0.1,0.2"], "needs --method"),
    (["--method", "simclrr", "--vary", "method.temperature=0.1,0.2"], "simclr"),
    (["--grid", "smoke", "--vary", "method.temperature=0.1,0.2"], "give one of them"),
    (["--method", "simclr"], "add --vary"),
    (["--method", "simclr", "--vary", "method.temperature=0.1,0.2", "--device", "cuda:7"], "cuda"),
], ids=["no-values", "unknown-field", "unknown-key", "one-cell", "bad-run-value", "bad-type", "no-method",
        "unknown-method", "with-grid", "method-alone", "missing-gpu"])
def test_bad_grids_are_refused_before_anything_runs(cli, refused, tmp_path, argv, fragment):
    refused(cli("ablate", *argv, *TINY, "--out", tmp_path / "out"), fragment, tmp_path / "out")


def test_no_grid_at_all_is_refused(cli, refused, tmp_path):
    refused(cli("ablate", "--out", tmp_path / "out"), "give --grid NAME", tmp_path / "out")


@pytest.mark.parametrize("text, fragment", [
    ('method = "simclr"\nseeds = 3\n[vary]\n"method.temperature" = [0.1, 0.2]\n', "unknown key seeds"),
    ('method = "simclr"\n', "missing key vary"),
    ('method = "simclr"\n[vary]\n"method.temperature" = 0.1\n', "should be a non-empty list"),
    ('method = "simclr"\n[vary\n', "not valid TOML"),
], ids=["unknown-key", "no-vary", "not-a-list", "bad-toml"])
def test_bad_grid_files_are_refused(cli, refused, tmp_path, text, fragment):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    refused(cli("ablate", "--grid-file", path, *TINY, "--out", tmp_path / "out"), fragment, tmp_path / "out")


def test_run_fields_exclude_what_the_grid_owns():
    assert "batch_size" in RUN_FIELDS and not {"seed", "method", "dataset", "device"} & set(RUN_FIELDS)


# --------------------------------------------------------------------------- repbench search --space FILE

SPACE = '[temperature]\nlow = 0.2\nhigh = 0.6\nlog = true\n\n[head]\nchoices = ["mlp", "linear"]\n'


@pytest.fixture
def no_user_space():
    yield
    search_space.USER_SPACE.clear()


def test_space_file_adds_knobs_and_its_range_wins(tmp_path, no_user_space):
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    knobs = search_space.read_space(path)
    assert knobs == [Knob("temperature", 0.2, 0.6, log=True), Knob("head", choices=("mlp", "linear"))]
    simclr = METHODS.get("simclr")
    before = {k.field: k for k in search_space.method_knobs(simclr)}
    search_space.use_space(knobs, [simclr], path)
    after = {k.field: k for k in search_space.method_knobs(simclr)}
    assert after["temperature"] == knobs[0] and after["head"] == knobs[1] and "head" not in before
    assert after["out_dim"] == before["out_dim"]  # the method's own knobs stay


def test_search_with_space_draws_from_it(cli, tmp_path, no_user_space):
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    code, out, err = cli("search", "--method", "simclr", "--suite", "smoke", "--trials", 3, "--seeds", 0,
                         "--out", tmp_path / "s", "--space", path)
    assert code == 0, err
    study = optuna.load_study(study_name="simclr-smoke-n3", storage=f"sqlite:///{tmp_path / 's' / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all("head" in t.params for t in trials)
    assert all(0.2 <= t.params["temperature"] <= 0.6 and t.params["head"] in ("mlp", "linear") for t in trials)


@pytest.mark.parametrize("text, fragment", [
    ("[temperature]\nlow = 0.5\nhigh = 0.1\n", "low < high"),
    ("[temperature]\nlow = 0.0\nhigh = 0.5\nlog = true\n", "low > 0 with log"),
    ("[temperature]\nlo = 0.1\nhigh = 0.5\n", "unknown key lo"),
    ("[head]\nchoices = []\n", "non-empty list"),
    ("[momentum]\nlow = 0.9\nhigh = 0.99\n", "no searched method has a field 'momentum'"),
    ("temperature = 0.5\n", "should be a table"),
    ("", "declares no knob"),
    ("[temperature\n", "not valid TOML"),
], ids=["reversed", "log-zero", "unknown-key", "no-choices", "unknown-field", "not-a-table", "empty", "bad-toml"])
def test_bad_space_files_are_refused(cli, refused, tmp_path, no_user_space, text, fragment):
    path = tmp_path / "space.toml"
    path.write_text(text)
    argv = ["search", "--method", "simclr", "--suite", "smoke", "--seeds", 0, "--out", tmp_path / "s", "--space", path]
    refused(cli(*argv), fragment, tmp_path / "s")
