"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning").

Invariance (MSE between the views' embeddings), variance (a hinge keeping each dimension's std above
1 over the batch) and covariance (decorrelating dimensions), weighted 25 / 25 / 1, on the output of a
3-layer expander (paper 8192-8192-8192; equal widths scaled to the CPU backbones). BYOL's
augmentations, as the paper uses. Protocols see the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Batch, Context, Method
from methods.byol import AsymmetricViews
from methods.heads import mlp
from methods.losses.vicreg import vicreg_loss
from methods.spec import Knob, Recipe


@dataclass(frozen=True)
class VICRegConfig(AsymmetricViews):
    hidden_dim: int = 1024
    out_dim: int = 1024
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0


class VICReg(Method):
    Config = VICRegConfig
    # Paper Sec. 4.1 / App. C: LARS, lr 0.2 x bs/256 (batch 2048, 1000 epochs), wd 1e-6, 10 warm-up epochs,
    # cosine decay. (The official README's 100-epoch command uses base lr 0.3 at batch 512.)
    paper_recipe = Recipe(optimizer="lars", lr=0.2, weight_decay=1e-6, warmup_epochs=10)
    search_space = (Knob("sim_coeff", 5.0, 50.0, log=True),)

    def __init__(self, ctx: Context, cfg: VICRegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ctx.make_backbone()
        self.projector = mlp(self.encoder.feature_dim, cfg.hidden_dim, cfg.out_dim, layers=3)
        self.views = cfg.views()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(images))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = (self.embed(x) for x in batch.views)
        cfg = self.cfg
        return {"loss": vicreg_loss(z1, z2, cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff)}
