"""`repbench run`'s flags for how the training loop runs and reports: precision, compile, logs, evaluation during
training."""

from __future__ import annotations

import argparse
import sys

from bench.commands.args import int_range
from bench.config import PRECISIONS, TrainOptions
from bench.logs import SINKS, check_sinks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS,
                   help="bf16: bfloat16 autocast where it is native, else float32 (default); fp16: float16 autocast "
                        "with a gradient scaler; fp32: no autocast. Part of the run's key when not bf16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the method's training step (recorded, not part of the key; first steps slower "
                        "while it compiles; meant for GPUs; default off)")
    p.add_argument("--log", action="append", metavar="SINK",
                   help=f"also log the step and epoch scalars to {' or '.join(SINKS)} (repeatable or comma list; "
                        "default none: steps.csv in the run folder only)")
    p.add_argument("--log-every", type=int_range(1, 1_000_000), default=TrainOptions.log_every, metavar="N",
                   help="read losses and meters from the device every N steps (and at each epoch's end): steps.csv "
                        f"rows, log sinks, progress lines (default {TrainOptions.log_every})")
    p.add_argument("--eval-every", type=int_range(0, 100_000), metavar="K", dest="knn_every",
                   help="the kNN protocol every K epochs and after the last, recorded as a curve (monitor_knn); "
                        "the same as --knn-every; 0 off (default)")


def log_sinks(a: argparse.Namespace) -> tuple[str, ...]:
    names = [n.strip() for given in a.log or () for n in given.split(",") if n.strip()]
    return tuple(dict.fromkeys(names))


def config_kwargs(a: argparse.Namespace) -> dict:
    """The RunConfig fields these flags set (precision, when given); checks the log sinks too, so a missing package
    is refused before anything is written."""
    check_sinks(log_sinks(a))
    return {"precision": a.precision} if a.precision else {}


def options(a: argparse.Namespace) -> dict:
    """``Options`` kwargs: progress lines when stderr is not a terminal (tqdm bars when it is), unless --no-progress."""
    lines = not a.no_progress and not sys.stderr.isatty()
    return {"train": TrainOptions(compile=a.compile, log=log_sinks(a), log_every=a.log_every, lines=lines)}
