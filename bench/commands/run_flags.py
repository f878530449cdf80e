"""`repbench run`'s flags about which runs happen and where: --seeds, --force (finished records are kept), --device auto,
and the warning for a warm-up a short run cut."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.commands.args import int_range
from bench.config import RunConfig
from bench.core.errors import UsageError
from bench.runner import RECORD, run_dir_for
from bench.store import read_json

_SEED = int_range(0, 2**31 - 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=seed_list, metavar="S,S,...",
                   help="run each config once per seed, e.g. 0,1,2 (default: the one --seed)")
    p.add_argument("--force", action="store_true",
                   help="rerun a config whose record is already written and overwrite it (default off: it is skipped "
                        "and its record reused, saying where)")


def seed_list(text: str) -> tuple[int, ...]:
    seeds = tuple(_SEED(s.strip()) for s in text.split(","))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed; give each seed once")
    return seeds


def pick_device(requested: str) -> str:
    """``auto``: CUDA when a GPU is visible, else the CPU; any other name is kept (checked later by validate)."""
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_line(requested: str, device: str) -> str:
    why = {"cuda": "a CUDA GPU is visible", "cpu": "no CUDA GPU is visible"}.get(device, "")
    return f"repbench: device {device}" + (f" (--device auto: {why})" if requested == "auto" else "")


def announcing(first: str) -> Callable[[str], None]:
    """run_many's log, saying ``first`` (the device) before its first line. Not before the runs start: bad input found
    while loading the data or a checkpoint must stay the only line on stderr."""
    said: list[str] = []

    def log(line: str) -> None:
        if not said:
            said.append(first)
            print(first, file=sys.stderr, flush=True)
        print(line, file=sys.stderr, flush=True)

    return log


def expand_seeds(configs: list[RunConfig], a: argparse.Namespace) -> list[RunConfig]:
    if not a.seeds:
        return configs
    if a.suite or a.seed is not None:
        raise UsageError(f"--seeds does not combine with {'--suite' if a.suite else '--seed'}; give one of them")
    return [replace(c, seed=s) for c in configs for s in a.seeds]


def split_finished(configs: list[RunConfig], out: Path, rerun: bool
                   ) -> tuple[list[RunConfig], dict[str, dict[str, Any]], list[str]]:
    """The configs to run, {run_id: record} of those already finished under ``out`` (kept unless ``rerun``), and a line
    for each kept one, to print once the others have run (a bad input found meanwhile stays the only line)."""
    todo, kept, lines = [], {}, []
    for c in configs:
        path = run_dir_for(c, out) / RECORD
        if rerun or not path.is_file():
            todo.append(c)
            continue
        try:
            kept[c.run_id()] = read_json(path)
        except UsageError as err:
            raise UsageError(f"{err}; pass --force to rerun and overwrite it") from None
        lines.append(f"repbench: skipped {c.run_id()}: its finished record is {path}; pass --force to rerun and "
                     "overwrite it")
    return todo, kept, lines


def warmup_warnings(records: list[dict[str, Any]]) -> list[str]:
    """One line per run whose warm-up the trainer capped at a tenth of its steps (a run too short for the recipe's)."""
    lines = []
    for rec in records:
        training, recipe = rec.get("training", {}), rec.get("config", {}).get("recipe", {})
        per_epoch, done = training.get("steps_per_epoch"), training.get("warmup_steps")
        if per_epoch is None or done is None:
            continue
        asked = round(recipe.get("warmup_epochs", 0) * per_epoch)
        if asked > done:
            lines.append(f"repbench: warning: {rec.get('run_id')}: warm-up capped at {done} step(s), a tenth of the run, "
                         f"instead of the recipe's {asked} ({recipe.get('warmup_epochs')} epoch(s)); train more epochs "
                         "for the full warm-up")
    return lines
