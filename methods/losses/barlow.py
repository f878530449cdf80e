"""Redundancy reduction on the cross-correlation matrix (Barlow Twins). Shape letters: N batch, D features."""

from __future__ import annotations

import torch

__all__ = ["barlow_twins_loss"]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1 and Algorithm 1).

    Each feature is standardised over the batch (the official code uses an affine-free BatchNorm:
    biased variance plus ``eps``), ``C = z1n^T z2n / N``; the loss is
    ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``. Computed in float32 even under autocast:
    it sums D^2 squared correlations.

    Shape: z1, z2 (N, D), N >= 2 (a batch statistic needs two samples) -> scalar.
    """
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"barlow_twins_loss standardises over the batch and needs N >= 2, got N={n}")
    with torch.autocast(z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)
        z1, z2 = z1.to(dtype), z2.to(dtype)
        z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
        z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
        c = z1.T @ z2 / n
        diag = torch.diagonal(c)
        on_diag = (diag - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - diag.pow(2).sum()
        return on_diag + lambd * off_diag
