"""TinyNCE: InfoNCE between two augmented views through a linear projection (SimCLR's loss, Chen et al. 2020,
without its MLP head), the smallest contrastive method worth benchmarking."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods import METHODS
from methods.base import Batch, Context, Method
from methods.spec import ViewConfig, opt


@dataclass(frozen=True)
class TinyNCEConfig:
    # Options are checked by their declarations (opt): `--method-arg temperature=0` is refused in one line.
    temperature: float = opt(0.2, gt=0, le=10)
    out_dim: int = opt(64, ge=1, le=4096)


@METHODS.register("tiny-nce")
class TinyNCE(Method):
    Config = TinyNCEConfig

    def __init__(self, ctx: Context, cfg: TinyNCEConfig) -> None:
        super().__init__(cfg)
        self.encoder = ctx.make_backbone()  # the backbone the run asked for (--backbone)
        self.projector = nn.Linear(self.encoder.feature_dim, cfg.out_dim)
        self.views = (ViewConfig(), ViewConfig())

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(images))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = (F.normalize(self.embed(x).float(), dim=1) for x in batch.views)
        logits = z1 @ z2.T / self.cfg.temperature
        target = torch.arange(len(z1), device=z1.device)
        # Extra keys besides "loss" are logged with it.
        return {"loss": (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2,
                "positive_cos": (z1 * z2).sum(1).mean().detach()}
