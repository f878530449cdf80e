"""Contrastive losses (SimCLR). Shape letters: N batch, V views, D features, K queue, C classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent_loss"]


def nt_xent_loss(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy (Chen et al. 2020, eq. 1).

    Each of the 2N anchors has its other view as the positive and the remaining 2N - 2
    embeddings as negatives; the loss is the mean over all 2N anchors.

    Shape: z0, z1 (N, D), L2-normalised inside -> scalar.
    """
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n = z0.shape[0]
    sim = z @ z.T / temperature
    # An anchor is never its own negative: mask the diagonal out of the softmax.
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)
