"""A job of several tasks (`--gpus-per-node G`, one rank each) gets torchrun's environment from submitit and trains
as one DDP run: two CPU ranks through submitit's LocalExecutor (gloo), one record, written by rank 0.

Apart from tests/test_submitit_local.py to keep each file short: two ranks import torch and join a process group.
"""

from __future__ import annotations

import pytest

RUN = ["run", "--method", "simclr", "--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1",
       "--batch-size", "50", "--protocols", "knn", "--device", "cpu", "--no-progress"]


@pytest.fixture
def one_thread(monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")


def test_two_task_local_job_is_one_ddp_run(cli, tmp_path, one_thread):
    out = tmp_path / "out"
    code, table, err = cli(*RUN, "--launcher", "local", "--gpus-per-node", 2, "--out", out)
    assert code == 0, err
    assert "simclr" in table
    [record] = out.glob("runs/adhoc/*/record.json")
    [pickle] = (out / "submitit").glob("*_submitted.pkl")
    job_id = pickle.name.split("_")[0]
    logs = [(out / "submitit" / f"{job_id}_{k}_log.out").read_text() + (out / "submitit" / f"{job_id}_{k}_log.err").read_text()
            for k in (0, 1)]  # submitit's log names for task k
    assert "global_rank=1(2)" in logs[1] and "global_rank=0(2)" in logs[0]
    # Without torchrun's environment each task would be a whole run of its own, and both would evaluate.
    assert "ok knn" in logs[0] and "ok knn" not in logs[1]  # rank 0 alone evaluates and writes the record
