"""`repbench throughput`: steady-state training images/s after warm-up, and the data-wait share."""

from __future__ import annotations

import argparse
import tempfile

from bench.commands.args import int_range
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.data import load_dataset
from bench.runner import validate
from bench.throughput import build, measure, measure_per_image
from methods import METHODS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True)
    p.add_argument("--backbone", default="convnet")
    p.add_argument("--dataset", required=True)
    p.add_argument("--batch-size", type=int_range(2, 1 << 20), default=256)
    p.add_argument("--steps", type=int_range(1, 100_000), default=30)
    p.add_argument("--warmup", type=int_range(0, 10_000), default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root")
    p.add_argument("--per-image", action="store_true",
                   help="also measure the per-image pipeline (PIL transforms in DataLoader workers) and print the ratio")
    p.add_argument("--workers", type=int_range(0, 64), default=2, help="DataLoader workers for --per-image")


def run(a: argparse.Namespace) -> int:
    cfg = RunConfig(method=a.method, dataset=a.dataset, backbone=a.backbone, batch_size=a.batch_size, device=a.device,
                    protocols=(), suite="throughput")
    validate(cfg)
    if METHODS.get(a.method).trained_by != "sgd":
        raise UsageError(f"method {a.method!r} does not train with SGD; throughput is measured on trainable methods")
    ds = load_dataset(a.dataset, a.data_root)
    if a.batch_size > len(ds.train_y):
        raise UsageError(f"--batch-size {a.batch_size} is larger than the {len(ds.train_y)} training images; lower it")
    with tempfile.TemporaryDirectory() as tmp:
        ours = measure(build(cfg, ds, tmp), a.steps, a.warmup)
        print(f"repbench: {ours.line()}")
        if a.per_image:
            base = measure_per_image(build(cfg, ds, tmp), a.steps, a.warmup, a.workers)
            print(f"per-image: {base.line()}")
            print(f"ratio: {ours.images_per_s / base.images_per_s:.2f}x")
    return 0
