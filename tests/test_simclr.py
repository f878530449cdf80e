import math

import pytest
import torch

from methods.losses.contrastive import nt_xent_loss


def nt_xent_reference(z0, z1, t):
    """SimCLR Algorithm 1, written with loops in float64."""
    z = torch.cat([z0, z1]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n2


@pytest.mark.parametrize("n,d,t", [(1, 4, 0.5), (3, 2, 0.1), (8, 16, 0.5), (5, 33, 1.0)])
def test_nt_xent_matches_reference(n, d, t):
    g = torch.Generator().manual_seed(n * d)
    z0, z1 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    assert float(nt_xent_loss(z0, z1, t)) == pytest.approx(nt_xent_reference(z0, z1, t), rel=1e-9, abs=1e-12)


def test_nt_xent_prefers_aligned_views():
    z = torch.randn(16, 8)
    assert nt_xent_loss(z, z, 0.5) < nt_xent_loss(z, torch.randn(16, 8), 0.5)
