"""The two floors every learned representation must beat: raw pixels and an untrained encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import METHODS, Context, Method


class Flatten(nn.Module):
    feature_dim: int

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.feature_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@dataclass(frozen=True)
class NoConfig:
    pass


@METHODS.register("raw")
class RawPixels(Method):
    """Normalised pixels as features (ANCHORS.md: kNN 84.6%, linear 84.5% on full Fashion-MNIST)."""

    Config = NoConfig
    trainable = False

    def __init__(self, ctx: Context, cfg: NoConfig) -> None:
        super().__init__()
        self.encoder = Flatten(ctx.in_channels * ctx.image_size**2)


@METHODS.register("random")
class RandomInit(Method):
    """The backbone at its seeded random initialisation, never trained (features of architecture alone)."""

    Config = NoConfig
    trainable = False

    def __init__(self, ctx: Context, cfg: NoConfig) -> None:
        super().__init__()
        self.encoder = ctx.make_backbone()
