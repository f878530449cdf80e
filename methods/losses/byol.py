"""Predict-the-other-view losses with a stop-gradient target (BYOL, SimSiam). Shape letters: N batch, D features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["byol_loss", "simsiam_loss"]


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): ``||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``, mean over N.

    ``z`` is the target network's projection; it is detached here (the target gets no gradient).
    The paper symmetrises by swapping the views; the caller adds both directions.

    Shape: p, z (N, D) -> scalar.
    """
    p = F.normalize(_upcast(p), dim=-1)
    z = F.normalize(_upcast(z.detach()), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's negative cosine similarity with stop-gradient (Chen & He 2021, eq. 1 and Algorithm 1).

    ``D(p, z) = -cos(p, stopgrad(z))``, mean over N; the caller symmetrises ``D(p1, z2)/2 + D(p2, z1)/2``.

    Shape: p, z (N, D) -> scalar.
    """
    return -(F.normalize(_upcast(p), dim=-1) * F.normalize(_upcast(z.detach()), dim=-1)).sum(dim=-1).mean()


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32: under autocast 2 - 2cos near cos = 1 is below bf16's resolution."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
