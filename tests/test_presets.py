"""Presets: published configurations as TOML data files, `repbench run --preset/--config/--set`, `repbench list presets`."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from bench import presets
from bench.cli import build_parser, main
from bench.commands.preset_flags import preset_config
from bench.core.errors import UsageError
from bench.runner import validate
from methods import METHODS
from methods.spec import Recipe

NAMES = presets.names()
SIMCLR = "lightly-cifar10-simclr-e200-b128"
TINY = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--batch-size", "50", "--no-progress"]


def parse(*argv: str):
    return build_parser("run").parse_args(["run", *argv])


def bad(capsys, argv: list[str], out: Path) -> str:
    """Run the CLI on bad input: exit 2, one line on stderr, no traceback, nothing written; the line."""
    assert main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("repbench: error: ") and "Traceback" not in err
    assert not out.exists()
    return err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def preset_text(**replace_lines: str) -> str:
    """The SimCLR preset's text with lines starting ``KEY =`` replaced (value None: removed)."""
    lines = presets.path_of(SIMCLR).read_text().splitlines()
    out = []
    for line in lines:
        key = line.partition(" =")[0]
        if key in replace_lines:
            if replace_lines[key] is not None:
                out.append(replace_lines[key])
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def test_lightly_cifar10_presets_are_shipped():
    methods = {presets.read(presets.path_of(n))["method"] for n in NAMES}
    assert {"simclr", "moco-v2", "byol", "simsiam", "barlowtwins", "dino", "swav"} <= methods
    assert len(NAMES) >= 14


@pytest.mark.parametrize("name", NAMES)
def test_preset_writes_out_every_field_and_builds_a_valid_config(name):
    data = presets.read(presets.path_of(name))
    cls = METHODS.get(data["method"])
    written = {k for k, v in asdict(cls.Config()).items() if v is not None}
    # Every option with a value is written out; an "auto" (None) option only where the source sets it.
    assert written <= set(data["method_args"]) <= set(asdict(cls.Config())), "every method option is written out"
    assert set(data["recipe"]) >= set(presets.RECIPE_REQUIRED)
    cfg = presets.to_config(data, f"preset:{name}")
    validate(cfg)
    assert cfg.recipe_name == f"preset:{name}" and cfg.protocols
    assert cfg.method_args == data["method_args"]


@pytest.mark.parametrize("name", NAMES)
def test_preset_has_a_published_value_and_source(name):
    pub = presets.read(presets.path_of(name))["published"]
    assert isinstance(pub["value"], float) and 0 <= pub["value"] <= 1
    assert pub["source"].strip() and pub["metric"].strip() and pub["published_lr"].strip()


def test_lr_is_the_base_rate_for_batch_256():
    """lightly scales 0.06 by batch/128 (SimSiam: unscaled), so repbench's base rate gives the same rate at the batch.
    (Every preset's rate is checked against its source's rule in tests/test_preset_sources.py.)"""
    for name in (n for n in NAMES if n.startswith("lightly-")):
        data = presets.read(presets.path_of(name))
        cfg = presets.to_config(data, name)
        if data["method"] in ("simsiam",):
            assert cfg.recipe.scaled_lr(cfg.batch_size) == pytest.approx(0.06)
        elif cfg.recipe.optimizer == "sgd":
            assert cfg.recipe.scaled_lr(cfg.batch_size) == pytest.approx(0.06 * cfg.batch_size / 128)


def test_set_overrides_and_run_flags_apply_on_top():
    cfg = preset_config(parse("--preset", SIMCLR, "--set", "recipe.lr=0.5", "--set", "method_args.temperature=0.2",
                              "--set", "epochs=3", "--seed", "7", "--per-class", "4"))
    assert (cfg.recipe.lr, cfg.method_args["temperature"], cfg.epochs, cfg.seed, cfg.per_class) == (0.5, 0.2, 3, 7, 4)
    assert cfg.recipe_name == f"preset:{SIMCLR}+custom"
    assert cfg.recipe.weight_decay == 5e-4 and cfg.backbone_args == {"small_stem": True}
    cfg = preset_config(parse("--preset", SIMCLR, "--set", "epochs=1", "--epochs", "2", "--lr", "0.3"))
    assert (cfg.epochs, cfg.recipe.lr, cfg.recipe_name) == (2, 0.3, f"preset:{SIMCLR}+custom")
    assert preset_config(parse("--preset", SIMCLR, "--set", "epochs=1")).recipe_name == f"preset:{SIMCLR}"


@pytest.mark.parametrize("pair,words", [
    ("recipe.foo=1", "recipe.foo"), ("nope=1", "nope"), ("published.value=1", "published.value"),
    ("method_args.nope=1", "nope"), ("method_args.temperature=NaN", "finite"), ("recipe.lr=1e999", "finite"),
    ("epochs=\"x\"", "epochs"), ("recipe.lr=\"fast\"", "lr"), ("protocols=\"knn\"", "protocols"),
    ("method_args.temperature=[1]", "temperature"), ("noequals", "KEY=VALUE")])
def test_bad_set_is_one_line(capsys, tmp_path, pair, words):
    assert words in bad(capsys, ["--preset", SIMCLR, "--set", pair], tmp_path / "out")


@pytest.mark.parametrize("argv,words", [
    (["--preset", "nope"], "list presets"), (["--set", "epochs=1"], "--preset"),
    (["--preset", SIMCLR, "--config", "x.toml"], "not both"), (["--preset", SIMCLR, "--suite", "quick"], "--suite"),
    (["--preset", SIMCLR, "--recipe", "paper"], "--recipe")])
def test_bad_flag_combinations_are_one_line(capsys, tmp_path, argv, words):
    assert words in bad(capsys, argv, tmp_path / "out")


def test_config_reads_a_user_file(tmp_path):
    path = write(tmp_path / "mine.toml", preset_text(epochs="epochs = 5", lr="lr = 0.25"))
    cfg = preset_config(parse("--config", str(path)))
    assert (cfg.epochs, cfg.recipe.lr, cfg.recipe_name, cfg.method) == (5, 0.25, "config:mine", "simclr")


@pytest.mark.parametrize("text,words", [
    (preset_text(epochs="epochs = 5\ncolour = 1"), "colour"),
    (preset_text(lr="lr = 0.1\nlearning_rate = 0.1"), "recipe.learning_rate"),
    (preset_text(value="value = 0.8\nerror = 0.1"), "published.error"),
    (preset_text(epochs=None), "missing key epochs"),
    (preset_text(lr=None), "missing key recipe.lr"),
    (preset_text(source=None), "missing key published.source"),
    ("method = \"simclr\"\nthis is not toml\n", "not valid TOML"),
    (b"\xff\xfe\x00junk".decode("latin-1"), "TOML"),
    (preset_text(temperature="temperature = 0.0"), "temperature"),
    (preset_text(protocols="protocols = \"knn\""), "protocols"),
    (preset_text(method="method = \"nope\""), "nope")])
def test_bad_config_file_is_one_line_naming_the_key(capsys, tmp_path, text, words):
    path = write(tmp_path / "bad.toml", text)
    err = bad(capsys, ["--config", str(path)], tmp_path / "out")
    assert words in err


def test_missing_config_file_is_one_line(capsys, tmp_path):
    assert "cannot read" in bad(capsys, ["--config", str(tmp_path / "none.toml")], tmp_path / "out")


def test_read_refuses_a_scalar_where_a_table_belongs(tmp_path):
    data = tomllib.loads(preset_text())
    data["recipe"] = 1
    with pytest.raises(UsageError, match="recipe should be a table"):
        presets.check_keys(data, "x.toml")


def test_list_presets(capsys):
    assert main(["list", "presets"]) == 0
    assert capsys.readouterr().out.split() == NAMES


def test_tiny_run_from_a_preset(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["run", "--preset", SIMCLR, "--set", "epochs=1", *TINY, "--out", str(out)]) == 0
    records = list(out.rglob("record.json"))
    assert len(records) == 1
    config = json.loads(records[0].read_text())["config"]
    assert (config["recipe_name"], config["backbone"], config["dataset"]) == (f"preset:{SIMCLR}", "resnet18", "digits")
    assert config["backbone_args"] == {"small_stem": True} and config["method_args"]["blur_p"] == 0.0
    capsys.readouterr()
    table = next(out.rglob("table.md")).read_text()  # every column (the terminal's table is the narrow one)
    assert "knn_k200_t0.1" in table and "monitor_knn.best" in table  # lightly's kNN, after training and its best epoch


def test_recipe_fields_known_to_the_loader_are_the_recipes():
    assert set(presets.RECIPE_KEYS) == {f.name for f in fields(Recipe)}
