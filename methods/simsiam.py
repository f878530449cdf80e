"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

BYOL without the momentum encoder: one network, a predictor on one branch and a stop-gradient on
the other, symmetrised negative cosine. The projector ends in an affine-free BN (paper Sec. 4).
MoCo v2's augmentations. Protocols see the backbone.

The paper recipe keeps the predictor's learning rate fixed while the rest decays (Sec. 4.2:
``fixed_lr=("predictor.",)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.base import Batch, Context
from methods.heads import Projected, mlp
from methods.losses.byol import simsiam_loss
from methods.spec import MAX_DEPTH, MAX_DIM, MAX_JITTER, Ablation, Knob, Recipe, ViewConfig, cell, opt


@dataclass(frozen=True)
class SimSiamConfig:
    projector_layers: int = opt(3, ge=1, le=MAX_DEPTH)  # ImageNet; the paper's CIFAR variant uses 2
    # Paper 2048 (projector hidden and output), scaled to the CPU backbones.
    hidden_dim: int = opt(512, ge=1, le=MAX_DIM)
    out_dim: int = opt(512, ge=1, le=MAX_DIM)
    predictor_hidden_dim: int = opt(128, ge=1, le=MAX_DIM)  # paper 512: a bottleneck of a quarter of out_dim
    crop_scale_min: float = opt(0.2, gt=0, le=1)
    jitter_strength: float = opt(0.5, ge=0, le=MAX_JITTER)  # ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8
    blur_p: float = opt(0.5, ge=0, le=1)
    # False: the gradient also flows through the target branch z (the paper's Fig. 2 ablation: collapse).
    stop_gradient: bool = True


class SimSiam(Projected):
    Config = SimSiamConfig
    # Paper Sec. 4: SGD lr 0.05 x bs/256, momentum 0.9, wd 1e-4, cosine decay, no warm-up; the predictor's rate
    # is not decayed (Sec. 4.2, the official fix_pred_lr).
    paper_recipe = Recipe(optimizer="sgd", lr=0.05, weight_decay=1e-4, fixed_lr=("predictor.",))
    search_space = (Knob("blur_p", 0.0, 1.0),)
    ablations = {"simsiam-stopgrad": Ablation(
        cells=(cell("stop-gradient (paper)"), cell("no stop-gradient", stop_gradient=False)),
        claim="Chen & He 2021 Fig. 2: without stop-gradient the std of the L2-normalised output falls to 0 "
              "and kNN accuracy to chance (0.1% linear top-1 on ImageNet); with it, ~1/sqrt(d) and 67.7%")}

    def __init__(self, ctx: Context, cfg: SimSiamConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
        self.projector = mlp(self.encoder.feature_dim, cfg.hidden_dim, cfg.out_dim, cfg.projector_layers, last_bn=True)
        self.predictor = mlp(cfg.out_dim, cfg.predictor_hidden_dim, cfg.out_dim, layers=2)
        view = ViewConfig(scale=(cfg.crop_scale_min, 1.0), strength=cfg.jitter_strength, blur_p=cfg.blur_p)
        self.views = (view, view)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = (self.embed(x) for x in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss if self.cfg.stop_gradient else _negative_cosine
        return {"loss": loss(p1, z2) / 2 + loss(p2, z1) / 2}


def _negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) without the stop-gradient: z's branch is trained too (float32, as simsiam_loss)."""
    return -F.cosine_similarity(p.float(), z.float(), dim=-1).mean()
