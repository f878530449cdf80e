"""Instance-contrastive loss with a queue of keys (MoCo). Shape letters: N batch, D features, K queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce_loss"]


def info_nce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None,
                  temperature: float = 0.07) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1 and Algorithm 1).

    Logits are ``[q.k, q.queue^T] / temperature`` with the positive at index 0, cross-entropy
    against index 0, mean over the N queries. With ``queue=None`` the batch's other keys are the
    negatives and the positive sits on the diagonal (MoCo v3, Chen et al. 2021, Algorithm 1).
    Keys are targets: the caller computes them without gradient (momentum encoder).

    Shape: q, k (N, D), L2-normalised inside; queue (K, D) of already normalised keys, or None -> scalar.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    if queue is None:
        logits = q @ k.T
        targets = torch.arange(len(q), device=q.device)
    else:
        pos = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([pos, q @ queue.to(q.dtype).T], dim=1)
        targets = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, targets)
