"""`repbench throughput`: steady-state training images/s after warm-up, and the data-wait share; with --table, the
method x backbone x input-size table with FLOPs and MFU, written to <out>/<card>.md and .json."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.commands import run_flags
from bench.commands.args import int_range
from bench.config import RunConfig
from bench.core.device import resolve_device
from bench.core.errors import UsageError
from bench.data import DATASETS, load_dataset
from bench.runner import validate
from bench.store import ensure_writable_dir
from bench.throughput import build, measure, measure_per_image
from bench.throughput_table import PRESETS, Settings, run_table, table_methods, write_table
from methods import METHODS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="method to measure (required without --table; no default)")
    p.add_argument("--backbone", default="convnet", help="backbone without --table (default convnet)")
    p.add_argument("--dataset", help="dataset (required without --table; with --table default fashion-mnist)")
    p.add_argument("--batch-size", type=int_range(2, 1 << 20), default=256, help="images per step (default 256)")
    p.add_argument("--steps", type=int_range(1, 100_000), default=30, help="timed steps (default 30)")
    p.add_argument("--warmup", type=int_range(0, 10_000), default=5, help="untimed steps first (default 5)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when a GPU is visible, else cpu)")
    p.add_argument("--data-root", help="folder holding the dataset files (default: the usual lookup)")
    p.add_argument("--per-image", action="store_true",
                   help="also measure the per-image pipeline (PIL transforms in DataLoader workers) and print the ratio "
                        "(default off)")
    p.add_argument("--workers", type=int_range(0, 64), default=2, help="DataLoader workers for --per-image (default 2)")
    p.add_argument("--table", action="store_true",
                   help="measure every method x backbone preset, eager and compiled, with FLOPs and MFU (default off)")
    p.add_argument("--methods", help="--table: comma-separated methods (default every SGD-trained method)")
    p.add_argument("--presets", help=f"--table: comma-separated backbone presets (default all: {', '.join(PRESETS)})")
    p.add_argument("--no-compile", action="store_true", help="--table: eager rows only, no torch.compile (default off)")
    p.add_argument("--matmul-size", type=int_range(64, 65_536),
                   help="--table: side of the bf16 matmul that measures the peak (default 8192 on cuda, 1024 on cpu)")
    p.add_argument("--out", default="results/gpu", help="--table: folder for <card>.md and .json (default results/gpu)")


def run(a: argparse.Namespace) -> int:
    a.device = run_flags.pick_device(a.device)
    return run_table_mode(a) if a.table else run_single(a)


def run_single(a: argparse.Namespace) -> int:
    if not a.method or not a.dataset:
        raise UsageError("give --method and --dataset, or --table for the whole table")
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


def listed(value: str | None, flag: str, known: list[str]) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"{flag} {value!r}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(known)}")
    return names


def run_table_mode(a: argparse.Namespace) -> int:
    if a.per_image or a.backbone != "convnet" or a.method:
        raise UsageError("--table measures its own methods and backbones; use --methods/--presets, not "
                         "--method/--backbone/--per-image")
    trainable = [m for m in METHODS.names() if METHODS.get(m).trained_by == "sgd"]
    methods = table_methods(listed(a.methods, "--methods", trainable))
    presets = listed(a.presets, "--presets", list(PRESETS)) or list(PRESETS)
    dataset = a.dataset or "fashion-mnist"
    DATASETS.get(dataset)
    device = resolve_device(a.device)
    out = Path(a.out)
    ensure_writable_dir(out)
    settings = Settings(dataset, a.data_root, a.device, a.batch_size, a.steps, a.warmup, not a.no_compile,
                        a.matmul_size or (8192 if device.type == "cuda" else 1024))
    table = run_table(methods, presets, settings, log=lambda line: print(line, file=sys.stderr, flush=True),
                      save=lambda partial: write_table(partial, out))
    md, js = write_table(table, out)
    print(md.read_text(), end="")
    print(f"table written to {md} and {js}", file=sys.stderr)
    return 0
