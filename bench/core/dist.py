"""Process-group helpers a method may call from its training step (opt-in gathering: losses stay pure).

Every helper is the identity on one process, so a method computes the same loss with or without
torch.distributed. Gathers are rank-major: rows ``rank * n : (rank + 1) * n`` of a gathered tensor are this rank's.

Gradients: ``gather`` and ``reduce_sum`` are torch.distributed.nn's autograd-aware collectives, whose backward
sums the gradient every rank computes for this rank's slice. Each rank then evaluates the whole global loss, so
its local parameters receive ``world_size`` times their share, and DDP's average over ranks gives back exactly
the one-process gradient of the global batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.nn import functional as dist_nn

# torch.distributed.nn's collectives are deprecated in favour of _functional_collectives, whose all_reduce has no
# backward: these are still the autograd-aware ones, so the per-call warning is noise.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.", category=FutureWarning)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def gather(x: torch.Tensor) -> torch.Tensor:
    """Shape: (n, ...) on each rank -> (world_size * n, ...), gradients flowing back to every rank's slice."""
    return torch.cat(dist_nn.all_gather(x), 0) if active() else x


def gather_detached(x: torch.Tensor) -> torch.Tensor:
    """Shape: (n, ...) -> (world_size * n, ...), no gradient (queue keys, targets, statistics)."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, 0)


def reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, with gradient (a cross-correlation summed over the global batch)."""
    return dist_nn.all_reduce(x) if active() else x


def reduce_mean_detached(x: torch.Tensor) -> torch.Tensor:
    """The mean over ranks, no gradient (DINO's center, SwAV's Sinkhorn sums)."""
    if not active():
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def local_rows(n: int) -> slice:
    """This rank's rows in a rank-major gather of ``n`` rows per rank."""
    r = rank()
    return slice(r * n, (r + 1) * n)


def local_draw(draw: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """This rank's ``n`` rows of a random draw made for the whole global batch: ``draw(rows)`` runs on every rank
    from the same RNG state, so W processes x n rows use the very numbers one process x W*n rows does (MAE's
    masks, a denoising autoencoder's noise) and the ranks' RNGs stay in step."""
    return draw(n * world_size())[local_rows(n)]


def broadcast(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``x`` on every rank, no gradient: a random draw all ranks must share (MoCo's batch shuffle)."""
    if not active():
        return x
    out = x.detach().clone()
    dist.broadcast(out, 0)
    return out


def reduce_max_detached(x: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over ranks, no gradient (SwAV's Sinkhorn: one overflow shift for the whole batch)."""
    if not active():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out
