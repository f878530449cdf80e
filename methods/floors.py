"""The two floors every learned representation must beat: raw pixels and an untrained encoder.

Both are in the CI regression suite: with no training they isolate the protocols and the data.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.base import Context, Method, NoConfig


class Flatten(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.feature_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class RawPixels(Method):
    """Normalised pixels as features (docs/ANCHORS.md: kNN 84.6%, linear 84.5% on full Fashion-MNIST)."""

    trained_by = "none"
    ci_datasets = ("digits", "fashion-mnist")

    def __init__(self, ctx: Context, cfg: NoConfig) -> None:
        super().__init__(cfg)
        self.encoder = Flatten(ctx.in_channels * ctx.image_size**2)


class RandomInit(Method):
    """The backbone at its seeded random initialisation, never trained (features of architecture alone)."""

    trained_by = "none"
    ci_datasets = ("digits",)

    def __init__(self, ctx: Context, cfg: NoConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
