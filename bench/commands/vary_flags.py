"""`repbench ablate --vary KEY=V1,V2 --method M` / `--grid-file FILE`: a user-defined grid (bench/experiments/user_grid.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.args import int_range
from bench.core.device import resolve_device
from bench.core.errors import UsageError
from bench.experiments.ablate import Grid
from bench.experiments.scales import SCALES, Scale
from bench.experiments.user_grid import build_user_grid, parse_vary, read_grid_file, scale_with

SCALE_FLAGS = ("dataset", "epochs", "batch_size", "per_class", "test_per_class")
OWN_FLAGS = ("method", *SCALE_FLAGS, "recipe", "name")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a grid of your own (instead of --grid)")
    g.add_argument("--vary", action="append", metavar="KEY=V1,V2,...",
                   help="one axis of the grid, repeatable (cells: every combination): method.FIELD (the method's "
                        "Config), recipe.FIELD, backbone.FIELD or a run field such as batch_size (default: none)")
    g.add_argument("--grid-file", metavar="FILE", help="TOML: method, [vary] table of lists, optional dataset, recipe, "
                   "name (default: none)")
    g.add_argument("--method", help="the method the --vary grid runs (default: the grid file's)")
    g.add_argument("--dataset", help="dataset (default: the grid file's, else the --scale's)")
    g.add_argument("--epochs", type=int_range(1, 100_000), help="epochs (default: the --scale's)")
    g.add_argument("--batch-size", type=int_range(2, 1 << 20), help="batch size (default: the --scale's)")
    g.add_argument("--per-class", type=int_range(1, None), help="training images per class (default: the --scale's)")
    g.add_argument("--test-per-class", type=int_range(1, None), help="test images per class (default: the --scale's)")
    g.add_argument("--recipe", choices=("unified", "paper"), help="the cells' recipe (default: the grid file's, else "
                   "unified)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    g.add_argument("--name", help="the grid's name: its folder under --out (default vary-METHOD-FIELDS)")


def wanted(a: argparse.Namespace) -> bool:
    """Whether a user grid is asked for; its flags without --vary or --grid-file are refused."""
    if a.vary or a.grid_file:
        if a.grid:
            raise UsageError("--grid runs a built-in grid; --vary and --grid-file make your own: give one of them")
        return True
    given = [f"--{f.replace('_', '-')}" for f in OWN_FLAGS if vars(a)[f] is not None]
    if given:
        raise UsageError(f"{', '.join(given)} describe a grid of your own: add --vary KEY=V1,V2 or --grid-file FILE")
    if not a.grid:
        raise UsageError("give --grid NAME (see --help), or --vary KEY=V1,V2 --method M for a grid of your own")
    return False


def build(a: argparse.Namespace) -> tuple[Grid, Scale, str]:
    """(the grid, its scale, the command that remakes it), every cell checked before anything runs."""
    if a.vary and a.grid_file:
        raise UsageError("--vary and --grid-file both describe the grid: give one of them")
    file = read_grid_file(Path(a.grid_file)) if a.grid_file else {}
    method = a.method or file.get("method")
    if not method:
        raise UsageError("--vary needs --method M: the method whose settings the grid varies")
    resolve_device(a.device)
    scale = scale_with(SCALES[a.scale], **{f: vars(a)[f] for f in SCALE_FLAGS}, **(
        {"dataset": file["dataset"]} if "dataset" in file and not a.dataset else {}))
    axes = parse_vary(a.vary) if a.vary else file["vary"]
    grid = build_user_grid(method, axes, scale, a.recipe or file.get("recipe", "unified"), a.name or file.get("name"),
                           a.device)
    flags = " ".join(f"--{f.replace('_', '-')} {vars(a)[f]}" for f in SCALE_FLAGS if vars(a)[f] is not None)
    source = f"--grid-file {a.grid_file}" if a.grid_file else " ".join(f"--vary {v}" for v in a.vary)
    command = f"repbench ablate --method {method} {source} --scale {a.scale} --seeds {a.seeds} {flags}".strip()
    return grid, scale, command
