"""The one exponential-moving-average helper (momentum/teacher networks), composed by MoCo, BYOL and DINO."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from methods.spec import Knob

# The search knob of every EMA teacher's base momentum (MoCo, BYOL).
MOMENTUM_KNOB = Knob("momentum", choices=(0.9, 0.99, 0.996, 0.999))


def cosine_momentum(progress: float, base: float, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, Sec. 3.2), also MoCo v3's and DINO's: ``base`` at progress 0,
    rising along a half cosine to ``final`` at progress 1."""
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class EMA(nn.Module):
    """A frozen copy of some online modules, moved towards them after every step.

    ``target`` is an ``nn.Sequential`` of deep copies of ``online`` (called in that order), so its
    weights live in the method's state dict and a checkpoint restores the teacher. Its parameters
    do not require grad, which keeps them out of the optimiser. Only parameters are averaged;
    the target's normalisation statistics come from its own forward passes (MoCo, BYOL, DINO do the same).
    Across ranks the target stays identical with no communication of its own: the online parameters are identical
    after the gradient average, and with synchronised BN so are the statistics its forward passes record.
    """

    def __init__(self, *online: nn.Module, momentum: float, final: float | None = None) -> None:
        super().__init__()
        self.target = nn.Sequential(*(copy.deepcopy(m) for m in online)).requires_grad_(False)
        self.base, self.final = momentum, final

    def momentum(self, step: int, total: int) -> float:
        """Momentum for optimiser step ``step`` (1..total, as ``on_step_end`` counts): constant, or cosine to ``final``."""
        if self.final is None:
            return self.base
        return cosine_momentum((step - 1) / max(1, total), self.base, self.final)

    @torch.no_grad()
    def update(self, *online: nn.Module, step: int, total: int) -> float:
        """``target = m * target + (1 - m) * online``; returns m."""
        m = self.momentum(step, total)
        src = [p for mod in online for p in mod.parameters()]
        for t, s in zip(self.target.parameters(), src, strict=True):
            t.lerp_(s.detach(), 1 - m)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x)
