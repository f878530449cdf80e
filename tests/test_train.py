"""The training loop: it learns, checkpoints atomically, resumes to the same state, and flags trouble."""

import pytest
import torch

import methods
from bench.config import Recipe, RunConfig
from bench.data import load_dataset
from bench.optim import LARS, lr_factor
from bench.pipeline import context
from bench.train import CHECKPOINT, COLLAPSE_STD_RATIO, Trainer, collapse_stats, seed_everything
from methods.base import make_config


def _trainer(tmp_path, method="simclr", epochs=2, **kw):
    ds = load_dataset("digits", per_class=40)
    cfg = RunConfig(method=method, dataset="digits", epochs=epochs, batch_size=64, protocols=(), **kw)
    seed_everything(cfg.seed)
    cls = methods.METHODS.get(method)
    m = cls(context(cfg, ds), make_config(cls, cfg.method_args))
    return Trainer(m, ds, cfg, tmp_path, progress=False)


def test_supervised_learns_and_meter_counts(tmp_path):
    t = _trainer(tmp_path, "supervised", epochs=4, recipe=Recipe(lr=0.2))
    state = t.fit()
    losses = [h["loss"] for h in state.history]
    assert state.status == "ok" and len(losses) == 4
    assert losses[-1] < losses[0]
    s = t.meter.summary()
    assert s["images"] == 4 * 6 * 64 and s["images_per_s"] > 0 and 0 <= s["data_wait_share"] < 1
    assert (tmp_path / CHECKPOINT).exists()


def test_resume_reaches_the_same_weights(tmp_path):
    full = _trainer(tmp_path / "a", epochs=2)
    full.fit()
    first = _trainer(tmp_path / "b", epochs=2)
    first.method.train()  # stop after one epoch, as a killed run would, by running it by hand
    first.run_epoch(0)
    first.state.epoch = 1
    first.save()
    resumed = _trainer(tmp_path / "b", epochs=2)
    torch.manual_seed(12345)  # a resumed run must not depend on the RNG state it starts with
    resumed.fit(resume=True)
    for (k, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_diverged_run_is_marked(tmp_path):
    t = _trainer(tmp_path, "simclr", epochs=2)
    t.method.training_step = lambda batch: {"loss": torch.tensor(float("nan"), requires_grad=True)}
    state = t.fit()
    assert state.status == "diverged" and state.status_detail["step"] == 1


def test_collapse_watchdog_flags_a_constant_encoder(tmp_path):
    t = _trainer(tmp_path, "simclr")
    probe = t.probe
    healthy = collapse_stats(t.method, probe)
    t.method.embed = lambda x: torch.ones(len(x), 16) + 1e-6 * torch.randn(len(x), 16)
    collapsed = collapse_stats(t.method, probe)
    assert healthy["embed_std_ratio"] > 2 * COLLAPSE_STD_RATIO  # even an untrained head is not flagged
    assert collapsed["embed_std_ratio"] < COLLAPSE_STD_RATIO / 10


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    opt = LARS([{"params": [w], "weight_decay": 0.0}], lr=1.0, momentum=0.0, eta=0.001)
    w.grad = torch.full((4, 4), 0.5)
    opt.step()
    # step = lr * eta * ||w|| / ||g|| * g = 0.001 * 8 / 2 * 0.5 = 0.002
    assert torch.allclose(w, torch.full((4, 4), 2.0 - 0.002))
