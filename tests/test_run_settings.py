"""Run settings added for paper tables: image size, protocol settings, measurement flags, BN/bias decay."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data import load_dataset
from bench.optim import param_groups
from bench.runner import measured_alike, run_one, validate
from methods.spec import Recipe

BASE = RunConfig(method="simclr", dataset="digits")
TINY = RunConfig(method="supervised", dataset="digits", epochs=1, batch_size=50, per_class=10, test_per_class=5,
                 protocols=("knn",), deterministic=True)


def test_new_fields_at_their_defaults_keep_every_older_key():
    # The key of a default config, as written by the code before these fields existed.
    assert BASE.key() == "ca628676"
    assert replace(BASE, protocol_args={"knn": {"temperatures": [0.1]}}, knn_every=3, online_linear=True).key() == BASE.key()


@pytest.mark.parametrize("change", [{"image_size": 32}, {"recipe": Recipe(decay_norm_bias=True)}])
def test_settings_that_change_the_model_change_the_key(change):
    assert replace(BASE, **change).key() != BASE.key()
    assert replace(BASE, **change).legacy_key() != BASE.legacy_key()


@pytest.mark.parametrize("args, words", [
    ({"knn": {"bogus": 1}}, "protocol_args.knn.bogus is not a setting of the knn protocol"),
    ({"knn": {"seed": 1}}, "protocol_args.knn.seed"),
    ({"nope": {}}, "unknown protocol"),
])
def test_protocol_settings_are_checked_before_anything_runs(args, words):
    with pytest.raises(UsageError, match=words):
        validate(replace(BASE, protocol_args=args))


def test_protocol_settings_must_be_tables_and_finite():
    with pytest.raises(UsageError, match="should be a table"):
        replace(BASE, protocol_args={"knn": 3})
    with pytest.raises(UsageError, match="not a finite number"):
        replace(BASE, protocol_args={"knn": {"temperatures": [float("nan")]}})


def test_protocol_settings_reach_the_protocol(tmp_path):
    cfg = replace(TINY, protocol_args={"knn": {"variants": [["cosine", "weighted", [7]]], "temperatures": [0.1]}})
    metrics = run_one(cfg, tmp_path, progress=False)["metrics"]
    assert set(metrics) == {"knn_k7_t0.1"}
    assert metrics["knn_k7_t0.1"]["temperature"] == 0.1 and metrics["knn_k7_t0.1"]["k"] == 7


def test_a_record_is_reused_only_when_it_measured_the_same(tmp_path):
    rec = run_one(TINY, tmp_path, progress=False)["config"]
    assert measured_alike(rec, TINY)
    for change in ({"protocols": ("linear",)}, {"protocol_args": {"knn": {"temperatures": [0.1]}}},
                   {"knn_every": 1}, {"online_linear": True}):
        assert not measured_alike(rec, replace(TINY, **change)), change
    older = {k: v for k, v in rec.items() if k not in ("protocol_args", "knn_every", "online_linear")}
    assert measured_alike(older, TINY)  # a record written before these fields existed


def test_image_size_resizes_a_fixed_size_dataset():
    ds = load_dataset("digits", per_class=2, test_per_class=1, image_size=16)
    assert ds.train_x.shape[1:] == (1, 16, 16) and ds.test_x.shape[-1] == 16 and ds.train_x.dtype == torch.uint8


def test_run_records_the_image_size(tmp_path):
    rec = run_one(replace(TINY, image_size=12), tmp_path, progress=False)
    assert rec["data"]["image_size"] == 12 and rec["config"]["image_size"] == 12


@pytest.mark.parametrize("flag", ["4", "2000", "x"])
def test_bad_image_size_flag_is_one_line(capsys, tmp_path: Path, flag):
    out = tmp_path / "out"
    assert main(["run", "--method", "simclr", "--dataset", "digits", "--image-size", flag, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--image-size" in err and not out.exists()


def test_decay_norm_bias_puts_every_parameter_under_decay():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    exempting = param_groups(net, 0.1, Recipe())
    decaying = param_groups(net, 0.1, Recipe(decay_norm_bias=True))
    assert sorted(len(g["params"]) for g in exempting) == [1, 3]
    assert len(decaying) == 1 and len(decaying[0]["params"]) == 4 and decaying[0]["weight_decay"] == 0.1
