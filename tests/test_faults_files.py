"""Fault injection on what a run leaves on disk: crafted checkpoints, kills at random moments, file modes, strict JSON.

- A checkpoint is data, never code: pickled payloads that would run code (each one creates a marker file when
  unpickled the unsafe way, which the test shows first) are refused with one line, exit 2, by `run --resume` and by
  `plot`, and the marker is never created.
- SIGKILL at seeded random moments of `repbench run`, then `--resume`: the run finishes, its record is strict JSON,
  and no temp file outlives it.
- Output files honour the umask; records never hold NaN or Infinity.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.store import CHECKPOINT_FORMAT, HOST, REPO_ROOT, load_checkpoint, save_checkpoint, write_json
from bench.train import CHECKPOINT

TINY = ["--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1", "--batch-size", "50",
        "--no-progress"]
RUN = ["run", "--method", "simclr", *TINY, "--protocols", ""]
AE = ["run", "--method", "autoencoder", *TINY, "--protocols", ""]


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


class Payload:
    """Unpickling it calls ``func(*args)``: what a crafted checkpoint would do on a weights_only=False load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Payload]:
    m = str(marker)
    return {
        "builtins.open": Payload(builtins.open, m, "w"),
        "builtins.exec": Payload(builtins.exec, f"open({m!r}, 'w').close()"),
        "os.system": Payload(os.system, f"touch {m}"),
        "subprocess.call": Payload(subprocess.call, ["touch", m]),
        "pathlib.touch": Payload(Path.touch, Path(m)),
    }


PAYLOADS = list(_payloads(Path("x")))


def _inner_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _wrap(inner: bytes) -> bytes:
    """An outer layer exactly as repbench writes it, checksum included: the crafter computes it too."""
    buf = io.BytesIO()
    torch.save({"repbench_checkpoint": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(inner).hexdigest(),
                "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8)}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny simclr run and a finished autoencoder run (a decoder, so `plot` reads its checkpoint)."""
    from bench.cli import main
    out = tmp_path_factory.mktemp("finished")
    assert main([*RUN, "--out", str(out)]) == 0
    assert main([*AE, "--out", str(out)]) == 0
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def _ckpt(out: Path, method: str) -> Path:
    return next(out.glob(f"runs/adhoc/{method}-*/{CHECKPOINT}"))


def _one_line_exit_2(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err, err


@pytest.mark.parametrize("where", ["inner-state", "inside-model-dict", "outer-layer"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_checkpoint_is_refused_by_resume(finished, tmp_path, cli, payload, where):
    out, marker = _copy(finished, tmp_path), tmp_path / "pwned"
    evil = _payloads(marker)[payload]
    ckpt = _ckpt(out, "simclr")
    real = load_checkpoint(ckpt)
    if where == "inner-state":
        live = _inner_bytes({**real, "rng": evil})
    elif where == "inside-model-dict":
        live = _inner_bytes({**real, "model": {**real["model"], "x": evil}})
    else:
        live = _inner_bytes({"repbench_checkpoint": CHECKPOINT_FORMAT, "sha256": "0", "payload": evil})
    data = live if where == "outer-layer" else _wrap(live)
    ckpt.write_bytes(data)
    # The payload is live: unpickled the unsafe way, it does what a crafter wants.
    torch.load(io.BytesIO(live), weights_only=False)
    assert marker.exists()
    marker.unlink()

    records = sorted(p.read_bytes() for p in out.rglob("record.json"))
    code, _, err = cli(*RUN, "--out", out, "--resume")
    _one_line_exit_2(code, err, str(ckpt))
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert ckpt.read_bytes() == data, "the refused checkpoint was changed"
    assert sorted(p.read_bytes() for p in out.rglob("record.json")) == records


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_checkpoint_is_refused_by_plot(finished, tmp_path, cli, payload):
    out, marker = _copy(finished, tmp_path), tmp_path / "pwned"
    ckpt = _ckpt(out, "autoencoder")
    real = load_checkpoint(ckpt)
    ckpt.write_bytes(_wrap(_inner_bytes({**real, "epoch": _payloads(marker)[payload]})))
    png = tmp_path / "r.png"
    code, _, err = cli("plot", "reconstructions", "--run", ckpt.parent, "--out", png)
    _one_line_exit_2(code, err, "refused")
    assert not marker.exists() and not png.exists()


def test_a_checkpoint_of_the_numpy_era_is_refused_with_its_format(tmp_path):
    """Format 1 pickled numpy RNG state, which a safe load cannot rebuild: it is named, not half-loaded."""
    p = tmp_path / CHECKPOINT
    inner = _inner_bytes({"model": {}, "epoch": 1})
    buf = io.BytesIO()
    torch.save({"repbench_checkpoint": 1, "sha256": hashlib.sha256(inner).hexdigest(),
                "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8)}, buf)
    p.write_bytes(buf.getvalue())
    with pytest.raises(Exception, match="format 1, this repbench reads format 2"):
        load_checkpoint(p)


def test_checkpoints_round_trip_every_training_state_type_under_the_safe_load(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "epoch": 3, "rng": {"python": random.getstate(), "t": torch.get_rng_state()},
             "history": [{"loss": 1.5, "status": "ok"}], "status_detail": {}, "meter": {"images": 3}}
    save_checkpoint(tmp_path / CHECKPOINT, state)
    back = load_checkpoint(tmp_path / CHECKPOINT)
    assert back["rng"]["python"] == state["rng"]["python"] and back["history"] == state["history"]


# --------------------------------------------------------------------------- kills at random moments

KILL_ARGS = ["run", "--method", "simclr", "--dataset", "digits", "--per-class", "30", "--test-per-class", "10",
             "--epochs", "3", "--batch-size", "50", "--protocols", "knn", "--no-progress"]


def _launch(out: Path, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "bench", *KILL_ARGS, "--out", str(out)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def run_seconds(tmp_path_factory) -> float:
    """How long the uninterrupted command takes here and now (start-up included): kills are drawn within it. The
    shorter of two runs: the first pays for cold caches, and a kill drawn within a slow run's time can miss a fast one."""
    times = []
    for _ in range(2):
        t0 = time.monotonic()
        proc = _launch(tmp_path_factory.mktemp("whole"), resume=False)
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
        times.append(time.monotonic() - t0)
    return min(times)


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_a_random_moment_then_resume_finishes_clean(tmp_path, run_seconds, seed):
    """Two kills at seeded random moments (start-up, training, checkpoint writes, evaluation, the record write),
    then --resume runs to the end: exit 0, a strict-JSON record, a loadable checkpoint, no temp file left."""
    rng = random.Random(seed)
    out, interrupted = tmp_path / "out", []
    for _ in range(2):
        proc = _launch(out, resume=True)
        time.sleep(rng.uniform(0.2, 0.9) * run_seconds)
        interrupted.append(proc.poll() is None)
        proc.kill()
        proc.wait()
    assert any(interrupted), "both kills came after the run had ended: nothing was injected"
    proc = _launch(out, resume=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    rec = _strict(next(out.glob("runs/adhoc/*/record.json")).read_text())
    assert rec["status"] == "ok" and 0 <= rec["metrics"]["knn"]["top1"] <= 1
    assert load_checkpoint(next(out.glob(f"runs/adhoc/*/{CHECKPOINT}")))["epoch"] == 3
    assert not list(out.rglob("*.tmp")), "a killed write's temp file outlived the resume"


def test_a_rerun_without_resume_removes_a_dead_writers_record_temp(tmp_path, cli):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    out = tmp_path / "out"
    assert cli(*RUN, "--out", out)[0] == 0
    run_dir = next(out.glob("runs/adhoc/*"))
    stale = run_dir / f".record.json.{HOST}.{dead}.abc123.tmp"
    stale.write_text("{")
    assert cli(*RUN, "--out", out, "--force")[0] == 0
    assert not stale.exists()


# --------------------------------------------------------------------------- modes and strict JSON

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027, 0o077], ids=oct)
def test_outputs_honour_the_umask(tmp_path, umask):
    out = tmp_path / "out"
    code = ("import os, sys; os.umask(int(sys.argv[1], 8)); from bench.cli import main; "
            "raise SystemExit(main(sys.argv[2:]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, oct(umask), *RUN, "--out", str(out)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"record.json", CHECKPOINT, "table.md"}
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, f"{p.name}: {oct(p.stat().st_mode & 0o777)}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_records_are_strict_json_whatever_a_metric_holds(tmp_path, value):
    p = tmp_path / "record.json"
    write_json(p, {"metrics": {"knn": {"top1": value, "per_class": [0.5, value]}}, "t": torch.tensor([value])})
    back = _strict(p.read_text())
    assert back["metrics"]["knn"] == {"top1": None, "per_class": [0.5, None]} and back["t"] == [None]
