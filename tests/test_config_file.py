"""`repbench config --run DIR` prints the file that reproduces a record; `run --config FILE` with dotted --set overrides
reads it back to the same config key. Every config of every registered suite makes the round trip."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.cli import build_parser
from bench.commands.config import config_text
from bench.commands.preset_flags import preset_config
from bench.config import RunConfig
from bench.experiments import SUITES
from bench.store import write_json

CONFIGS = [(f"{suite}-{i}", c) for suite in SUITES for i, c in enumerate(SUITES.get(suite)())]
TINY = ("--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50",
        "--protocols", "knn", "--no-progress", "--device", "cpu")


def from_file(path, *flags: str) -> RunConfig:
    return preset_config(build_parser("run").parse_args(["run", "--config", str(path), "--device", "cpu", *flags]))


def written(tmp_path, cfg: RunConfig):
    folder = tmp_path / "run"
    write_json(folder / "record.json", {"run_id": cfg.run_id(), "config": cfg.to_dict()})
    path = tmp_path / "again.toml"
    path.write_text(config_text(folder))
    return path


@pytest.mark.parametrize("cfg", [c for _, c in CONFIGS], ids=[n for n, _ in CONFIGS])
def test_every_suite_config_round_trips_to_its_key(tmp_path, cfg):
    cfg = replace(cfg, device="cpu")
    again = from_file(written(tmp_path, cfg))
    assert again.key() == cfg.key() and again.run_id() == cfg.run_id()
    assert again.protocols == cfg.protocols or cfg.protocols is None


def test_dotted_overrides_on_a_user_file(tmp_path):
    cfg = RunConfig(method="simclr", dataset="digits", per_class=10, device="cpu", method_args={"temperature": 0.5})
    path = written(tmp_path, cfg)
    again = from_file(path, "--set", "recipe.lr=0.1", "--set", "method_args.temperature=0.2", "--set", "seed=3")
    assert (again.recipe.lr, again.method_args["temperature"], again.seed) == (0.1, 0.2, 3)
    assert again.recipe_name == "unified+custom" and again.per_class == 10
    assert from_file(path, "--seed", "4", "--per-class", "7").per_class == 7


def test_a_trained_record_reruns_from_its_file_under_the_same_folder(cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli("run", "--method", "simclr", "--seed", "5", *TINY, "--out", out)
    assert code == 0, err
    run_dir = next(out.glob("runs/adhoc/*"))
    code, text, err = cli("config", "--run", run_dir)
    assert code == 0 and err == "" and text.startswith("# Reproduces "), err
    path = tmp_path / "c.toml"
    path.write_text(text)
    code, _, err = cli("run", "--config", path, *TINY[-3:], "--out", out)  # same key: the finished record is kept
    assert code == 0 and f"skipped {run_dir.name}: its finished record is {run_dir / 'record.json'}" in err, err
    assert json.loads((run_dir / "record.json").read_text())["config"]["seed"] == 5


@pytest.mark.parametrize("make,fragment", [
    (lambda d: d, "no record.json in"),
    (lambda d: (d / "record.json").write_text("{"), "cannot read"),
    (lambda d: (d / "record.json").write_text("[1]"), "holds no run record"),
    (lambda d: (d / "record.json").write_text('{"config": {"method": "simclr"}}'), "holds no valid run config"),
])
def test_config_of_a_folder_without_a_record_is_one_line(cli, refused, tmp_path, make, fragment):
    folder = tmp_path / "run"
    folder.mkdir()
    make(folder)
    refused(cli("config", "--run", folder), fragment, tmp_path / "nothing")


@pytest.mark.parametrize("line,fragment", [
    ("colour = 1", "unknown key colour"), ('recipe_name = 3', "recipe_name"), ('seed = "x"', "seed"),
    ("per_class = 0", "per_class"), ("epochs = 1.5", "epochs"),
])
def test_bad_key_or_type_in_a_user_file_is_one_line(cli, refused, tmp_path, line, fragment):
    cfg = RunConfig(method="simclr", dataset="digits", device="cpu")
    path = written(tmp_path, cfg)
    text = path.read_text()
    key = line.partition(" =")[0]
    kept = [t for t in text.splitlines() if not t.startswith(f"{key} =")]
    path.write_text("\n".join([kept[0], line, *kept[1:]]) + "\n")
    refused(cli("run", "--config", path, "--out", tmp_path / "out"), fragment, tmp_path / "out")
