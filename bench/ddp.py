"""Data-parallel training across processes started by torchrun: the process group, each rank's slice of the global
batch, synchronised BatchNorm and the gradient average.

The rule every rank follows (methods/ and bench/core/dist.py rely on it): the global loss is the MEAN over ranks of
what each rank's ``training_step`` returns, and the global gradient is the mean over ranks of each rank's gradient.
A method whose loss needs the whole batch gathers it with gradients (bench/core/dist.py) and returns the global
loss on every rank; one whose loss is a mean over its rows returns its rows' mean. Both fit the rule.

Why an all-reduce of gradients after backward rather than ``DistributedDataParallel``: DDP hooks a module's
``forward``, while the loop calls ``training_step``; DDP would also broadcast every buffer from rank 0 at each
forward (EMA teachers, queues, memory banks, centers are buffers the methods keep in step themselves) and needs
``find_unused_parameters`` for heads a step leaves unused. One flat all-reduce per step of the gradients that exist
is the same arithmetic without those side effects; on GPUs DDP's bucketed overlap is faster, not different.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn import functional as dist_nn

from bench.core import dist as cdist
from bench.core.errors import UsageError
from methods.base import Batch

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("REPBENCH_DDP_TIMEOUT_S", "120")))


def launched() -> bool:
    """True in a process torchrun started for a job of more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> str:
    """Join torchrun's process group (nccl for CUDA, gloo on CPU); returns the device to train on. On CUDA each
    rank's current device is its LOCAL_RANK's GPU and the device stays ``cuda`` (so every rank's config, and its
    key, is the one-process run's). Without torchrun, or already joined, nothing changes."""
    if not launched() or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device != "cuda":
            raise UsageError(f"--device {device} would put every rank on one GPU; give --device cuda (or auto): "
                             "each rank takes the GPU of its local rank")
        if local >= torch.cuda.device_count():
            raise UsageError(f"rank {local} on this node has no GPU ({torch.cuda.device_count()} visible); "
                             "lower --nproc / --nproc-per-node to at most the GPU count")
        torch.cuda.set_device(local)
    try:
        store, rank, world = next(dist.rendezvous("env://", timeout=TIMEOUT))
        # torchrun's agent keeps one store across `--max-restarts` rounds: without a prefix per round, a restarted
        # rank can read the dead ranks' addresses from the last round and fail (or hang) connecting to them.
        store = dist.PrefixStore(f"repbench/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    except (RuntimeError, ValueError, TimeoutError) as err:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot join the process group at {where} ({first}); check the rendezvous address "
                         "and that every node can reach it") from None
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, records and prints."""
    return cdist.rank() == 0


def barrier() -> None:
    if cdist.active():
        dist.barrier()


def check_batch(batch_size: int) -> None:
    world = cdist.world_size()
    if batch_size % world:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must divide evenly over {world} "
                         f"ranks; use a multiple of {world}")


def local_rows(n_global: int) -> slice:
    """This rank's rows of a global batch of ``n_global`` rows (rank-major, equal slices)."""
    return cdist.local_rows(n_global // cdist.world_size())


def shard_batch(batch: Batch) -> Batch:
    """This rank's slice of a global batch that every rank built identically (same indices, same views)."""
    if not cdist.active():
        return batch
    rows = local_rows(len(batch.index))
    return replace(batch, views=[v[rows] for v in batch.views], images=batch.images[rows],
                   labels=batch.labels[rows], index=batch.index[rows],
                   text=None if batch.text is None else batch.text[rows])


# -- BatchNorm across ranks ----------------------------------------------------------------------------------


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for the gloo backend:
    ``torch.nn.SyncBatchNorm`` only accepts CUDA tensors. Two-pass statistics (the mean, then the mean squared
    deviation) through torch.distributed.nn's all_reduce, whose backward all-reduces the gradient, so autograd
    gives each rank its exact share of the global batch's gradient."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and cdist.active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() / x.shape[1]])
        total = dist_nn.all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = dist_nn.all_reduce(centred.pow(2).sum(dims)) / n
        self._update_running(mean.detach(), var.detach(), n)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(var * n / (n - 1).clamp(min=1), alpha=m)


def convert_sync_batchnorm(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Every BatchNorm in ``module`` synchronised across ranks: torch.nn.SyncBatchNorm on CUDA, CPUSyncBatchNorm
    otherwise (same parameters and buffers, so checkpoints load either way). Returns the converted module."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def batchnorm_across_ranks(module: nn.Module, sync: bool, device: str | torch.device = "cpu") -> nn.Module:
    """``module`` with its BatchNorm synchronised (``sync``, RunConfig.sync_bn) or left per rank: each rank then
    normalises its own slice, as a plain DDP job on GPUs does, and the run is no longer the 1-process run."""
    return convert_sync_batchnorm(module, device) if sync else module


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module


# -- parameters and gradients --------------------------------------------------------------------------------


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (they are built from the same seed; this makes it certain)."""
    if not cdist.active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, 0)


@torch.no_grad()
def average_gradients(params) -> None:
    """Replace each gradient with its mean over ranks, in one all-reduce. Every rank runs the same code on
    equal slices, so the same parameters hold gradients on every rank."""
    if not cdist.active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= cdist.world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def mean_loss(loss: torch.Tensor) -> torch.Tensor:
    """The global loss (the mean over ranks of each rank's loss), detached, for logs and records."""
    return cdist.reduce_mean_detached(loss)

