"""A loss that turns NaN/inf stops the run as `diverged` at that step, and the run is never scored."""

import json
import math

import pytest
import torch

from bench.config import RunConfig
from bench.report import aggregate, flatten
from bench.runner import run_one
from methods.simclr import SimCLR

TINY = dict(dataset="digits", per_class=20, test_per_class=5, epochs=2, batch_size=50, protocols=("knn",))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_the_run_unscored(tmp_path, monkeypatch, bad):
    calls = {"n": 0}
    real = SimCLR.training_step

    def step(self, batch):
        calls["n"] += 1
        out = real(self, batch)
        return {**out, "loss": out["loss"] * bad} if calls["n"] >= 3 else out  # finite for two steps, then not

    monkeypatch.setattr(SimCLR, "training_step", step)
    rec = run_one(RunConfig(method="simclr", **TINY), tmp_path, progress=False)
    assert rec["status"] == "diverged"
    assert rec["training"]["status_detail"] == {"step": 3, "epoch": 1, "loss": str(bad)}
    assert rec["training"]["steps"] == 2  # the two finite steps were taken, the third was not
    assert calls["n"] == 3  # and training stopped there
    assert rec["metrics"] == {}
    on_disk = json.loads(next(tmp_path.glob("runs/adhoc/*/record.json")).read_text())
    assert on_disk["status"] == "diverged" and on_disk["metrics"] == {}


def test_a_real_divergence_through_the_cli(cli, tmp_path):
    """lr 100 with weight decay 10: SGD multiplies the weights by about -195 per step until they overflow."""
    code, out, err = cli("run", "--method", "supervised", "--dataset", "digits", "--per-class", "100",
                         "--test-per-class", "5", "--epochs", "2", "--batch-size", "50", "--lr", "100",
                         "--weight-decay", "10", "--protocols", "knn", "--out", tmp_path, "--no-progress")
    assert code == 0
    rec = json.loads(next(tmp_path.glob("runs/adhoc/*/record.json")).read_text())
    assert rec["status"] == "diverged" and rec["metrics"] == {}
    assert 1 <= rec["training"]["status_detail"]["step"] <= 20
    assert "1x diverged" in out


def test_tables_flag_a_diverged_seed_and_do_not_average_it(tmp_path):
    ok = run_one(RunConfig(method="simclr", seed=0, **TINY), tmp_path, progress=False)
    diverged = json.loads(json.dumps(ok))
    diverged["config"]["seed"], diverged["status"], diverged["metrics"] = 1, "diverged", {}
    agg = aggregate(flatten([ok, diverged]))
    assert len(agg) == 1
    row = agg.iloc[0]
    assert row["flags"] == "1x diverged"
    assert row["knn.top1.mean"] == pytest.approx(ok["metrics"]["knn"]["top1"])  # the ok seed alone


def test_resuming_a_diverged_run_keeps_it_diverged(tmp_path, monkeypatch):
    monkeypatch.setattr(SimCLR, "training_step", lambda self, b: {"loss": torch.tensor(math.nan, requires_grad=True)})
    cfg = RunConfig(method="simclr", **TINY)
    run_one(cfg, tmp_path, progress=False)
    monkeypatch.undo()  # a healthy loss now: the checkpoint still says diverged, and resume must not retrain
    rec = run_one(cfg, tmp_path, progress=False, resume=True)
    assert rec["status"] == "diverged" and rec["metrics"] == {} and rec["training"]["steps"] == 0
