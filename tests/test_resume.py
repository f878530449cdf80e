"""Kill -9 at any moment, rerun with --resume, get the same numbers: the process test and the per-method state test.

The process test kills real `python -m bench run` processes (SIGKILL: no handler, no flush) after the first
checkpoint, right after the second, and in the middle of the last epoch, resumes each time, and compares the
final record and weights with an uninterrupted run's, bit for bit. The per-method test checks that every
registered method keeps all of its training state (EMA teachers, queues, banks, centers) in its state dict.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import methods
from bench.config import RunConfig
from bench.data import load_dataset
from bench.runner import context
from bench.store import HOST, REPO_ROOT, load_checkpoint
from bench.train import CHECKPOINT, Trainer, seed_everything
from methods.base import make_config

EPOCHS = 4
ARGS = ["run", "--method", "simclr", "--dataset", "digits", "--per-class", "30", "--test-per-class", "20",
        "--epochs", str(EPOCHS), "--batch-size", "50", "--protocols", "knn", "--deterministic", "--no-progress",
        "--log-every", "1"]


def _launch(out: Path, resume: bool = False) -> subprocess.Popen:
    # The thread count of this process (the reference runs here): float sums split over threads differ in the last
    # bit, so the determinism contract is "same command, same thread count".
    n = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "bench", *ARGS, "--out", str(out)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ckpt(out: Path) -> Path | None:
    found = list(out.glob(f"runs/adhoc/*/{CHECKPOINT}"))
    return found[0] if found else None


def _stamp(out: Path):
    p = _ckpt(out)
    try:
        s = p.stat() if p else None
    except FileNotFoundError:
        return None
    return (s.st_ino, s.st_mtime_ns) if s else None


def _wait_for_new_checkpoints(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120) -> list[float]:
    """Block until ``n`` checkpoints newer than the current one are written; returns when each appeared."""
    seen, times, deadline = _stamp(out), [], time.monotonic() + timeout
    while len(times) < n:
        assert proc.poll() is None, f"run ended early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no new checkpoint in time"
        now = _stamp(out)
        if now is not None and now != seen:
            seen = now
            times.append(time.monotonic())
        time.sleep(0.005)
    return times


def _wait_for_step_in_epoch(proc: subprocess.Popen, out: Path, epoch: int, timeout: float = 120) -> None:
    """Block until steps.csv (one row per step with --log-every 1) holds a step of ``epoch``: a kill then lands inside
    that epoch, whatever the machine's load, where a timed sleep could land after the run had finished."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"run ended early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"no step of epoch {epoch} logged in time"
        for path in out.glob("runs/adhoc/*/steps.csv"):
            lines = path.read_text().splitlines()[1:]
            if any(line.split(",")[1] == str(epoch) for line in lines if line.count(",") >= 1):
                return
        time.sleep(0.002)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()[-2000:]


def _epoch(out: Path) -> int:
    return load_checkpoint(_ckpt(out))["epoch"]


def _result(out: Path) -> tuple[dict, dict]:
    rec = json.loads(next(out.glob("runs/adhoc/*/record.json")).read_text())
    return rec, load_checkpoint(_ckpt(out))["model"]


def test_sigkill_at_several_points_then_resume_gives_identical_metrics(tmp_path, cli):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    try:  # the uninterrupted run, in this process: the comparison also crosses process boundaries
        assert cli(*ARGS, "--out", ref_out)[0] == 0
    finally:
        torch.use_deterministic_algorithms(False)

    run = _launch(out)
    _wait_for_new_checkpoints(run, out, 1)
    _kill(run)  # 1: just after the first checkpoint
    assert _epoch(out) == 1

    run = _launch(out, resume=True)
    _wait_for_new_checkpoints(run, out, 1)
    _kill(run)  # 2: just after the second
    assert _epoch(out) == 2

    run = _launch(out, resume=True)
    _wait_for_new_checkpoints(run, out, 1)
    _wait_for_step_in_epoch(run, out, EPOCHS)
    _kill(run)  # 3: in the middle of the last epoch (its first step logged, 5 to go)
    assert _epoch(out) == 3 and not list(out.glob("runs/adhoc/*/record.json")), "the kill missed the last epoch"

    _finish(_launch(out, resume=True))
    (rec, weights), (ref_rec, ref_weights) = _result(out), _result(ref_out)
    assert rec["status"] == ref_rec["status"] == "ok"
    assert rec["metrics"] == ref_rec["metrics"]
    assert rec["training"]["history"] == ref_rec["training"]["history"]
    assert rec["training"]["steps"] == ref_rec["training"]["steps"] == EPOCHS * 6
    for k, v in ref_weights.items():
        assert torch.equal(v, weights[k]), k
    assert not list(out.rglob("*.tmp")), "a killed save's temp file outlived the resume"


def _trainer(method: str, run_dir: Path, seed_before_build: int) -> Trainer:
    ds = load_dataset("digits", per_class=12, test_per_class=2)
    cfg = RunConfig(method=method, dataset="digits", epochs=2, batch_size=40, protocols=(), deterministic=True)
    seed_everything(cfg.seed, True)
    torch.manual_seed(seed_before_build)  # anything a checkpoint forgets now differs between the two builds
    cls = methods.METHODS.get(method)
    return Trainer(cls(context(cfg, ds), make_config(cls, {})), ds, cfg, run_dir, progress=False)


TRAINABLE = [m for m, cls in methods.METHODS.items() if cls.trained_by == "sgd"]


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("method", TRAINABLE)
def test_checkpoint_holds_every_piece_of_training_state(tmp_path, method, restore_determinism):
    """Stop after epoch 1, rebuild from another seed, resume: epoch 2 must end exactly where an unbroken run ends."""
    full = _trainer(method, tmp_path / "full", 0)
    full.fit()
    first = _trainer(method, tmp_path / "cut", 0)
    first.method.train()
    first.run_epoch(0)
    first.state.epoch = 1
    first.save()
    resumed = _trainer(method, tmp_path / "cut", 99)
    resumed.fit(resume=True)
    assert full.state.history == resumed.state.history
    want, got = full.method.state_dict(), resumed.method.state_dict()
    assert want.keys() == got.keys()
    for k in want:  # bit for bit; NaN where a method keeps one (InstDisc's unset normaliser) equals NaN
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True, msg=f"{method}: {k} differs after resume")


def test_resume_removes_temp_files_of_interrupted_saves(tmp_path, restore_determinism):
    t = _trainer("simclr", tmp_path, 0)
    t.save()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a pid whose process has exited
    stale = [tmp_path / f".{CHECKPOINT}.{HOST}.{dead}.k1ll3d.tmp", tmp_path / f".record.json.{HOST}.{dead}.x.tmp",
             tmp_path / ".record.json.nopid.tmp"]
    live = tmp_path / f".record.json.{HOST}.{os.getpid()}.x.tmp"  # a writer that is still running keeps its file
    elsewhere = tmp_path / f".record.json.other-host.{dead}.x.tmp"  # a pid of another machine says nothing here
    for p in (*stale, live, elsewhere):
        p.write_bytes(b"half a file")
    assert _trainer("simclr", tmp_path, 0).restore()
    assert not any(p.exists() for p in stale) and live.exists() and elsewhere.exists()
