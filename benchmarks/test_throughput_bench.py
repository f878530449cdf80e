"""End-to-end SimCLR training throughput: repbench's batched in-memory pipeline vs the per-image
pipeline (torchvision PIL transforms in 2 DataLoader workers) on the same ConvNet step, batch 256.

Both are measured in one process, one after the other, so the ratio is meaningful on a noisy machine.
Run: ``pytest benchmarks/test_throughput_bench.py --benchmark-only -s``. Target ratio: >= 2x.
"""

import tempfile

import pytest

from bench.config import RunConfig
from bench.data import load_dataset
from bench.throughput import build, measure, measure_per_image

STEPS, WARMUP = 20, 5


@pytest.fixture(scope="module")
def fmnist():
    try:
        return load_dataset("fashion-mnist")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available: {err}")


def test_simclr_throughput_vs_per_image(benchmark, fmnist):
    cfg = RunConfig(method="simclr", dataset="fashion-mnist", batch_size=256, protocols=())
    with tempfile.TemporaryDirectory() as tmp:
        base = measure_per_image(build(cfg, fmnist, tmp), STEPS, WARMUP, workers=2)
        ours = benchmark.pedantic(lambda: measure(build(cfg, fmnist, tmp), STEPS, WARMUP), rounds=1, iterations=1)
    ratio = ours.images_per_s / base.images_per_s
    benchmark.extra_info.update({"repbench_img_s": round(ours.images_per_s, 1),
                                 "per_image_img_s": round(base.images_per_s, 1), "ratio": round(ratio, 2),
                                 "repbench_data_wait": round(ours.data_wait_share, 4),
                                 "per_image_data_wait": round(base.data_wait_share, 4)})
    print(f"\nrepbench {ours.line()}\nper-image {base.line()}\nratio {ratio:.2f}x")
    assert ratio > 1.0, "the batched pipeline should never be slower than the per-image one"
