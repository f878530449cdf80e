"""`repbench generate`: images from a text prompt through a CLIP run's prior and decoder (unCLIP at small scale).

Needs the run's decoder.pt and prior.pt (repbench decode --run CLIP_RUN). Writes a PNG grid of --n samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.args import int_range
from bench.commands.plot import check_out
from bench.core.errors import UsageError
from bench.generation.pictures import grid_png, square
from bench.generation.pipeline import generate
from bench.store import atomic_write_bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="CLIP_RUN", help="a CLIP run directory with decoder.pt and prior.pt")
    p.add_argument("--text", required=True, help='the prompt, e.g. "a photo of a sneaker"')
    p.add_argument("--n", type=int_range(1, 256), default=16, help="images to draw (default 16)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="sampling seed (default 0)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")


def run(a: argparse.Namespace) -> int:
    if not a.text.strip():
        raise UsageError('--text is empty; give a prompt such as --text "a photo of a sneaker"')
    out = Path(a.out)
    check_out(out)
    gen_run, images = generate(Path(a.run), a.data_root, a.text, a.n, a.seed)
    title = f'"{a.text}": {a.n} samples, {gen_run.cfg.method} seed {gen_run.cfg.seed} on {gen_run.cfg.dataset}'
    atomic_write_bytes(out, grid_png(square(images), title))
    print(f"wrote {out}")
    return 0
