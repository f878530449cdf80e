"""A repbench command as a submitit job: on Slurm (AutoExecutor) or as a process on this machine (LocalExecutor).

The job calls the command's own entry (the handler the CLI dispatches to) with the parsed arguments, so a job does
exactly what the same command line does here. It is a ``submitit.helpers.Checkpointable``: on preemption (Slurm's
USR2, sent ``signal_delay_s`` before the time limit or when a higher-priority job takes the nodes) submitit pickles
the job with ``resume`` set and requeues it, and the requeued job continues from the run's last checkpoint, as
``--resume`` does. A job of several tasks (``--nodes`` x ``--gpus-per-node``) gets torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from submitit, which the DDP entry joins.
"""

from __future__ import annotations

import argparse
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import UsageError

try:  # an optional dependency (repbench's `scale` extra): its absence is one line, not an ImportError
    import submitit
    from submitit.helpers import Checkpointable, DelayedSubmission, TorchDistributedEnvironment
except ImportError:
    submitit = None
    Checkpointable = object

LAUNCHERS = ("slurm", "local")
JOB_FLAGS = ("nodes", "gpus_per_node", "partition", "time")  # what the job asks for; inside it they are spent
SIGNAL_DELAY_S = 120  # how long before the time limit Slurm warns the job: time to finish a checkpoint write
TIME = re.compile(r"^(?:(?:(\d+)-)?(\d+):)?(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    time_min: int = 60

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)  # one rank per GPU, as torchrun --nproc-per-node would start


def minutes(text: str) -> int:
    """Slurm's --time forms: MINUTES, HH:MM:SS, D-HH:MM[:SS] (and MM:SS); whole minutes, at least 1."""
    m = TIME.match(text.strip())
    if not m:
        raise UsageError(f"--time {text!r} is not a time limit; give minutes (e.g. 90) or [D-]HH:MM:SS (e.g. 1-12:00:00)")
    days, first, second, third = m.groups()
    if first is None:  # MINUTES
        total_s = 60 * int(second)
    elif third is None and days is None:  # MM:SS
        total_s = 60 * int(first) + int(second)
    else:  # [D-]HH:MM[:SS]
        total_s = 86_400 * int(days or 0) + 3600 * int(first) + 60 * int(second) + int(third or 0)
    if total_s < 60:
        raise UsageError(f"--time {text!r} is under a minute; a job needs at least 1 minute")
    return -(-total_s // 60)


def check(launcher: str) -> None:
    """Refuse, before anything is written, a launcher this machine cannot use."""
    if submitit is None:
        raise UsageError(f"--launcher {launcher} needs submitit, which is not installed: pip install submitit "
                         "(repbench's 'scale' extra), or run without --launcher")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]  # submitit submits and starts with them
    if launcher == "slurm" and missing:
        raise UsageError(f"--launcher slurm: Slurm was not found (no {' or '.join(missing)} on PATH); run this on a Slurm "
                         "login node, or use --launcher local to run the job on this machine")


def executor(launcher: str, folder: Path, res: Resources):
    check(launcher)
    if launcher == "local" and res.nodes != 1:
        raise UsageError(f"--launcher local runs on this machine: --nodes {res.nodes} needs --launcher slurm")
    if launcher == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=res.time_min, gpus_per_node=res.gpus_per_node, tasks_per_node=res.tasks_per_node,
                             signal_delay_s=SIGNAL_DELAY_S)
        return ex
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(name="repbench", timeout_min=res.time_min, nodes=res.nodes, gpus_per_node=res.gpus_per_node,
                         tasks_per_node=res.tasks_per_node, slurm_signal_delay_s=SIGNAL_DELAY_S,
                         slurm_additional_parameters={"requeue": True},  # requeueable where the cluster's default is not
                         **({"slurm_partition": res.partition} if res.partition else {}))
    return ex


class Job(Checkpointable):
    """The command's entry with its parsed arguments; requeued with ``resume`` set after a preemption."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __call__(self) -> int:
        if submitit.JobEnvironment().num_tasks > 1:
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        args = argparse.Namespace(**vars(self.args))  # the command may set fields; a requeue starts from the submitted ones
        return int(args.handler(args) or 0)

    def checkpoint(self) -> DelayedSubmission:
        fields = vars(self.args)
        resumed = argparse.Namespace(**{**fields, **({"resume": True} if "resume" in fields else {})})
        return DelayedSubmission(Job(resumed))


def submit(args: argparse.Namespace, folder: Path, res: Resources):
    """Submit the command ``args`` (parsed, checked) as a job; its pickles and logs go under ``folder``."""
    ex = executor(args.launcher, folder, res)
    spent = dict.fromkeys(("launcher", *JOB_FLAGS))  # the job runs the command where it is, not as another job
    inner = argparse.Namespace(**{**vars(args), **spent})
    return ex.submit(Job(inner))


def wait(job) -> tuple[int, str]:
    """Block until a job ends: (its exit code, the worst of its tasks', and "" or the line saying why it failed)."""
    try:
        return max(int(code or 0) for code in job.results()), ""
    except submitit.core.utils.UncompletedJobError as err:
        raised = re.findall(r"\b(\w+(?:Error|Exception|Interrupt): .*)", str(err))  # the traceback's last exception
        return 1, (raised[-1] if raised else type(err).__name__)[:300]
