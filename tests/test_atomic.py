"""Atomic writes: readers see a whole old or a whole new file, never half; concurrent writers never clobber.

Every record, table, checkpoint and cache file goes through bench.store.atomic_write_bytes (temp file in the same
folder, fsync, os.replace). These tests hammer it from several processes, kill a writer mid-write, and run two
`repbench run` processes plus a table into one results folder.
"""

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench.core.errors import UsageError
from bench.store import REPO_ROOT, atomic_write_bytes, ensure_writable_dir, load_checkpoint, save_checkpoint

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
SIZE = 1 << 19  # 512 KiB: many pages per file, so a torn write would show


def _write_loop(path, tag: int, n: int, ready) -> None:
    for i in range(n):
        atomic_write_bytes(path, bytes([tag]) * SIZE)
        if i == 0:
            ready.set()


def _writer(path, tag: int, n: int):
    """A forked process writing ``path`` n times (only os calls: safe to fork); ``.ready`` is set once it writes."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_write_loop, args=(path, tag, n, ready))
    proc.start()
    proc.ready = ready
    return proc


def _whole(data: bytes) -> bool:
    return len(data) == SIZE and data == data[:1] * SIZE


def test_concurrent_writers_and_a_reader_never_see_half_a_file(tmp_path):
    path = tmp_path / "shared.bin"
    writers = [_writer(path, tag, 20) for tag in (1, 2, 3)]
    seen, reads = set(), 0
    while any(w.is_alive() for w in writers):
        if path.exists():
            data = path.read_bytes()
            assert _whole(data), f"torn read: {len(data)} bytes, first {data[:1]!r}"
            seen.add(data[0])
            reads += 1
    for w in writers:
        w.join()
    assert all(w.exitcode == 0 for w in writers)
    assert _whole(path.read_bytes()) and reads > 0 and seen <= {1, 2, 3}
    assert not list(tmp_path.glob(".*.tmp")), "temp files left behind"


def test_a_writer_killed_mid_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "record.bin"
    atomic_write_bytes(path, bytes([7]) * SIZE)
    leftovers = 0
    for delay in (0.0, 0.003, 0.01, 0.03):
        w = _writer(path, 9, 10_000)
        assert w.ready.wait(60)  # it is in its write loop now
        time.sleep(delay)
        os.kill(w.pid, signal.SIGKILL)
        w.join()
        assert w.exitcode == -signal.SIGKILL
        data = path.read_bytes()
        assert _whole(data) and data[0] in (7, 9)
        leftovers = len(list(tmp_path.glob(".*.tmp")))
    # A kill between mkstemp and rename leaves that writer's hidden temp file (nothing else can clean it safely
    # while other writers may be mid-write); it is never read.
    assert leftovers <= 4


def test_write_failure_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UsageError, match="No space left on device; free some space"):
        atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot write"):
        atomic_write_bytes(tmp_path / "file" / "x.json", b"{}")


def test_writable_dir_probe_leaves_nothing(tmp_path):
    ensure_writable_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="not a writable directory"):
        ensure_writable_dir("/proc/repbench")  # root may write anywhere os.access looks, but not here


def test_checkpoint_checksum_catches_what_torch_load_would_miss(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(100_000, dtype=torch.float32)}, "epoch": 1})
    assert load_checkpoint(path)["epoch"] == 1
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # one bit inside the weights: torch.load alone returns a changed tensor silently
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="corrupt"):
        load_checkpoint(path)


def test_two_runs_and_a_table_into_one_results_folder(tmp_path):
    out = tmp_path / "results"

    def bench(*args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    runs = [bench("run", "--method", "raw", "--dataset", "digits", "--protocols", "knn", "--seed", s, "--out", out,
                  "--no-progress") for s in (0, 1)]
    deadline = time.monotonic() + 300
    while not list(out.rglob("record.json")):  # a table over the folder while the other run may still write
        assert time.monotonic() < deadline and any(r.poll() is None for r in runs)
        time.sleep(0.05)
    table = bench("table", "--runs", out / "runs", "--out", out)
    for p in (*runs, table):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-1000:]
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("record.json"))]
    assert sorted(r["config"]["seed"] for r in records) == [0, 1]
    assert all("knn" in r["metrics"] for r in records)
    assert "| raw " in (out / "table.md").read_text()
    assert not list(out.rglob("*.tmp")), "temp files left behind"
