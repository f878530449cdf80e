"""`repbench ablate`: an ablation grid over several seeds; mean, 95% t-interval, n scored / run, paired differences."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands import launcher_flags, vary_flags
from bench.commands.args import int_range
from bench.core.errors import UsageError
from bench.experiments.ablate import check_seeds
from bench.experiments.ablate_report import run_ablation, run_user_grid
from bench.experiments.scales import SCALES
from bench.store import ensure_writable_dir
from methods.backbone_registry import BACKBONES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", help="grid name (or --vary / --grid-file below): recipe, augment, batch, floors, smoke, "
                   "quick-ablation, or a method's paper ablation (simclr-head, simclr-temperature, moco-momentum, "
                   "dino-centering, simsiam-stopgrad, byol-predictor, mae-mask-ratio) (default: none)")
    p.add_argument("--seeds", type=int_range(1, 100), default=3, help="seeds per cell, at least 3 (default 3)")
    p.add_argument("--scale", default="quick", choices=sorted(SCALES), help="data and budget (default quick)")
    p.add_argument("--out", default="results/ablations", help="records and tables (default results/ablations)")
    p.add_argument("--tuned", help="records of 'repbench search' (its --out) for the tuned column of the recipe grid "
                        "(default: no tuned column)")
    p.add_argument("--jobs", type=int_range(1, 64), default=1,
                   help="runs at once, in worker processes (default 1; e.g. 2 with OMP_NUM_THREADS=1 on 2 cores)")
    p.add_argument("--backbone", help="run a built-in grid on this backbone instead of its scale's convnet, e.g. vit "
                   "where a convnet's BatchNorm may hide a collapse (default: the scale's)")
    p.add_argument("--data-root", help="folder holding the dataset files (default $REPBENCH_DATA, else the download cache)")
    launcher_flags.add_arguments(p)
    vary_flags.add_arguments(p)


def run(a: argparse.Namespace) -> int:
    check_seeds(a.seeds)
    if a.tuned and not Path(a.tuned).is_dir():
        raise UsageError(f"--tuned {a.tuned} is not a folder; pass the --out of 'repbench search --methods all'")
    out = Path(a.out)
    user = vary_flags.build(a) if vary_flags.wanted(a) else None
    if a.backbone is not None:
        if user:
            raise UsageError("--backbone sets a built-in grid's backbone; in a grid of your own give --vary "
                             f"backbone={a.backbone}")
        BACKBONES.get(a.backbone)  # an unknown name: one line listing the known ones
    ensure_writable_dir(out)
    if launcher_flags.wanted(a):
        return launcher_flags.dispatch(a, out)
    if user:
        print(run_user_grid(user[0], a.seeds, out, user[1], a.data_root, jobs=a.jobs, command=user[2]))
        return 0
    print(run_ablation(a.grid, a.seeds, out, a.scale, a.data_root, Path(a.tuned) if a.tuned else None, jobs=a.jobs,
                       backbone=a.backbone))
    return 0
