"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction").

The cross-correlation of the two views' standardised embeddings is pushed towards the identity:
invariance on the diagonal, redundancy reduction off it. A wide 3-layer projector (paper 8192-8192-8192;
here equal widths scaled to the CPU backbones), BYOL's augmentations. Protocols see the backbone.

The paper recipe gives biases and BN parameters their own LARS rate (0.0048 vs 0.2 for weights:
``no_decay_lr_scale=0.024``); they are exempt from adaptation and decay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core import dist as cdist
from methods.base import Batch, Context
from methods.byol import AsymmetricViews
from methods.heads import Projected, mlp
from methods.losses.barlow import barlow_twins_loss
from methods.spec import MAX_DIM, MAX_WEIGHT, Knob, Recipe, opt


@dataclass(frozen=True)
class BarlowTwinsConfig(AsymmetricViews):
    hidden_dim: int = opt(1024, ge=1, le=MAX_DIM)
    out_dim: int = opt(1024, ge=1, le=MAX_DIM)
    lambd: float = opt(0.0051, ge=0, le=MAX_WEIGHT)


class BarlowTwins(Projected):
    Config = BarlowTwinsConfig
    # Paper Sec. 4 / App.: LARS, lr 0.2 x bs/256 for weights and 0.0048 for biases and BN, wd 1.5e-6, 10 warm-up
    # epochs, cosine decay.
    paper_recipe = Recipe(optimizer="lars", lr=0.2, weight_decay=1.5e-6, warmup_epochs=10, no_decay_lr_scale=0.0048 / 0.2)
    search_space = (Knob("lambd", 1e-3, 2e-2, log=True),)

    def __init__(self, ctx: Context, cfg: BarlowTwinsConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
        self.projector = mlp(self.encoder.feature_dim, cfg.hidden_dim, cfg.out_dim, layers=3)
        self.views = cfg.views()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        # Standardised and correlated over the global batch (VICReg's variance and covariance too): gathered.
        z1, z2 = (cdist.gather(self.embed(x)) for x in batch.views)
        return {"loss": self.loss(z1, z2)}

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Shape: z1, z2 (N, D) the two views' expander outputs -> scalar."""
        return barlow_twins_loss(z1, z2, self.cfg.lambd)
