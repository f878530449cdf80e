"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two augmented views per image, a projection MLP, and the NT-Xent loss over the batch. The
projection head is dropped at evaluation: protocols see the backbone's features (paper Sec. 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.augment import ViewConfig
from bench.config import Recipe
from methods.base import METHODS, Batch, Context, Method
from methods.heads import mlp
from methods.losses import nt_xent_loss


@dataclass(frozen=True)
class SimCLRConfig:
    temperature: float = 0.5  # paper Table 5 / B.9: 0.5 for CIFAR-10
    head: str = "mlp"  # mlp | linear | none (paper Fig. 8: nonlinear > linear > none)
    hidden_dim: int = 512
    out_dim: int = 128
    crop_scale_min: float = 0.08
    jitter_strength: float = 0.5  # CIFAR-10 uses s=0.5 (App. B.9)
    blur_p: float = 0.0  # the paper drops blur for CIFAR-10


@METHODS.register("simclr")
class SimCLR(Method):
    Config = SimCLRConfig
    # Paper: LARS, lr 0.3 x bs/256, wd 1e-6, 10 warm-up epochs (App. B.6 for CIFAR uses the same rule).
    paper_recipe = Recipe(optimizer="lars", lr=0.3, weight_decay=1e-6, warmup_epochs=10)

    def __init__(self, ctx: Context, cfg: SimCLRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ctx.make_backbone()
        d = self.encoder.feature_dim
        if cfg.head == "mlp":
            self.projector = mlp(d, cfg.hidden_dim, cfg.out_dim, layers=2)
        elif cfg.head == "linear":
            self.projector = mlp(d, cfg.hidden_dim, cfg.out_dim, layers=1)
        else:
            self.projector = torch.nn.Identity()
        view = ViewConfig(scale=(cfg.crop_scale_min, 1.0), strength=cfg.jitter_strength, blur_p=cfg.blur_p)
        self.views = (view, view)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(images))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z0, z1 = (self.embed(v) for v in batch.views)
        return {"loss": nt_xent_loss(z0, z1, self.cfg.temperature)}
