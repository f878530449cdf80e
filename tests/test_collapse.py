"""Collapse signals (bench/collapse.py) on synthetic collapsed outputs, and the watchdog that records them per epoch."""

import math

import pytest
import torch

import methods
from bench import collapse
from bench.config import RunConfig
from bench.data import load_dataset
from bench.runner import context
from bench.train import Trainer, collapse_stats, seed_everything
from methods.base import make_config

N, D, K = 256, 64, 1024


def _verdict(**outputs):
    """The verdict on outputs that held at the previous epoch end too (a softmax collapse must persist)."""
    sig = collapse.signals(outputs)
    return (*collapse.verdict(sig, sig), sig)


def _trainer(tmp_path, method, epochs=1, **method_args):
    ds = load_dataset("digits", per_class=20)
    cfg = RunConfig(method=method, dataset="digits", epochs=epochs, batch_size=64, protocols=(), method_args=method_args)
    seed_everything(0)
    cls = methods.METHODS.get(method)
    return Trainer(cls(context(cfg, ds), make_config(cls, cfg.method_args)), ds, cfg, tmp_path, progress=False)


def test_uniform_collapse_is_named_uniform():
    same = torch.randn(1, K).expand(N, K)  # every raw output the same vector: the center, after centering
    uniform = torch.full((N, K), 1 / K)
    collapsed, reason, sig = _verdict(embedding=same, teacher_probs=uniform, student_probs=uniform)
    assert collapsed and reason.startswith("uniform: teacher entropy 6.9315 of max 6.9315")
    assert sig["kl_teacher_student"] == pytest.approx(0, abs=1e-6) and sig["embed_std_ratio"] < 1e-3


def test_the_raw_output_shows_what_the_centred_one_hides():
    # The case: every raw output is the center plus round-off; centred, it looks spread ("healthy").
    raw = torch.randn(1, K) + 1e-6 * torch.randn(N, K)
    assert collapse.std_ratio(raw - raw.mean(0)) > 0.9
    assert collapse.std_ratio(raw) < collapse.STD_RATIO_MIN / 100
    collapsed, reason, _ = _verdict(embedding=raw)
    assert collapsed and reason.startswith("std ratio")


def test_one_hot_collapse_is_named_one_hot():
    one_hot = torch.zeros(N, K)
    one_hot[:, 7] = 1
    student = torch.softmax(torch.randn(N, K), dim=1)
    collapsed, reason, sig = _verdict(embedding=torch.randn(N, K), teacher_probs=one_hot, student_probs=student)
    assert collapsed and reason.startswith("one-hot: teacher entropy 0.0000")
    assert sig["teacher_entropy"] == 0 and sig["kl_teacher_student"] > 0


def test_healthy_random_batches_are_not_flagged():
    z = torch.randn(N, D)
    teacher = torch.softmax(torch.randn(N, K) / 0.3, dim=1)
    student = torch.softmax(torch.randn(N, K) / 0.5, dim=1)
    collapsed, reason, sig = _verdict(embedding=z, teacher_probs=teacher, student_probs=student)
    assert not collapsed and reason == ""
    assert sig["embed_std_ratio"] == pytest.approx(1, abs=0.1) and sig["effective_rank"] > 0.8 * D
    # A sharp teacher whose samples are each one-hot, but on different outputs, is healthy, not one-hot collapse.
    sharp = torch.nn.functional.one_hot(torch.randint(K, (N,)), K).float()
    assert not _verdict(embedding=z, teacher_probs=sharp)[0]


def test_signal_values():
    p = torch.softmax(torch.randn(N, K), dim=1)
    assert collapse.kl_divergence(p, p) == pytest.approx(0, abs=1e-9)
    one_hot = torch.nn.functional.one_hot(torch.arange(N) % K, K).double()
    assert collapse.kl_divergence(one_hot, torch.full((N, K), 1 / K)) == pytest.approx(math.log(K))
    assert collapse.entropy(torch.full((N, K), 1 / K)) == pytest.approx(math.log(K))
    assert collapse.batch_entropy(one_hot[:4]) == pytest.approx(math.log(4))
    rank2 = torch.randn(N, 2) @ torch.randn(2, D)
    assert 1.5 < collapse.effective_rank(rank2) < 2.01
    assert collapse.effective_rank(torch.ones(N, D)) == pytest.approx(1)


def test_dino_records_the_softmax_signals_per_epoch(tmp_path):
    t = _trainer(tmp_path, "dino", epochs=2, n_local_crops=0)
    state = t.fit()
    assert len(state.history) == 2
    for h in state.history:
        assert h["max_entropy"] == pytest.approx(math.log(1024), abs=1e-4)
        assert 0 <= h["teacher_entropy"] <= h["teacher_batch_entropy"] <= h["max_entropy"]
        assert h["kl_teacher_student"] >= 0 and h["embed_std_ratio"] > 0


def test_dino_uniform_teacher_is_caught_on_its_raw_output(tmp_path):
    # The case: every raw teacher output is (nearly) the center, so the centred ones still look spread.
    t = _trainer(tmp_path, "dino")
    dino = t.method
    last = dino.teacher.target[1].mlp[-1]  # the bottleneck layer: a fixed direction plus round-off for every input
    with torch.no_grad():
        last.weight.mul_(1e-3)
        last.bias.normal_()
        dino.eval()
        dino.center.copy_(dino.teacher(t.probe).mean(0, keepdim=True))
    assert collapse.std_ratio(dino.embed(t.probe)) > 0.5  # what the watchdog used to watch: "healthy"
    sig = collapse_stats(dino, t.probe)
    collapsed, reason = collapse.verdict(sig, sig)
    assert collapsed and reason.startswith("uniform") and sig["embed_std_ratio"] < collapse.STD_RATIO_MIN


def test_a_softmax_collapse_must_persist_without_moving_back():
    uniform = collapse.signals({"embedding": torch.randn(N, D), "teacher_probs": torch.full((N, K), 1 / K)})
    leaving = {**uniform, "teacher_entropy": uniform["teacher_entropy"] - 1e-3}  # still >= 0.99 log K, but falling
    assert not collapse.verdict(uniform)[0]  # the first epoch: a fresh DINO head reads like this
    assert collapse.verdict(uniform, uniform)[0]
    assert not collapse.verdict(leaving, uniform)[0]


def test_a_collapsed_epoch_stops_training_with_its_reason(tmp_path):
    t = _trainer(tmp_path, "simclr", epochs=3)
    one_hot = torch.zeros(8, 16)
    one_hot[:, 0] = 1
    t.method.collapse_outputs = lambda images: {"embedding": torch.randn(8, 4), "teacher_probs": one_hot}
    state = t.fit()
    assert state.status == "collapsed" and len(state.history) == 2  # seen at two epoch ends, stopped at the second
    assert state.status_detail["reason"].startswith("one-hot") and state.status_detail["epoch"] == 2
    assert state.status_detail["teacher_entropy"] == 0


def test_features_shrinking_under_a_batchnorm_head_show_in_the_feature_signals():
    # Features at one point, varying along one other direction plus round-off; an affine-free BN rescales the head's
    # output back to unit variance, so the head reads spread (its outputs fall on +-one vector).
    direction, other = torch.randn(2, 1, D)
    features = direction + 1e-3 * torch.randn(N, 1) * other + 1e-7 * torch.randn(N, D)
    head = torch.nn.BatchNorm1d(D, affine=False)(features @ torch.randn(D, D))
    sig = collapse.signals({"embedding": head, "features": features})
    assert sig["embed_std_ratio"] > 0.5 and sig["feature_std_ratio"] < 0.01
    assert sig["feature_effective_rank"] < 2 and not collapse.verdict(sig, sig)[0]  # recorded, not a verdict


def test_training_records_the_backbone_feature_signals_per_epoch(tmp_path):
    trainer = _trainer(tmp_path, "simsiam", stop_gradient=False)
    entry = trainer.fit().history[-1]
    assert entry["feature_std_ratio"] > 0 and 1 <= entry["feature_effective_rank"] <= trainer.method.encoder.feature_dim
    assert entry == {**entry, **collapse_stats(trainer.method, trainer.probe)}
