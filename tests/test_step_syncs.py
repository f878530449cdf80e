"""The training step never makes the host wait on the device (bench/steps.py): no reads of tensor values per step,
a non-finite loss still stops the run at its step without touching the weights, and --precision picks the
autocast and gradient scaler it names."""

import math
from dataclasses import replace

import pytest
import torch

import methods
from bench.config import RunConfig, TrainOptions
from bench.core.errors import UsageError
from bench.data import load_dataset
from bench.runner import build_method, context, run_one
from bench.steps import Guard, precision_for
from bench.train import Trainer
from methods.base import make_config
from methods.spec import UNIFIED_RECIPE

# The calls that bring one tensor value to the host: on CUDA each waits for the device. (tolist is left out: the
# augmentation draws its jitter order with it from a host generator, which never waits on a device.)
READS = ("item", "__float__", "__int__", "__bool__")
DIGITS = "digits"


@pytest.fixture(scope="module")
def ds():
    return load_dataset(DIGITS, per_class=12, test_per_class=2)


def sgd_methods() -> list[str]:
    # CLIP trains on captions, which digits has none of.
    return [n for n in methods.METHODS.names() if methods.METHODS.get(n).trained_by == "sgd" and n != "clip"]


def _trainer(ds, tmp_path, method="simclr", batch_size=20, **cfg) -> Trainer:
    config = RunConfig(method=method, dataset=DIGITS, epochs=1, batch_size=batch_size, protocols=(), **cfg)
    return Trainer(build_method(config, ds), ds, config, tmp_path, progress=False, opts=TrainOptions(log_every=10**6))


def count_reads(monkeypatch) -> dict[str, int]:
    counts = {"n": 0}
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("method", sgd_methods())
def test_host_reads_do_not_grow_with_the_steps(tmp_path, ds, monkeypatch, method):
    """One epoch of 6 steps and one of 3 read tensor values equally often: the reads happen at the epoch's end
    (losses, collapse statistics), none per step."""
    reads = {}
    for batch in (20, 40):
        trainer = _trainer(ds, tmp_path / str(batch), method, batch)
        counts = count_reads(monkeypatch)
        trainer.fit()
        monkeypatch.undo()
        reads[trainer.steps_per_epoch] = counts["n"]
        assert trainer.state.step == trainer.steps_per_epoch  # tiny runs may be flagged collapsed, never diverged
    assert set(reads) == {6, 3}
    assert reads[6] == reads[3], reads


def test_no_reads_inside_the_steps_between_log_intervals(tmp_path, ds, monkeypatch):
    trainer = _trainer(ds, tmp_path, "supervised")
    step, batch = Trainer.step, Trainer.batch
    inside = {"n": 0}
    counts = count_reads(monkeypatch)

    def watched(fn):
        def run(self, *a):
            before = counts["n"]
            out = fn(self, *a)
            inside["n"] += counts["n"] - before
            return out
        return run

    monkeypatch.setattr(Trainer, "step", watched(step))
    monkeypatch.setattr(Trainer, "batch", watched(batch))
    trainer.fit()
    assert counts["n"] > 0 and inside["n"] == 0


def _diverging(monkeypatch, at: int) -> None:
    calls = {"n": 0}
    real = methods.METHODS.get("simclr").training_step

    def step(self, batch):
        calls["n"] += 1
        out = real(self, batch)
        return {**out, "loss": out["loss"] * math.nan} if calls["n"] >= at else out

    monkeypatch.setattr(methods.METHODS.get("simclr"), "training_step", step)


@pytest.mark.parametrize("optimizer,precision", [("sgd", "bf16"), ("adamw", "fp32"), ("lars", "fp32"), ("sgd", "fp16")])
def test_a_non_finite_step_is_skipped_on_the_device(tmp_path, ds, monkeypatch, optimizer, precision):
    """When the host learns late (a GPU's flag still in flight), the steps after the first non-finite one still
    leave the weights as the last finite step made them: fused optimisers, the others, and the fp16 scaler."""
    def trained(where, late: bool) -> Trainer:
        _diverging(monkeypatch, at=3)
        if late:
            monkeypatch.setattr(Guard, "poll", lambda self: False)
        cfg = RunConfig(method="simclr", dataset=DIGITS, epochs=1, batch_size=20, protocols=(), precision=precision,
                        recipe=replace(UNIFIED_RECIPE, optimizer=optimizer))
        trainer = Trainer(build_method(cfg, ds), ds, cfg, where, progress=False, opts=TrainOptions(log_every=10**6))
        trainer.fit()
        monkeypatch.undo()
        return trainer

    prompt, late = trained(tmp_path / "prompt", False), trained(tmp_path / "late", True)
    for t in (prompt, late):
        assert t.state.status == "diverged"
        assert t.state.status_detail == {"step": 3, "epoch": 1, "loss": "nan"} and t.state.step == 2
    kept = dict(prompt.method.named_parameters())
    for name, p in late.method.named_parameters():
        assert torch.isfinite(p).all(), name
        assert torch.equal(p, kept[name]), name


@pytest.mark.parametrize("precision,native,dtype,scaler", [
    ("fp32", True, None, False), ("bf16", True, torch.bfloat16, False), ("bf16", False, None, False),
    ("fp16", False, torch.float16, True), ("fp16", True, torch.float16, True)])
def test_precision_picks_autocast_and_scaler(monkeypatch, precision, native, dtype, scaler):
    monkeypatch.setattr("bench.steps.native_bf16", lambda device: native)
    got = precision_for(precision, True, torch.device("cpu"), float32_on_cpu=False)
    assert (got.dtype, got.scaler) == (dtype, scaler)
    assert precision_for(precision, False, torch.device("cpu"), False).dtype is None  # amp=False: older configs


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_step_runs_under_the_precision_asked_for(tmp_path, ds, monkeypatch, precision):
    seen = []
    real = methods.METHODS.get("supervised").training_step

    def step(self, batch):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(self, batch)

    monkeypatch.setattr(methods.METHODS.get("supervised"), "training_step", step)
    trainer = _trainer(ds, tmp_path, "supervised", precision=precision)
    trainer.fit()
    assert seen and set(seen) == {trainer.precision.dtype}
    assert (trainer.scaler is not None) == (precision == "fp16")
    assert trainer.summary()["precision"] == trainer.precision.name and trainer.state.status == "ok"
    if precision == "fp16":
        assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.scaler.get_scale() > 0


def test_precision_is_keyed_only_when_not_the_default():
    base = RunConfig(method="simclr", dataset=DIGITS)
    assert RunConfig(method="simclr", dataset=DIGITS, precision="bf16").key() == base.key()
    assert len({base.key(), *(RunConfig(method="simclr", dataset=DIGITS, precision=p).key() for p in ("fp16", "fp32"))}) == 3
    with pytest.raises(UsageError, match="precision"):
        RunConfig(method="simclr", dataset=DIGITS, precision="fp8")


def test_the_record_says_how_the_step_ran(tmp_path, ds):
    cfg = RunConfig(method="simclr", dataset=DIGITS, epochs=1, batch_size=40, protocols=(), precision="fp32")
    rec = run_one(cfg, tmp_path, progress=False, ds=ds)
    assert {k: rec["training"][k] for k in ("precision", "grad_scaler", "compiled", "autocast_bf16")} == \
        {"precision": "fp32", "grad_scaler": False, "compiled": False, "autocast_bf16": False}
    assert rec["throughput"]["images"] == 120 and rec["throughput"]["images_per_s"] > 0


def test_compile_reaches_the_step(tmp_path, ds, monkeypatch):
    """Inductor takes minutes to compile on this 2-core CPU, so the test compiles with dynamo's eager backend:
    the step the loop calls is the compiled one, and the record says so."""
    compiled = []
    real = torch.compile

    def compile_eager(fn, **kw):
        compiled.append(fn)
        return real(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    cfg = RunConfig(method="simclr", dataset=DIGITS, epochs=1, batch_size=40, protocols=())
    cls = methods.METHODS.get("simclr")
    trainer = Trainer(cls(context(cfg, ds), make_config(cls, {})), ds, cfg, tmp_path, progress=False,
                      opts=TrainOptions(compile=True))
    trainer.fit()
    assert len(compiled) == 1 and compiled[0] == trainer.method.training_step
    assert trainer.summary()["compiled"] is True and trainer.state.status == "ok"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: on a CPU nothing waits on a device")
def test_a_cuda_step_never_synchronises(tmp_path, ds, monkeypatch):
    """torch's sync debug mode raises at any host synchronisation inside the optimiser steps between reads."""
    step = Trainer.step

    def strict(self, batch):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(self, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "step", strict)
    trainer = _trainer(ds, tmp_path, "simclr", device="cuda")
    trainer.fit()
    assert trainer.state.step == trainer.steps_per_epoch and trainer.meter.images > 0
