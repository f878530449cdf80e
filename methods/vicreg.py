"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning").

Invariance (MSE between the views' embeddings), variance (a hinge keeping each dimension's std above
1 over the batch) and covariance (decorrelating dimensions), weighted 25 / 25 / 1, on the output of a
3-layer expander (paper 8192-8192-8192; equal widths scaled to the CPU backbones) on BYOL's augmentations:
Barlow Twins' architecture and views, which the paper compares against, with its own loss. Protocols see the
backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.barlowtwins import BarlowTwins
from methods.byol import AsymmetricViews
from methods.losses.vicreg import vicreg_loss
from methods.spec import MAX_DIM, MAX_WEIGHT, Knob, Recipe, opt


@dataclass(frozen=True)
class VICRegConfig(AsymmetricViews):
    hidden_dim: int = opt(1024, ge=1, le=MAX_DIM)
    out_dim: int = opt(1024, ge=1, le=MAX_DIM)
    sim_coeff: float = opt(25.0, ge=0, le=MAX_WEIGHT)
    std_coeff: float = opt(25.0, ge=0, le=MAX_WEIGHT)
    cov_coeff: float = opt(1.0, ge=0, le=MAX_WEIGHT)


class VICReg(BarlowTwins):
    Config = VICRegConfig
    # Paper Sec. 4.1 / App. C: LARS, lr 0.2 x bs/256 (batch 2048, 1000 epochs), wd 1e-6, 10 warm-up epochs,
    # cosine decay. (The official README's 100-epoch command uses base lr 0.3 at batch 512.)
    paper_recipe = Recipe(optimizer="lars", lr=0.2, weight_decay=1e-6, warmup_epochs=10)
    search_space = (Knob("sim_coeff", 5.0, 50.0, log=True),)

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return vicreg_loss(z1, z2, cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff)
