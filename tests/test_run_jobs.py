"""`repbench run --jobs N`: N configs at once in worker processes, records identical to running them one by one.

Both sides run with one torch thread per process (OMP_NUM_THREADS=1 and torch.set_num_threads(1)): a float sum split
over a different number of threads may round differently, which is a thread setting, not a --jobs difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.config import RunConfig
from bench.runner import Options, run_many

TINY = dict(dataset="digits", per_class=10, test_per_class=5, epochs=1, batch_size=50, seed=0, protocols=("knn", "linear"),
            suite="jobs")
METHODS = ("simclr", "byol")


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by the spawned workers at start
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def comparable(rec: dict) -> dict:
    """What must not depend on how runs are scheduled: config, metrics and the training history."""
    training = {k: v for k, v in rec["training"].items() if k != "monitor_s"}
    return {"config": rec["config"], "metrics": rec["metrics"], "training": training, "status": rec["status"]}


def test_jobs_2_same_records_as_one_by_one(tmp_path: Path, one_thread) -> None:
    configs = [RunConfig(method=m, **TINY) for m in METHODS]
    serial = run_many(configs, tmp_path / "serial", Options(), jobs=1, log=lambda line: None)
    parallel = run_many(configs, tmp_path / "parallel", Options(), jobs=2, log=lambda line: None)
    assert list(parallel) == list(serial)  # in config order, whatever order the workers finish in
    for run_id in serial:
        assert serial[run_id]["metrics"]["knn"]["top1"] >= 0
        assert comparable(parallel[run_id]) == comparable(serial[run_id])
        assert (tmp_path / "parallel" / "runs" / "jobs" / run_id / "record.json").is_file()


def test_cli_jobs_flag_runs_and_records(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what --jobs would set for its workers, undone after the test
    code, _, err = cli("run", "--method", "simclr", "--dataset", "digits", "--per-class", "10", "--test-per-class", "5",
                       "--epochs", "1", "--batch-size", "50", "--protocols", "knn", "--no-progress", "--jobs", "2",
                       "--out", tmp_path)
    assert code == 0, err
    records = list(tmp_path.rglob("record.json"))
    assert len(records) == 1
    assert json.loads(records[0].read_text())["metrics"]["knn"]["top1"] >= 0


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_jobs_value_is_one_line(tmp_path: Path, cli, refused, value: str) -> None:
    out = tmp_path / "out"
    refused(cli("run", "--method", "simclr", "--dataset", "digits", "--jobs", value, "--out", out), "--jobs", out)
