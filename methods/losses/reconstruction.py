"""Reconstruction losses: autoencoders and masked autoencoders (He et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mae_loss", "normalise_patches", "reconstruction_loss"]


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each patch to zero mean and unit variance (MAE's ``norm_pix_loss`` targets).

    Shape: patches (N, L, P) -> (normalised (N, L, P), mean (N, L, 1), std (N, L, 1)).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps).sqrt()
    return (patches - mean) / std, mean, std


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the hidden patches only (visible ones carry no loss, paper Sec. 3).

    Shape: pred, target (N, L, P) patch pixels; mask (N, L) bool, True where hidden -> scalar.
    ``norm_pix`` compares against per-patch normalised targets (paper Table 1d, "w/ norm").
    """
    if norm_pix:
        target = normalise_patches(target)[0]
    per_patch = (pred - target).pow(2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel MSE of an autoencoder's output against its clean target.

    Shape: recon, target (N, C, H, W) -> scalar.
    """
    return F.mse_loss(recon, target)
