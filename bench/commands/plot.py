"""`repbench plot reconstructions`: what a finished run's decoder makes of test images, as a PNG (bench/figures.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.commands.args import int_range
from bench.core.errors import UsageError
from bench.figures import reconstructions_png
from bench.store import atomic_write_bytes

KINDS = ("reconstructions",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS, help="what to draw")
    p.add_argument("--run", required=True, help="a run directory: results/runs/<suite>/<run-id>")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=int_range(2, 16), default=8, help="test images to show (default 8)")
    p.add_argument("--steps", type=int_range(3, 16), default=8, help="interpolation steps (default 8)")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="seed of masks / noise (default 0)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")


def check_out(out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out} must name a .png file")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name a .png file inside it")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: {probe} is not a writable directory; pass another --out")


def run(a: argparse.Namespace) -> int:
    out = Path(a.out)
    check_out(out)
    png = reconstructions_png(Path(a.run), a.data_root, a.images, a.steps, a.seed)
    atomic_write_bytes(out, png)
    print(f"wrote {out}")
    return 0
