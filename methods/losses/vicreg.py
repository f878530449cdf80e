"""Variance-invariance-covariance regularisation (VICReg). Shape letters: N batch, D features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["vicreg_loss"]


def _off_diagonal_sq_sum(m: torch.Tensor) -> torch.Tensor:
    return m.pow(2).sum() - torch.diagonal(m).pow(2).sum()


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, eqs. 1-6), as the official ``main_vicreg.py`` computes it.

    ``sim_coeff * MSE(z1, z2) + std_coeff * (v(z1) + v(z2)) / 2 + cov_coeff * (c(z1) + c(z2))`` with
    ``v(z) = mean_j relu(1 - sqrt(Var z_j + eps))`` (unbiased variance) and ``c(z)`` the sum of squared
    off-diagonal covariances divided by D. The paper's eq. 6 sums the two variance terms; the released
    code (whose 25/25/1 weights the paper reports) averages them, and so do we. Float32 under autocast.

    Shape: z1, z2 (N, D), N >= 2 (variance over the batch) -> scalar.
    """
    n, d = z1.shape
    if n < 2:
        raise ValueError(f"vicreg_loss needs N >= 2 for the batch variance and covariance, got N={n}")
    with torch.autocast(z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)
        z1, z2 = z1.to(dtype), z2.to(dtype)
        invariance = F.mse_loss(z1, z2)
        variance = sum(F.relu(1 - torch.sqrt(z.var(0) + eps)).mean() for z in (z1, z2)) / 2
        covariance = 0.0
        for z in (z1, z2):
            zc = z - z.mean(0)
            covariance = covariance + _off_diagonal_sq_sum(zc.T @ zc / (n - 1)) / d
        return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
