"""Non-parametric instance discrimination with noise-contrastive estimation (InstDisc).

Shape letters: N batch, D features, M noise samples.
"""

from __future__ import annotations

import math

import torch

__all__ = ["nce_loss"]


def nce_loss(logits: torch.Tensor, log_z: torch.Tensor | float, num_data: int) -> torch.Tensor:
    """InstDisc's NCE approximation of the instance softmax (Wu et al. 2018, eqs. 5-7).

    ``P(i|v) = exp(v_i.f / T) / Z`` with Z a constant estimated once; noise is uniform, ``P_n = 1/n``.
    A sample is judged "from the data" with ``h = P / (P + M P_n)``; the loss is
    ``-log h(positive) - sum_noise log(1 - h(noise))``, mean over N. Computed in log space
    (``logaddexp``) so a tiny P or a large Z cannot underflow.

    Shape: logits (N, 1 + M) = memory-bank entries . f / T, the positive at index 0, then M noise
    samples; log_z scalar -> scalar.
    """
    m = logits.shape[1] - 1
    if m < 1:
        raise ValueError("nce_loss needs at least one noise sample (logits of shape (N, 1 + M), M >= 1)")
    log_p = logits.to(torch.promote_types(logits.dtype, torch.float32)) - log_z
    log_noise = torch.full_like(log_p, math.log(m / num_data))
    log_denominator = torch.logaddexp(log_p, log_noise)
    log_h_data = log_p[:, 0] - log_denominator[:, 0]
    log_h_noise = (log_noise[:, 1:] - log_denominator[:, 1:]).sum(dim=1)
    return -(log_h_data + log_h_noise).mean()
