"""--launcher slurm|local and the job's resources, shared by `repbench run`, `search` and `ablate` (bench/launch.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import launch
from bench.commands.args import int_range
from bench.core.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run as a submitit job (pip install submitit)")
    g.add_argument("--launcher", choices=launch.LAUNCHERS,
                   help="slurm: submit to Slurm (requeued from the last checkpoint on preemption); local: run the same "
                        "job as a process here and wait for it (default: run in this process)")
    g.add_argument("--nodes", type=int_range(1, 4096), metavar="N", help="Slurm nodes (default 1)")
    g.add_argument("--gpus-per-node", type=int_range(0, 64), metavar="G", help="GPUs per node, one task (rank) each (default 0)")
    g.add_argument("--partition", metavar="P", help="Slurm partition (default: the cluster's)")
    g.add_argument("--time", metavar="T", help="the job's time limit: minutes or [D-]HH:MM:SS (default 60)")


def wanted(a: argparse.Namespace) -> bool:
    """Whether the command is to be submitted as a job; resource flags without --launcher are refused."""
    given = [f"--{f.replace('_', '-')}" for f in launch.JOB_FLAGS if vars(a)[f] is not None]
    if vars(a)["launcher"] is None and given:
        raise UsageError(f"{', '.join(given)} describe a job: add --launcher slurm (or --launcher local)")
    return vars(a)["launcher"] is not None


def resources(a: argparse.Namespace) -> launch.Resources:
    res = launch.Resources(nodes=a.nodes or 1, gpus_per_node=a.gpus_per_node or 0, partition=a.partition,
                           time_min=launch.minutes(a.time) if a.time is not None else 60)
    if a.command != "run" and res.nodes * res.tasks_per_node > 1:
        # Only `run` joins its tasks into one DDP job; several copies of a search or an ablation would do its work twice.
        raise UsageError(f"repbench {a.command} runs as one process, not --nodes {res.nodes} x --gpus-per-node "
                         f"{res.gpus_per_node}: give at most 1 node and 1 GPU (for more search workers, submit the same "
                         "search several times; for DDP, use repbench run)")
    return res


def dispatch(a: argparse.Namespace, out: Path) -> int:
    """Submit the checked command as a job with its files under ``<out>/submitit``; a local job is waited for."""
    job = launch.submit(a, Path(out) / "submitit", resources(a))
    print(f"submitted {a.launcher} job {job.job_id}; its log: {job.paths.stdout}", file=sys.stderr)
    if a.launcher == "slurm":
        return 0
    code, failure = launch.wait(job)
    print(job.task(0).stdout() or "", end="")  # rank 0 prints the results (and is the only task of most jobs)
    if failure:
        print(f"repbench: job {job.job_id} failed ({failure}); its log: {job.paths.stderr}", file=sys.stderr)
    return code
