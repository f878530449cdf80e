"""RunConfig.key(): what changes a trained model, and the migration from the key that hashed every field."""

import json
from dataclasses import replace

import pytest

from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.experiments import SUITES
from bench.experiments.check import DEFAULT_BASELINE, label
from bench.runner import run_dir_for, run_one
from bench.store import load_checkpoint, save_checkpoint
from bench.train import CHECKPOINT


def test_labels_leave_the_key_and_inputs_stay_in_it():
    cfg = RunConfig(method="simclr", dataset="digits")
    assert replace(cfg, suite="quick", protocols=("knn",)).key() == cfg.key()
    for change in ({"seed": 1}, {"epochs": 2}, {"method_args": {"temperature": 0.2}}, {"device": "cuda"},
                   {"recipe_name": "paper"}):
        assert replace(cfg, **change).key() != cfg.key(), change
    assert cfg.legacy_key() != replace(cfg, suite="quick").legacy_key()  # the old key hashed the labels too


def test_the_committed_baseline_carries_the_legacy_keys_of_the_ci_suite():
    baseline = json.loads(DEFAULT_BASELINE.read_text())["runs"]
    configs = SUITES.get("ci")()
    assert {label(c) for c in configs} == set(baseline)
    for c in configs:
        assert baseline[label(c)]["config_key"] in c.accepted_keys()


def test_a_run_folder_and_checkpoint_under_the_legacy_key_are_found_and_resumed(tmp_path):
    cfg = RunConfig(method="supervised", dataset="digits", epochs=1, batch_size=50, per_class=10, test_per_class=5,
                    protocols=("knn",), deterministic=True)
    rec = run_one(cfg, tmp_path, progress=False)
    current = run_dir_for(cfg, tmp_path)
    legacy = current.with_name(cfg.run_id(cfg.legacy_key()))
    current.rename(legacy)  # as written before the key changed: folder name and checkpoint carry the old key
    state = load_checkpoint(legacy / CHECKPOINT)
    save_checkpoint(legacy / CHECKPOINT, {**state, "config_key": cfg.legacy_key()})
    assert run_dir_for(cfg, tmp_path) == legacy
    again = run_one(cfg, tmp_path, resume=True, progress=False)
    assert again["metrics"]["knn"]["top1"] == rec["metrics"]["knn"]["top1"] and again["training"]["steps"] == 2
    assert not current.exists() and (legacy / "record.json").exists()
    other = replace(cfg, seed=1)
    save_checkpoint(legacy / CHECKPOINT, {**state, "config_key": other.legacy_key()})
    with pytest.raises(UsageError, match="another configuration"):
        run_one(cfg, tmp_path, resume=True, progress=False)
