"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

An online network (backbone, projector, predictor) predicts the projection that a target network,
an EMA of the online backbone and projector (tau 0.996 -> 1 along a cosine), gives for the other view;
the loss is symmetrised over the two views. No negatives. Asymmetric views: blur 1.0 / 0.1,
solarisation 0 / 0.2. Protocols see the online backbone, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import Batch, Context
from methods.ema import EMA, MOMENTUM_KNOB
from methods.heads import Projected, mlp
from methods.losses.byol import byol_loss
from methods.spec import MAX_DIM, MAX_JITTER, Ablation, Recipe, ViewConfig, cell, opt


@dataclass(frozen=True)
class AsymmetricViews:
    """BYOL's two view recipes (Table 6), shared by Barlow Twins and VICReg. The colour jitter is
    ColorJitter(0.4, 0.4, 0.4, 0.1); the paper's saturation is 0.2."""

    crop_scale_min: float = opt(0.08, gt=0, le=1)
    jitter_strength: float = opt(0.5, ge=0, le=MAX_JITTER)
    blur_p: tuple[float, float] = opt((1.0, 0.1), ge=0, le=1)
    solarize_p: tuple[float, float] = opt((0.0, 0.2), ge=0, le=1)

    def views(self) -> tuple[ViewConfig, ...]:
        return tuple(ViewConfig(scale=(self.crop_scale_min, 1.0), strength=self.jitter_strength, blur_p=b, solarize_p=s)
                     for b, s in zip(self.blur_p, self.solarize_p, strict=True))


@dataclass(frozen=True)
class BYOLConfig(AsymmetricViews):
    hidden_dim: int = opt(512, ge=1, le=MAX_DIM)  # paper 4096, scaled to the CPU backbones
    out_dim: int = opt(128, ge=1, le=MAX_DIM)  # paper 256
    momentum: float = opt(0.996, ge=0, le=1)  # tau_base; cosine to 1
    # False: the online projection regresses the target's directly (the paper's Table 5a ablation: collapse).
    predictor: bool = True


class BYOL(Projected):
    Config = BYOLConfig
    # Paper Sec. 3.3 / App. C: LARS, lr 0.2 x bs/256, wd 1.5e-6, 10 warm-up epochs, cosine decay.
    paper_recipe = Recipe(optimizer="lars", lr=0.2, weight_decay=1.5e-6, warmup_epochs=10)
    search_space = (MOMENTUM_KNOB,)
    ablations = {"byol-predictor": Ablation(
        cells=(cell("predictor (paper)"), cell("no predictor", predictor=False)),
        claim="Grill et al. 2020 Table 5a (300 epochs): without the predictor BYOL collapses, 0.3% linear top-1 "
              "with the target network, 0.2% without one (tau 0), against 66.9% for the full method")}
    quick_budget = True
    # The EMA target and the predictor: state kept across steps.
    ci_datasets = ("digits",)

    def __init__(self, ctx: Context, cfg: BYOLConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()
        self.projector = mlp(self.encoder.feature_dim, cfg.hidden_dim, cfg.out_dim, layers=2)
        self.predictor = mlp(cfg.out_dim, cfg.hidden_dim, cfg.out_dim, layers=2) if cfg.predictor else nn.Identity()
        self.target = EMA(self.encoder, self.projector, momentum=cfg.momentum, final=1.0)
        self.views = cfg.views()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x1, x2 = batch.views
        p1, p2 = (self.predictor(self.embed(x)) for x in (x1, x2))
        with torch.no_grad():
            z1, z2 = self.target(x1), self.target(x2)
        return {"loss": byol_loss(p1, z2) + byol_loss(p2, z1)}

    def on_step_end(self, step: int, total: int) -> None:
        self.target.update(self.encoder, self.projector, step=step, total=total)
