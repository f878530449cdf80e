"""SyncBN as an option (RunConfig.sync_bn, `repbench run --sync-bn/--no-sync-bn`, presets' sync_bn): on (the default),
2 gloo ranks train the 1-process model; off, each rank normalises its own half of the batch and the model differs.
The key of a config that leaves it on is the key it had before the option existed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ddp_harness import assert_same, make_case, run_ranks, run_single

from bench import presets
from bench.cli import main
from bench.commands import ddp_flags
from bench.config import RunConfig, _keyed

TINY = ["--method", "simclr", "--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1",
        "--batch-size", "50", "--no-progress"]


@pytest.fixture(scope="module")
def runs():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on shared cores: see tests/test_ddp_equality.py
    on = make_case("simclr")
    off = replace(on, cfg=replace(on.cfg, sync_bn=False))
    multi_on, multi_off = run_ranks([on, off], world=2)
    yield {"single": run_single(on), "on": multi_on, "off": multi_off}
    torch.set_num_threads(before)


def test_sync_bn_on_gives_the_one_process_model(runs):
    assert_same(runs["single"], runs["on"])


def test_sync_bn_off_normalises_each_rank_alone(runs):
    single, off = runs["single"], runs["off"]
    assert abs(off["losses"][0] - single["losses"][0]) > 1e-3, (off["losses"], single["losses"])
    worst = max(float((off["params"][n] - p).abs().max()) for n, p in single["params"].items())
    assert worst > 1e-3, f"parameters within {worst} of the 1-process run's: BatchNorm was synchronised anyway"


def test_the_option_is_keyed_only_when_off():
    cfg = RunConfig(method="simclr", dataset="digits")
    assert replace(cfg, sync_bn=True).key() == cfg.key()
    assert replace(cfg, sync_bn=False).key() != cfg.key()
    assert "sync_bn" not in _keyed(cfg.to_dict())  # hashed as before the field existed


def given(monkeypatch, tmp_path, flags: list[str]) -> list[RunConfig]:
    """The configs `repbench run FLAGS` would train, stopped before anything runs."""
    seen: list[RunConfig] = []
    monkeypatch.setattr(ddp_flags, "run_rank", lambda execute, configs, out, a: seen.extend(configs) or 0)
    assert main(["run", *flags, "--out", str(tmp_path / "out")]) == 0
    return seen


@pytest.mark.parametrize("flag,expected", [([], True), (["--sync-bn"], True), (["--no-sync-bn"], False)])
def test_the_flag_sets_the_config(monkeypatch, tmp_path, flag, expected):
    (cfg,) = given(monkeypatch, tmp_path, [*TINY, *flag])
    assert cfg.sync_bn is expected


SYNCED = [n for n in presets.names() if presets.read(presets.path_of(n)).get("sync_bn")]


def test_multi_gpu_solo_presets_say_synced_bn():
    """solo-learn trains its ImageNet-100 runs on 2 GPUs with sync_batchnorm: True (sources/solo-learn.toml)."""
    assert sorted(n for n in presets.names() if n.startswith("solo-imagenet100-")) == SYNCED


@pytest.mark.parametrize("flag,expected", [([], True), (["--no-sync-bn"], False)])
def test_a_preset_gives_the_default_and_the_flag_overrides_it(monkeypatch, tmp_path, flag, expected):
    (cfg,) = given(monkeypatch, tmp_path, ["--preset", SYNCED[0], "--set", "dataset=digits", *flag])
    assert cfg.sync_bn is expected
