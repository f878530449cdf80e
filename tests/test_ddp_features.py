"""Evaluation under DDP: each of 2 gloo ranks extracts its contiguous slice of the images (uneven slices too) and
rank 0 receives the features in image order, equal to one process's to float32 round-off; the other rank gets None.
The end-to-end check (a --nproc 2 record's metrics equal the 1-process record's) is in tests/test_ddp_run.py."""

from __future__ import annotations

import io
import os
import queue
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from bench import ddp
from bench.config import RunConfig
from bench.data import load_dataset
from bench.features import extract, extract_sharded
from bench.runner import build_method

CFG = RunConfig(method="simclr", dataset="digits", per_class=10, test_per_class=5, amp=False,
                backbone_args={"widths": (8, 16, 16, 32)})
SIZES = (50, 47, 1)  # even, uneven slices, fewer images than ranks


def encoder_and_images():
    ds = load_dataset(CFG.dataset, None, CFG.per_class, CFG.test_per_class, CFG.image_size)
    return build_method(CFG, ds).encoder, ds.test_x, *ds.mean_std()


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    try:
        ddp.init_from_env("cpu")
        encoder, images, mean, std = encoder_and_images()
        # The ranks train with synced BN: evaluation must work on the converted module too.
        encoder = ddp.convert_sync_batchnorm(encoder)
        out = [extract_sharded(encoder, images[:n], mean, std) for n in SIZES]
        buf = io.BytesIO()
        torch.save(out, buf)
        results.put((rank, buf.getvalue(), None))
    except BaseException:  # noqa: BLE001 -- reported to the parent, which fails the test with it
        results.put((rank, None, traceback.format_exc()))
    finally:
        ddp.shutdown()


def sharded_on_two_ranks() -> dict[int, list]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # the ranks start with torch imported (see tests/ddp_harness.py)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, results), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in procs:
            try:
                rank, blob, error = results.get(timeout=120)
            except queue.Empty:
                raise AssertionError("the 2 ranks did not report within 120 s") from None
            assert error is None, f"rank {rank} failed:\n{error}"
            got[rank] = torch.load(io.BytesIO(blob), weights_only=True)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    return got


@pytest.fixture(scope="module")
def two_ranks():
    return sharded_on_two_ranks()


@pytest.mark.parametrize("i,n", list(enumerate(SIZES)))
def test_sharded_features_equal_one_process(two_ranks, i, n):
    encoder, images, mean, std = encoder_and_images()
    one = extract(encoder, images[:n], mean, std)
    assert extract_sharded(encoder, images[:n], mean, std).equal(one)  # one process: extract itself
    assert two_ranks[1][i] is None  # only rank 0 receives them
    got = two_ranks[0][i]
    assert got.shape == one.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, one, rtol=1e-4, atol=1e-5)
