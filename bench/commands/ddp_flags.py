"""`repbench run --nproc N`: data-parallel training through torchrun (torch.distributed.run), and what `repbench run`
does on each rank when torchrun started it (`torchrun --nproc-per-node N -m bench run ...`).

--batch-size stays the global batch: every rank draws it alike and trains on its 1/N slice (bench/ddp.py), so the
model equals the one-process run's to float32 round-off. Rank 0 writes checkpoints, steps.csv, the record and the
table; every rank extracts its contiguous share of the evaluation features, gathered to rank 0, which alone runs the
protocols on the whole splits (one record per run).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from bench import ddp
from bench.commands import train_flags
from bench.commands.args import int_range
from bench.commands.run_flags import split_finished
from bench.config import RunConfig
from bench.core import dist as cdist
from bench.core.errors import UsageError
from bench.runner import Options, run_many

LAUNCH_FLAGS = ("--nproc", "--nnodes", "--rdzv-endpoint")
REACH_TIMEOUT_S = float(os.environ.get("REPBENCH_RDZV_TIMEOUT_S", "10"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int_range(1, 1024), default=1, metavar="N",
                   help="train on N processes of this machine through torchrun (one per GPU on CUDA, gloo on the CPU); "
                        "--batch-size is the GLOBAL batch, each process takes 1/N of it, and the model equals the "
                        "1-process run's; features are extracted sharded over the ranks, rank 0 runs the protocols and "
                        "writes the one record (default 1)")
    p.add_argument("--nnodes", type=int_range(1, 4096), default=1, metavar="M",
                   help="with --nproc: M machines, each running this same command (default 1)")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="with --nnodes > 1: torchrun's rendezvous, hosted by the machine named HOST (no default)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under DDP, BatchNorm statistics of the global batch (synchronised across ranks, so N ranks "
                        "train the 1-process model); --no-sync-bn: each rank normalises its own 1/N slice, as plain "
                        "per-GPU BN does, a different model and config key (default: the preset's, else on)")


def wanted(a: argparse.Namespace) -> bool:
    """True when this command should launch torchrun rather than train itself."""
    return (a.nproc > 1 or a.nnodes > 1) and not ddp.launched()


def config_kwargs(a: argparse.Namespace) -> dict:
    """The RunConfig field these flags set: sync_bn, when given (else the preset's or the default)."""
    return {} if a.sync_bn is None else {"sync_bn": a.sync_bn}


def join(a: argparse.Namespace) -> str:
    """Under torchrun: join its process group; returns the device this rank trains on."""
    if not ddp.launched():
        return a.device
    if a.nproc > 1 or a.nnodes > 1:
        raise UsageError("--nproc/--nnodes launch torchrun; under torchrun give its --nproc-per-node/--nnodes instead")
    if a.jobs > 1:
        raise UsageError("--jobs runs configs in parallel worker processes; it does not combine with torchrun's ranks")
    return ddp.init_from_env(a.device)


def check(configs: list[RunConfig], a: argparse.Namespace) -> None:
    """Bad input of a data-parallel run, found before anything is launched or written."""
    world = a.nproc * a.nnodes if wanted(a) else cdist.world_size()
    if world == 1:
        return
    if a.jobs > 1:
        raise UsageError("--jobs does not combine with --nproc; give one of them")
    for c in configs:
        if c.batch_size % world:
            raise UsageError(f"--batch-size {c.batch_size} is the global batch and must divide evenly over {world} "
                             f"processes; use a multiple of {world}")
    if wanted(a) and str(a.device).startswith("cuda") and a.nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {a.nproc} is more than the {torch.cuda.device_count()} visible GPU(s); "
                         "lower it, or train on the CPU with --device cpu")
    if wanted(a) and a.nnodes > 1:
        check_rendezvous(a.rdzv_endpoint)


def check_rendezvous(endpoint: str | None) -> None:
    host, _, port = (endpoint or "").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--rdzv-endpoint {endpoint!r} should be HOST:PORT of the machine hosting the rendezvous "
                         "(needed with --nnodes > 1)")
    if host in ("localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()):
        return  # this machine hosts it: torchrun opens it here
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as err:
        raise UsageError(f"cannot reach the rendezvous at {endpoint} ({err.strerror or err}); start the command on "
                         "that machine first, or fix --rdzv-endpoint") from None


def torchrun_args(a: argparse.Namespace, argv: list[str]) -> list[str]:
    """torchrun's command line (after ``torchrun``) for this one."""
    nodes = ["--standalone"] if a.nnodes == 1 else ["--nnodes", str(a.nnodes), "--rdzv-backend", "c10d",
                                                    "--rdzv-endpoint", a.rdzv_endpoint]
    return ["--nproc-per-node", str(a.nproc), *nodes, "-m", "bench", *strip_launch_flags(argv)]


def strip_launch_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{f}=" for f in LAUNCH_FLAGS)):
            out.append(arg)
    return out


def launch(a: argparse.Namespace) -> int:
    """This command line, minus the launch flags, on every rank through torchrun; its exit code."""
    argv = sys.argv[1:]
    if "run" not in argv or not any(arg.split("=")[0] in LAUNCH_FLAGS for arg in argv):
        raise UsageError("--nproc relaunches the command line: give it to 'repbench run' itself, not through main()")
    # torchrun would set 1; a CPU job shares this machine's cores out instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.nproc)))
    # torchrun's own main, in this process, minus its error summary (a traceback of the agent): the failure is said
    # in one line below, after the failed rank's own message.
    try:
        torchrun.run(torchrun.get_args_parser().parse_args(torchrun_args(a, argv)))
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        print(f"repbench: error: rank {rank} of the {a.nproc * a.nnodes}-process torchrun job failed ({how}; its "
              "message, if any, is above); rerun the same command with --resume to continue from its last checkpoint",
              file=sys.stderr, flush=True)
        return 1
    return 0


def run_rank(execute: Callable[[list[RunConfig], Path, argparse.Namespace], int], configs: list[RunConfig], out: Path,
             a: argparse.Namespace) -> int:
    """``execute`` (the command's own ending: records, table) on rank 0 or alone; ``follow`` on the other ranks."""
    try:
        return execute(configs, out, a) if ddp.is_main() else follow(configs, out, a)
    finally:
        ddp.shutdown()


def follow(configs: list[RunConfig], out: Path, a: argparse.Namespace) -> int:
    """A rank other than 0: the same runs as rank 0 (so their collectives meet), silently, writing nothing."""
    todo, _, _ = split_finished(configs, out, a.force or a.resume)
    opts = Options(data_root=a.data_root, resume=a.resume, progress=False, **train_flags.options(a))
    if todo:
        run_many(todo, out, opts, log=lambda line: None)
    return 0
