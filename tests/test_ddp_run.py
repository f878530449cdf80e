"""`repbench run --nproc 2` (torchrun, gloo, 2 CPU ranks) on digits: one record, written by rank 0, with the
1-process run's metrics (features extracted sharded over the ranks), and a final model equal to the 1-process run's
with the same global batch (every rank draws the global batch's views with the same RNG and keeps its half; fp32,
so equal to float32 round-off). Plus its bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.commands import ddp_flags
from bench.store import load_checkpoint, read_json

TINY = ["--method", "simclr", "--dataset", "digits", "--per-class", "10", "--test-per-class", "5", "--epochs", "1",
        "--batch-size", "50", "--protocols", "knn", "--no-progress", "--precision", "fp32"]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("runs/*/*/record.json"))


def numbers(tree, prefix: str = "") -> dict[str, float]:
    """Every number of a record's metrics, by its dotted path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in numbers(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in numbers(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: float(tree)} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


# Slow: about 60 s here (torchrun starts 2 ranks that each import torch, on 2 shared cores).
def test_two_ranks_give_one_record_and_the_one_process_model(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "bench", "run", *TINY, "--nproc", "2", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(["run", *TINY, "--out", str(tmp_path / "one")]) == 0
    (d2,), (d1,) = run_dirs(tmp_path / "two"), run_dirs(tmp_path / "one")
    assert d1.name == d2.name  # the same config (and key) as the 1-process run
    r1, r2 = read_json(d1 / "record.json"), read_json(d2 / "record.json")
    assert r2["training"]["world_size"] == 2 and "world_size" not in r1["training"]
    assert r2["training"]["steps"] == r1["training"]["steps"] == 2
    m1, m2 = load_checkpoint(d1 / "checkpoint.pt")["model"], load_checkpoint(d2 / "checkpoint.pt")["model"]
    assert m1.keys() == m2.keys()
    for k in m1:
        torch.testing.assert_close(m2[k], m1[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # Evaluation: each rank extracted half the features, rank 0 scored them; every metric is the 1-process one.
    assert numbers(r2["metrics"]) == pytest.approx(numbers(r1["metrics"]), rel=1e-4, abs=1e-6)
    assert r2["metrics"]["knn"]["top1"] == pytest.approx(r1["metrics"]["knn"]["top1"])
    assert r2["training"]["history"][0]["loss"] == pytest.approx(r1["training"]["history"][0]["loss"], rel=1e-5)
    assert two.stdout.count("| simclr") == 1  # the table, printed by rank 0 only


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_with_one_gpu(monkeypatch):
    """A machine with one CUDA GPU, as far as `repbench run` checks."""
    monkeypatch.setattr("bench.runner.resolve_device", lambda device: None)
    monkeypatch.setattr(ddp_flags.torch.cuda, "device_count", lambda: 1)


BAD = [
    ("batch-not-divisible", lambda mp: ["--nproc", "2", "--batch-size", "51"], "must divide evenly over 2"),
    ("batch-not-divisible-nodes", lambda mp: ["--nproc", "2", "--nnodes", "2", "--rdzv-endpoint", "localhost:1",
                                              "--batch-size", "50"], "must divide evenly over 4"),
    ("more-ranks-than-gpus", lambda mp: cpu_with_one_gpu(mp) or ["--nproc", "2", "--device", "cuda"],
     "more than the 1 visible GPU"),
    ("unreachable-rendezvous", lambda mp: ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint",
                                           f"127.0.0.2:{closed_port()}"], "cannot reach the rendezvous"),
    ("rendezvous-without-port", lambda mp: ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "nodeA"],
     "should be HOST:PORT"),
    ("nproc-with-jobs", lambda mp: ["--nproc", "2", "--jobs", "2"], "--jobs does not combine with --nproc"),
]


@pytest.mark.parametrize("name,extra,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_ddp_input_is_one_line(tmp_path, capsys, monkeypatch, name, extra, fragment):
    out = tmp_path / "out"
    argv = [*TINY, "--out", str(out)]
    flags = extra(monkeypatch)
    if "--batch-size" in flags:
        i = argv.index("--batch-size")
        argv[i:i + 2] = []
    code = main(["run", *argv, *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("repbench: error: ") and fragment in err, err
    assert "Traceback" not in err
    assert not out.exists()
