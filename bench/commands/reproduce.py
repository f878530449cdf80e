"""`repbench reproduce --table NAME`: every cell of a published table run (or read back), beside the published numbers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.commands import run_flags
from bench.commands.args import float_range, int_range
from bench.commands.values import parse_pairs
from bench.core.errors import UsageError
from bench.reproduce import Request, plan, reproduce
from bench.runner import Options
from bench.store import ensure_writable_dir

MAX_SEED = 2**31 - 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True, help="a published table (see 'repbench list tables')")
    p.add_argument("--methods", help="comma-separated methods: only these rows (default: every row)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds per row (default 0,1,2)")
    p.add_argument("--scale", type=float_range(0, 1, open_lo=True), default=1.0, metavar="F",
                   help="run epochs x F (at least 1), 0 < F <= 1, to smoke a table in minutes (default 1)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when a GPU is visible, else cpu)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")
    p.add_argument("--out", default="results", help="results directory (default results/)")
    p.add_argument("--per-class", type=int_range(1), help="train on this many images per class (default: the preset's data, all)")
    p.add_argument("--test-per-class", type=int_range(1), help="test on this many images per class (default all)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field of every row's preset: epochs=1, recipe.lr=0.5 (repeatable; default none)")
    p.add_argument("--resume", action="store_true", help="continue each unfinished run from its last checkpoint (default off)")
    p.add_argument("--jobs", type=int_range(1, 256), default=1, metavar="J",
                   help="runs at once in worker processes (set OMP_NUM_THREADS to share the cores; default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: bars on a terminal)")


def parse_seeds(text: str) -> tuple[int, ...]:
    parts = [s.strip() for s in text.split(",")]
    if not all(s.isdigit() and int(s) <= MAX_SEED for s in parts):
        raise UsageError(f"--seeds {text!r}: give comma-separated whole numbers from 0 to {MAX_SEED}, e.g. --seeds 0,1,2")
    seeds = tuple(int(s) for s in parts)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed; give each seed once")
    return seeds


def parse_methods(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(m.strip() for m in text.split(","))
    if not all(names):
        raise UsageError(f"--methods {text!r}: give comma-separated method names, e.g. --methods simclr,byol")
    return names


def run(a: argparse.Namespace) -> int:
    req = Request(table=a.table, methods=parse_methods(a.methods), seeds=parse_seeds(a.seeds), scale=a.scale,
                  device=run_flags.pick_device(a.device), per_class=a.per_class, test_per_class=a.test_per_class,
                  overrides=parse_pairs(a.set, "--set"))
    plan(req)  # every check that needs no data, before anything is written
    ensure_writable_dir(Path(a.out))
    t0 = time.perf_counter()
    opts = Options(data_root=a.data_root, resume=a.resume, progress=not a.no_progress and sys.stderr.isatty())
    text, md, _ = reproduce(req, Path(a.out), opts, jobs=a.jobs)
    print(text)
    print(f"table written to {md} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0
