"""One rank of a 2-process torchrun job SIGKILLed after its first checkpoint (digits, 300 images, 3 epochs of 6
steps, fp32, gloo on the CPU):

(a) `repbench run --nproc 2 ... --resume`: the job ends with a clear last line saying to rerun with --resume; the
    rerun finishes from the checkpoint with the record and weights of an uninterrupted run;
(b) `torchrun --max-restarts 1 --nproc-per-node 2 -m bench run ... --resume`: torchrun restarts the ranks, which
    resume from the last checkpoint and finish with that same result.

The uninterrupted run is one process: a 2-rank run equals it to float32 round-off (tests/test_ddp_run.py).
Slow: about 90 s for the file here (4 torchrun starts of 2 ranks, on 2 cores shared with other work).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_ddp_run import numbers

from bench.cli import main
from bench.store import load_checkpoint, read_json

RUN = ["run", "--method", "simclr", "--dataset", "digits", "--per-class", "30", "--test-per-class", "5", "--epochs",
       "3", "--batch-size", "50", "--protocols", "knn", "--no-progress", "--precision", "fp32", "--resume"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 300


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc, Linux)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def rank_pid(job: int, rank: int) -> int | None:
    """The process of ``rank`` among ``job``'s descendants: torchrun sets RANK in each worker's environment."""
    for pid in descendants(job):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return pid
    return None


def kill_after_first_checkpoint(job: subprocess.Popen, out: Path, rank: int = 1) -> int:
    """SIGKILL ``rank`` once epoch 1's checkpoint is written (and the job not finished); returns the epoch seen."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and job.poll() is None:
        ckpts = list(out.glob("runs/*/*/checkpoint.pt"))
        pid = rank_pid(job.pid, rank)
        if ckpts and pid is not None:
            os.kill(pid, signal.SIGKILL)
            epoch = load_checkpoint(ckpts[0])["epoch"]
            assert epoch < 3, "the job finished before the kill: nothing was interrupted"
            return epoch
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint within {TIMEOUT_S} s (job exit {job.poll()}): {job.communicate()[1][-2000:]}")


def run_dir(out: Path) -> Path:
    (d,) = [p.parent for p in out.glob("runs/*/*/record.json")]
    return d


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    assert main([*RUN, "--out", str(out)]) == 0
    return run_dir(out)


def assert_same_result(got: Path, want: Path) -> None:
    assert got.name == want.name
    r, w = read_json(got / "record.json"), read_json(want / "record.json")
    assert r["status"] == "ok" and r["training"]["steps"] == w["training"]["steps"] == 18
    assert r["training"]["world_size"] == 2
    assert [h["loss"] for h in r["training"]["history"]] == pytest.approx([h["loss"] for h in w["training"]["history"]],
                                                                          rel=1e-4)
    assert numbers(r["metrics"]) == pytest.approx(numbers(w["metrics"]), rel=1e-4, abs=1e-6)
    m, ref = load_checkpoint(got / "checkpoint.pt")["model"], load_checkpoint(want / "checkpoint.pt")["model"]
    assert m.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(m[k], ref[k], rtol=1e-3, atol=1e-4, msg=lambda msg, k=k: f"{k}: {msg}")


def test_killed_rank_ends_the_job_and_resume_finishes_it(tmp_path, uninterrupted):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "bench", *RUN, "--nproc", "2", "--out", str(out)]
    job = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kill_after_first_checkpoint(job, out)
        _, err = job.communicate(timeout=TIMEOUT_S)
    finally:
        job.kill()
    assert job.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("repbench: error: rank 1 ") and "killed by SIGKILL" in last and "--resume" in last, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not list(out.glob("runs/*/*/record.json")), "a killed job wrote a record"
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_result(run_dir(out), uninterrupted)


def test_torchrun_max_restarts_continues_from_the_last_checkpoint(tmp_path, uninterrupted):
    out = tmp_path / "restarts"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts", "1", "--nproc-per-node", "2",
           "-m", "bench", *RUN, "--out", str(out)]
    job = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        epoch = kill_after_first_checkpoint(job, out)
        _, err = job.communicate(timeout=TIMEOUT_S)
    finally:
        job.kill()
    assert job.returncode == 0, err[-3000:]
    assert epoch >= 1
    assert_same_result(run_dir(out), uninterrupted)
