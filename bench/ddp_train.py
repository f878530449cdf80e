"""The training loop on one rank of a torchrun job (bench/ddp.py has the rules every rank follows).

Each rank draws the same global batch (same permutation, and the same augmentation RNG: every rank augments the
whole global batch) and keeps its slice of it, so W ranks train on exactly the views one process would; gradients
are averaged after backward (bench/train.py's ``step``, a no-op on one process). This class adds what only a rank
needs: BatchNorm synchronised across ranks (unless the config's sync_bn is off), the logged loss as the global
mean, and files written by rank 0 alone (checkpoints, steps.csv, log sinks), every rank waiting for a checkpoint
to be complete before going on, so that a restarted job resumes from it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench import ddp
from bench.config import RunConfig, TrainOptions
from bench.core import dist as cdist
from bench.data import Dataset
from bench.logs import StepLog
from bench.train import Trainer, TrainState
from methods.base import Batch, Method

# What gloo and NCCL say when a peer process is gone.
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out", "NCCL communicator was aborted")


class _NoStepLog(StepLog):
    """steps.csv is rank 0's."""

    def keep_until(self, step: int) -> None:
        pass

    def append(self, rows: list[dict[str, Any]]) -> None:
        pass


class RankTrainer(Trainer):
    def __init__(self, method: Method, ds: Dataset, cfg: RunConfig, run_dir: Path, progress: bool = True,
                 opts: TrainOptions | None = None) -> None:
        ddp.check_batch(cfg.batch_size)
        ddp.batchnorm_across_ranks(method, cfg.sync_bn, cfg.device)
        ddp.broadcast_state(method)
        main = ddp.is_main()
        opts = opts or TrainOptions()
        super().__init__(method, ds, cfg, run_dir, progress and main,
                         opts if main else replace(opts, log=(), lines=False))
        if not main:
            self.steplog = _NoStepLog(self.run_dir)

    def fit(self, resume: bool = False) -> TrainState:
        try:
            return super().fit(resume)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if not any(word in first for word in PEER_LOST):
                raise
            # Another rank died (killed, out of memory): one line here; torchrun's summary names the rank.
            raise SystemExit(f"repbench: error: rank {cdist.rank()} lost another rank of the job ({first[:200]}); "
                             f"the last checkpoint is epoch {self.state.epoch}: rerun with --resume (or give torchrun "
                             "--max-restarts) to continue from it") from None

    def batch(self, idx: torch.Tensor, x: torch.Tensor | None = None) -> Batch:
        return ddp.shard_batch(super().batch(idx, x))

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().step(batch)
        return {**out, "loss": ddp.mean_loss(out["loss"])}

    def save(self) -> None:
        if ddp.is_main():
            super().save()
        ddp.barrier()

    def summary(self) -> dict[str, Any]:
        # Throughput and meters are rank 0's: its slice of each global batch.
        return {**super().summary(), "world_size": cdist.world_size()}


def trainer_class() -> type[Trainer]:
    """The loop for this process: a rank's in a torchrun job of several ranks, else the plain one."""
    return RankTrainer if cdist.active() else Trainer
