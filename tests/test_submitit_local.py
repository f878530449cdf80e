"""`--launcher local|slurm` (bench/launch.py): a command as a submitit job, requeued from its checkpoint on preemption.

submitit's LocalExecutor runs the same Checkpointable job Slurm would; a preemption is what Slurm sends, USR2 to the
job's process, after its first checkpoint. The requeued job must resume (``--resume``) and end with the record of an
uninterrupted run. Launchers this machine cannot use are one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import submitit

from bench import launch
from bench.store import load_checkpoint
from bench.train import CHECKPOINT

EPOCHS = 3
RUN = ["run", "--method", "simclr", "--dataset", "digits", "--per-class", "30", "--test-per-class", "5", "--epochs",
       str(EPOCHS), "--batch-size", "50", "--protocols", "knn", "--deterministic", "--no-progress"]


@pytest.fixture
def one_thread(monkeypatch):
    # The job is another process: same thread count as this one, or float sums may differ in the last bit.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")


def record(out: Path) -> dict:
    return json.loads(next(out.glob("runs/adhoc/*/record.json")).read_text())


def job_id(folder: Path) -> str:
    deadline = time.monotonic() + 60
    while not list(folder.glob("*_submitted.pkl")):
        assert time.monotonic() < deadline, "no job was submitted"
        time.sleep(0.01)
    return next(folder.glob("*_submitted.pkl")).name.split("_")[0]


def task_pid(controller: str) -> int:
    """The job's own process: the only child of submitit's local controller (Slurm signals the job step the same)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError("the local job never started")


def wait_for_checkpoint(out: Path, running: threading.Thread, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while not list(out.glob(f"runs/adhoc/*/{CHECKPOINT}")):
        assert running.is_alive(), "the job ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.005)
    return load_checkpoint(next(out.glob(f"runs/adhoc/*/{CHECKPOINT}")))["epoch"]


def test_preempted_local_job_resumes_to_the_uninterrupted_record(cli, tmp_path, one_thread):
    ref, out = tmp_path / "ref", tmp_path / "job"
    assert cli(*RUN, "--out", ref)[0] == 0  # uninterrupted, in this process: the comparison crosses processes too
    result = []
    running = threading.Thread(target=lambda: result.append(cli(*RUN, "--launcher", "local", "--out", out)))
    running.start()
    try:
        epoch = wait_for_checkpoint(out, running)
        jid = job_id(out / "submitit")
        os.kill(task_pid(jid), signal.SIGUSR2)  # preemption: submitit checkpoints the job and requeues it
    finally:
        running.join(300)
    [(code, table, err)] = result
    assert code == 0, err
    assert f"submitted local job {jid}" in err and "simclr" in table  # the job's results table, printed here
    job = submitit.LocalJob(out / "submitit", jid)
    log = (job.stdout() or "") + (job.stderr() or "")
    assert "this job is preempted" in log and "Requeued job" in log, log[-3000:]
    assert epoch < EPOCHS and job.submission().function.args.resume is True  # the requeued job ran with --resume

    rec, ref_rec = record(out), record(ref)
    assert rec["status"] == ref_rec["status"] == "ok"
    assert rec["metrics"] == ref_rec["metrics"]
    assert rec["training"]["history"] == ref_rec["training"]["history"]


@pytest.mark.parametrize("text, expect", [("90", 90), ("1:30:00", 90), ("1-00:00", 1440), ("10:30", 11),
                                          ("0-00:01:01", 2)])
def test_time_limits_in_slurm_forms(text, expect):
    assert launch.minutes(text) == expect


COMMANDS = {
    "run": ["run", "--method", "simclr", "--dataset", "digits", "--per-class", "10", "--test-per-class", "5",
            "--epochs", "1", "--batch-size", "50"],
    "search": ["search", "--method", "supervised", "--suite", "smoke", "--trials", "1", "--seeds", "0"],
    "ablate": ["ablate", "--grid", "smoke", "--scale", "smoke"],
}
BAD = {
    "slurm-not-found": (["--launcher", "slurm"], "Slurm was not found (no sbatch or srun on PATH)"),
    "slurm-not-found-says-local": (["--launcher", "slurm"], "or use --launcher local"),
    "no-submitit": (["--launcher", "local"], "needs submitit"),
    "nodes-without-launcher": (["--nodes", "2"], "add --launcher slurm"),
    "local-on-two-nodes": (["--launcher", "local", "--nodes", "2"], "--nodes 2"),
    "bad-time": (["--launcher", "local", "--time", "soon"], "--time 'soon'"),
    "time-under-a-minute": (["--launcher", "local", "--time", "0:30"], "under a minute"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD))
def test_unusable_launcher_is_one_line_and_writes_nothing(cli, refused, tmp_path, monkeypatch, command, case):
    flags, fragment = BAD[case]
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch here, whatever the machine has
    if case == "no-submitit":
        monkeypatch.setattr(launch, "submitit", None)  # what the module holds where `import submitit` failed
    refused(cli(*COMMANDS[command], *flags, "--out", tmp_path / "out"), fragment, tmp_path / "out")


@pytest.mark.parametrize("command", ["search", "ablate"])
@pytest.mark.parametrize("flags", [("--nodes", "2"), ("--gpus-per-node", "4")], ids=["nodes", "gpus"])
def test_only_run_spans_several_tasks(cli, refused, tmp_path, command, flags):
    refused(cli(*COMMANDS[command], "--launcher", "local", *flags, "--out", tmp_path / "out"), "runs as one process",
            tmp_path / "out")


def test_slurm_submission_asks_for_the_resources_given(cli, tmp_path, monkeypatch):
    # No cluster here: an `sbatch` that keeps the script submitit wrote and answers as Slurm does.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/script.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; the job step would call it
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, _, err = cli(*COMMANDS["run"], "--launcher", "slurm", "--nodes", 2, "--gpus-per-node", 4, "--partition", "gpu",
                       "--time", "1:30:00", "--out", tmp_path / "out")
    assert code == 0, err
    assert "submitted slurm job 4242" in err
    script = (tmp_path / "script.sh").read_text()
    for line in ("--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--time=90",
                 "--signal=USR2@120", "--requeue"):
        assert f"#SBATCH {line}\n" in script, script
    job = submitit.SlurmJob(tmp_path / "out" / "submitit" / "%j", "4242")
    args = job.submission().function.args
    assert isinstance(job.submission().function, launch.Job) and args.launcher is None and args.epochs == 1
